//! The hash-grid encoding as a custom burn operation with a hand-written backward pass.
//!
//! Written as plain tensor ops, one encoding of 50k points costs seconds on the CPU backend
//! (tens of broadcast integer ops and a 3M-row gather). As one op it is a tight loop: forward
//! gathers and blends 8 corners per level, backward scatter-adds the output gradient into the
//! same rows. Backends pick their kernel: the CPU ones run the loops on the host; the CubeCL
//! backends (wgpu, CUDA) run both passes as device kernels (`hash_grid_cube`), the backward
//! with atomic adds, so nothing goes through the host. The tensor formulation
//! ([`tensor_encode`], [`tensor_backward`]) stays as the reference the kernels are tested
//! against. Only the table gets a gradient: sample positions come from rays, not parameters.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{ElementConversion, IndexingUpdateOp, Int, Tensor, TensorData, TensorPrimitive};

use super::hash_grid::LevelLayout;

pub(crate) const PRIMES: [u32; 3] = [1, 2_654_435_761, 805_459_861];

/// Everything the kernels need to know about the table.
#[derive(Debug, Clone, PartialEq)]
pub struct GridLayout {
    /// Per-level resolution, offset, size, dense or hashed.
    pub levels: Vec<LevelLayout>,
    /// Features per level.
    pub features: usize,
    /// Table rows in all.
    pub rows: usize,
}

/// Backends that can run the hash-grid encoding.
pub trait HashGridBackend: Backend {
    /// `table [rows, F]`, `x [n, 3]` in [0, 1] -> `[n, levels * F]`.
    fn hash_grid_encode(
        table: FloatTensor<Self>,
        x: FloatTensor<Self>,
        layout: &GridLayout,
    ) -> FloatTensor<Self>;

    /// Gradient of the table: `grad [n, levels * F]` -> `[rows, F]`.
    fn hash_grid_encode_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        layout: &GridLayout,
    ) -> FloatTensor<Self>;
}

fn wrap<B: Backend>(t: FloatTensor<B>) -> Tensor<B, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

#[cfg_attr(not(any(feature = "cpu", feature = "flex")), allow(dead_code))] // only CPU backends
fn host<B: Backend>(t: FloatTensor<B>) -> Vec<f32> {
    wrap::<B>(t)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("float tensor data")
}

/// Row of the table holding vertex `v` of `level`, as Instant-NGP computes it.
#[inline]
pub fn vertex_row(level: &LevelLayout, v: [u32; 3]) -> usize {
    let local = if level.dense {
        let r = level.resolution as usize + 1;
        v[0] as usize + v[1] as usize * r + v[2] as usize * r * r
    } else {
        let h = v[0].wrapping_mul(PRIMES[0])
            ^ v[1].wrapping_mul(PRIMES[1])
            ^ v[2].wrapping_mul(PRIMES[2]);
        h as usize & (level.size - 1)
    };
    level.offset + local
}

