//! Shared pieces of the CubeCL kernels that scatter-add gradients (the splat rasteriser's
//! backward, the hash grid's backward): float atomic adds, native where the device has them,
//! else a compare-and-swap loop on the bits; and launch grids past one dimension's limit.

use cubecl::ir::{ElemType, FloatKind, StorageType, Type};
use cubecl::prelude::*;

/// `grad[i] += v` on a buffer of f32 bits, by compare-and-swap: portable to devices
/// without float atomics (WGSL has none).
#[cube]
fn add_f32_bits(grad: &Tensor<Atomic<u32>>, i: usize, v: f32) {
    let mut old = grad[i].load();
    let mut pending = true;
    while pending {
        let new = u32::reinterpret(f32::reinterpret(old) + v);
        let seen = grad[i].compare_exchange_weak(old, new);
        if seen == old {
            pending = false;
        } else {
            old = seen;
        }
    }
}

/// A gradient buffer: native float atomics or f32 bits with CAS.
#[cube]
pub(crate) trait GradSink: 'static + Send + Sync {
    type Elem: CubePrimitive;
    fn add(grad: &Tensor<Atomic<Self::Elem>>, i: usize, v: f32);
}

/// Native `Atomic<f32>` adds.
pub(crate) struct NativeAdd;
/// Compare-and-swap on `Atomic<u32>` holding f32 bits.
pub(crate) struct CasAdd;

#[cube]
impl GradSink for NativeAdd {
    type Elem = f32;
    fn add(grad: &Tensor<Atomic<f32>>, i: usize, v: f32) {
        grad[i].fetch_add(v);
    }
}

#[cube]
impl GradSink for CasAdd {
    type Elem = u32;
    fn add(grad: &Tensor<Atomic<u32>>, i: usize, v: f32) {
        add_f32_bits(grad, i, v);
    }
}

/// Whether the device behind `client` adds floats atomically (else the kernels use
/// [`CasAdd`]). `REWARDSDS_CAS_ATOMICS` forces the fallback, to test it where float atomics
/// exist.
pub(crate) fn native_float_atomics<R: Runtime>(client: &ComputeClient<R>) -> bool {
    let f32_type = Type::new(StorageType::Atomic(ElemType::Float(FloatKind::F32)));
    client
        .properties()
        .atomic_type_usage(f32_type)
        .contains(cubecl::features::AtomicUsage::Add)
        && std::env::var_os("REWARDSDS_CAS_ATOMICS").is_none()
}

/// `cubes` cubes as a 1D or 2D grid (each dimension at most 65535); kernels flatten the
/// position.
pub(crate) fn grid(cubes: u32) -> CubeCount {
    if cubes <= 65535 {
        CubeCount::new_1d(cubes)
    } else {
        CubeCount::new_2d(65535, cubes.div_ceil(65535))
    }
}