/// Calls `f(corner_row, weight)` for the 8 corners around point `p` at `level`.
#[inline]
fn for_each_corner(level: &LevelLayout, p: &[f32], mut f: impl FnMut(usize, f32)) {
    let res = level.resolution as f32;
    let mut lower = [0u32; 3];
    let mut frac = [0f32; 3];
    for k in 0..3 {
        let pos = p[k].clamp(0.0, 1.0 - 1e-6) * res;
        let fl = pos.floor();
        lower[k] = fl as u32;
        frac[k] = pos - fl;
    }
    for c in 0..8u32 {
        let mut w = 1.0;
        let mut v = lower;
        for k in 0..3 {
            if c >> k & 1 == 1 {
                w *= frac[k];
                v[k] += 1;
            } else {
                w *= 1.0 - frac[k];
            }
        }
        f(vertex_row(level, v), w);
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Host forward: points are split across threads.
pub fn encode_host(table: &[f32], x: &[f32], layout: &GridLayout) -> Vec<f32> {
    let n = x.len() / 3;
    let (levels, f) = (layout.levels.len(), layout.features);
    let width = levels * f;
    let mut out = vec![0.0f32; n * width];
    let per_thread = n.div_ceil(threads()).max(1);
    std::thread::scope(|scope| {
        for (chunk, out) in out.chunks_mut(per_thread * width).enumerate() {
            scope.spawn(move || {
                for (i, row) in out.chunks_mut(width).enumerate() {
                    let p = &x[3 * (chunk * per_thread + i)..][..3];
                    for (l, level) in layout.levels.iter().enumerate() {
                        let acc = &mut row[l * f..(l + 1) * f];
                        for_each_corner(level, p, |r, w| {
                            for (a, t) in acc.iter_mut().zip(&table[r * f..(r + 1) * f]) {
                                *a += w * t;
                            }
                        });
                    }
                }
            });
        }
    });
    out
}

/// Host backward: levels own disjoint row ranges, so threads split the levels.
pub fn encode_backward_host(grad: &[f32], x: &[f32], layout: &GridLayout) -> Vec<f32> {
    let (levels, f) = (layout.levels.len(), layout.features);
    let width = levels * f;
    let mut out = vec![0.0f32; layout.rows * f];
    // Split the table into per-level slices.
    let mut slices = Vec::with_capacity(levels);
    let mut rest = out.as_mut_slice();
    for level in &layout.levels {
        let (head, tail) = rest.split_at_mut(level.size * f);
        slices.push(head);
        rest = tail;
    }
    let groups = threads().min(levels).max(1);
    let mut buckets: Vec<Vec<(usize, &mut [f32])>> = (0..groups).map(|_| Vec::new()).collect();
    for (l, slice) in slices.into_iter().enumerate() {
        buckets[l % groups].push((l, slice));
    }
    std::thread::scope(|scope| {
        for bucket in buckets {
            scope.spawn(move || {
                for (l, slice) in bucket {
                    let level = &layout.levels[l];
                    for (p, g) in x.chunks(3).zip(grad.chunks(width)) {
                        let g = &g[l * f..(l + 1) * f];
                        for_each_corner(level, p, |r, w| {
                            let dst = &mut slice[(r - level.offset) * f..][..f];
                            for (d, gv) in dst.iter_mut().zip(g) {
                                *d += w * gv;
                            }
                        });
                    }
                }
            });
        }
    });
    out
}

#[cfg_attr(not(any(feature = "cpu", feature = "flex")), allow(dead_code))] // only CPU backends
fn host_encode<B: Backend>(
    table: FloatTensor<B>,
    x: FloatTensor<B>,
    layout: &GridLayout,
) -> FloatTensor<B> {
    let device = wrap::<B>(x.clone()).device();
    let n = wrap::<B>(x.clone()).dims()[0];
    let out = encode_host(&host::<B>(table), &host::<B>(x), layout);
    let width = layout.levels.len() * layout.features;
    Tensor::<B, 2>::from_data(TensorData::new(out, [n, width]), &device)
        .into_primitive()
        .tensor()
}

#[cfg_attr(not(any(feature = "cpu", feature = "flex")), allow(dead_code))] // only CPU backends
fn host_backward<B: Backend>(
    grad: FloatTensor<B>,
    x: FloatTensor<B>,
    layout: &GridLayout,
) -> FloatTensor<B> {
    let device = wrap::<B>(x.clone()).device();
    let out = encode_backward_host(&host::<B>(grad), &host::<B>(x), layout);
    Tensor::<B, 2>::from_data(
        TensorData::new(out, [layout.rows, layout.features]),
        &device,
    )
    .into_primitive()
    .tensor()
}

/// Table rows and trilinear weights of every corner, as device tensors: indices
/// `[n * levels * 8]`, weights `[n, levels, 8]`. The reference for tests.
pub fn corners_tensor<B: Backend>(
    x: Tensor<B, 2>,
    layout: &GridLayout,
) -> (Tensor<B, 1, Int>, Tensor<B, 3>) {
    let device = x.device();
    let [n, _] = x.dims();
    let levels = layout.levels.len();
    let per_level = |f: &dyn Fn(&LevelLayout) -> f32| {
        let values: Vec<f32> = layout.levels.iter().map(f).collect();
        Tensor::<B, 1>::from_data(TensorData::new(values, [levels]), &device)
            .reshape([1, levels, 1])
    };
    let per_level_int = |f: &dyn Fn(&LevelLayout) -> i64| {
        let values: Vec<i64> = layout.levels.iter().map(f).collect();
        Tensor::<B, 1, Int>::from_data(TensorData::new(values, [levels]), &device)
            .reshape([1, levels, 1])
    };
    let pos = x.clamp(0.0, 1.0 - 1e-6).unsqueeze_dim::<3>(1) * per_level(&|l| l.resolution as f32);
    let lower = pos.clone().floor();
    let frac = (pos - lower.clone()).unsqueeze_dim::<4>(2); // [n, levels, 1, 3]
    let lower = lower.int();

    // [1, 1, 8, 3]: bit k of the corner number = offset along axis k.
    let offsets: Vec<i64> = (0..8)
        .flat_map(|c| [(c & 1) as i64, (c >> 1 & 1) as i64, (c >> 2 & 1) as i64])
        .collect();
    let offsets = Tensor::<B, 1, Int>::from_data(TensorData::new(offsets, [24]), &device)
        .reshape([1, 1, 8, 3]);
    let offsets_f = offsets.clone().float();
    let axis_w = offsets_f.clone() * frac.clone() + (offsets_f.neg() + 1.0) * (frac.neg() + 1.0);
    let weights =
        (axis_w.clone().narrow(3, 0, 1) * axis_w.clone().narrow(3, 1, 1) * axis_w.narrow(3, 2, 1))
            .reshape([n, levels, 8]);

    let vertex = lower.unsqueeze_dim::<4>(2) + offsets; // [n, levels, 8, 3]
    let axis = |k: usize| vertex.clone().narrow(3, k, 1).reshape([n, levels, 8]);
    let (vx, vy, vz) = (axis(0), axis(1), axis(2));
    let stride = |p: u32| per_level_int(&|l| (l.resolution as i64 + 1).pow(p));
    let dense = vx.clone() + vy.clone() * stride(1) + vz.clone() * stride(2);
    // Primes in 32-bit two's complement: 32-bit backends wrap like Instant-NGP's uint32, 64-bit
    // ones agree on the low bits, which are all the table mask keeps.
    let prime = |k: usize| PRIMES[k] as i32 as i64;
    let hashed = vx
        .mul_scalar(prime(0))
        .bitwise_xor(vy.mul_scalar(prime(1)))
        .bitwise_xor(vz.mul_scalar(prime(2)));
    let mask = layout
        .levels
        .iter()
        .find(|l| !l.dense)
        .map_or(i32::MAX as i64, |l| l.size as i64 - 1);
    let hashed = hashed.bitwise_and_scalar(mask.elem());
    let is_dense = per_level_int(&|l| l.dense as i64);
    let index = dense * is_dense.clone()
        + hashed * (is_dense.neg() + 1)
        + per_level_int(&|l| l.offset as i64);
    (index.reshape([n * levels * 8]), weights)
}

/// The forward pass as tensor ops (one gather): the reference the device kernel is tested
/// against. It allocates `[n, levels, 8, 3]` integer tensors, too big for large batches.
pub fn tensor_encode<B: Backend>(
    table: FloatTensor<B>,
    x: FloatTensor<B>,
    layout: &GridLayout,
) -> FloatTensor<B> {
    let x = wrap::<B>(x);
    let [n, _] = x.dims();
    let (levels, f) = (layout.levels.len(), layout.features);
    let (index, weights) = corners_tensor(x, layout);
    let gathered = wrap::<B>(table).select(0, index).reshape([n, levels, 8, f]);
    (gathered * weights.unsqueeze_dim::<4>(3))
        .sum_dim(2)
        .reshape([n, levels * f])
        .into_primitive()
        .tensor()
}

/// The backward pass as tensor ops (a scatter-add): the reference the host loops are tested
/// against. Not run on GPUs: burn-cubecl 0.21's `select_assign` runs one thread per feature
/// column, serially over the indices, which is correct but far too slow there.
pub fn tensor_backward<B: Backend>(
    grad: FloatTensor<B>,
    x: FloatTensor<B>,
    layout: &GridLayout,
) -> FloatTensor<B> {
    let x = wrap::<B>(x);
    let device = x.device();
    let [n, _] = x.dims();
    let (levels, f) = (layout.levels.len(), layout.features);
    let (index, weights) = corners_tensor(x, layout);
    // [n, levels, 1, f] * [n, levels, 8, 1] -> one row per corner
    let rows = (wrap::<B>(grad).reshape([n, levels, 1, f]) * weights.unsqueeze_dim::<4>(3))
        .reshape([n * levels * 8, f]);
    // burn-cubecl 0.21's select_assign walks at most 65535 indices per launch (seen on wgpu:
    // 300k duplicate indices summed to 65535), so scatter in chunks below that.
    const CHUNK: usize = 32768;
    let total = n * levels * 8;
    let mut table = Tensor::<B, 2>::zeros([layout.rows, f], &device);
    let mut start = 0;
    while start < total {
        let len = CHUNK.min(total - start);
        table = table.select_assign(
            0,
            index.clone().narrow(0, start, len),
            rows.clone().narrow(0, start, len),
            IndexingUpdateOp::Add,
        );
        start += len;
    }
    table.into_primitive().tensor()
}

/// CPU backends: both passes are host loops over the tensor's data.
#[cfg(any(feature = "cpu", feature = "flex"))]
macro_rules! host_path {
    ($backend:ty) => {
        impl HashGridBackend for $backend {
            fn hash_grid_encode(
                table: FloatTensor<Self>,
                x: FloatTensor<Self>,
                layout: &GridLayout,
            ) -> FloatTensor<Self> {
                host_encode::<Self>(table, x, layout)
            }
            fn hash_grid_encode_backward(
                grad: FloatTensor<Self>,
                x: FloatTensor<Self>,
                layout: &GridLayout,
            ) -> FloatTensor<Self> {
                host_backward::<Self>(grad, x, layout)
            }
        }
    };
}

#[cfg(feature = "cpu")]
host_path!(burn::backend::NdArray<f32>);
#[cfg(feature = "flex")]
host_path!(burn::backend::Flex);

/// CubeCL backends: both passes are device kernels.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
macro_rules! device_tensor_path {
    ($backend:ty) => {
        impl HashGridBackend for $backend {
            fn hash_grid_encode(
                table: FloatTensor<Self>,
                x: FloatTensor<Self>,
                layout: &GridLayout,
            ) -> FloatTensor<Self> {
                super::hash_grid_cube::encode(table, x, layout)
            }
            fn hash_grid_encode_backward(
                grad: FloatTensor<Self>,
                x: FloatTensor<Self>,
                layout: &GridLayout,
            ) -> FloatTensor<Self> {
                super::hash_grid_cube::encode_backward(grad, x, layout)
            }
        }
    };
}

#[cfg(feature = "wgpu")]
device_tensor_path!(burn::backend::Wgpu<f32, i32>);
#[cfg(feature = "cuda")]
device_tensor_path!(burn::backend::Cuda<f32, i32>);

#[derive(Debug)]
struct EncodeBackward;

impl<B: HashGridBackend> Backward<B, 1> for EncodeBackward {
    type State = (FloatTensor<B>, GridLayout);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (x, layout) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(parent) = &ops.parents[0] {
            grads.register::<B>(parent.id, B::hash_grid_encode_backward(grad, x, &layout));
        }
    }
}

impl<B: HashGridBackend, C: CheckpointStrategy> HashGridBackend for Autodiff<B, C> {
    fn hash_grid_encode(
        table: FloatTensor<Self>,
        x: FloatTensor<Self>,
        layout: &GridLayout,
    ) -> FloatTensor<Self> {
        let x = x.primitive;
        match EncodeBackward
            .prepare::<C>([table.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::hash_grid_encode(table.primitive, x.clone(), layout);
                prep.finish((x, layout.clone()), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::hash_grid_encode(table.primitive, x, layout))
            }
        }
    }

    fn hash_grid_encode_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        layout: &GridLayout,
    ) -> FloatTensor<Self> {
        // Second derivatives are not needed: the result is a constant of the graph.
        let out = B::hash_grid_encode_backward(grad.primitive, x.primitive, layout);
        <Self as AutodiffBackend>::from_inner(out)
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::scene::nerf::HashGridConfig;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    type B = NdArray<f32>;

    /// The device (tensor) formulation and the host loops agree, forward and backward.
    #[test]
    fn tensor_path_matches_host_path() {
        let device = Default::default();
        let config = HashGridConfig::new()
            .with_n_levels(5)
            .with_log2_hashmap_size(9)
            .with_base_resolution(4)
            .with_max_resolution(64)
            .with_init_scale(0.5);
        let grid = config.init::<B>(&device);
        let layout = GridLayout {
            levels: config.layout(),
            features: 2,
            rows: grid.embeddings.dims()[0],
        };
        let x = Tensor::<B, 2>::random([200, 3], Distribution::Uniform(0.0, 1.0), &device);
        let grad = Tensor::<B, 2>::random([200, 10], Distribution::Uniform(-1.0, 1.0), &device);
        let table = grid.embeddings.val().into_primitive().tensor();
        let prim = |t: Tensor<B, 2>| t.into_primitive().tensor();
        let diff = |a: FloatTensor<B>, b: FloatTensor<B>| {
            (wrap::<B>(a) - wrap::<B>(b)).abs().max().into_scalar()
        };
        let forward = diff(
            host_encode::<B>(table.clone(), prim(x.clone()), &layout),
            tensor_encode::<B>(table, prim(x.clone()), &layout),
        );
        assert!(forward < 1e-6, "forward {forward}");
        let backward = diff(
            host_backward::<B>(prim(grad.clone()), prim(x.clone()), &layout),
            tensor_backward::<B>(prim(grad), prim(x), &layout),
        );
        assert!(backward < 1e-5, "backward {backward}");
    }
}
