//! Reaching a host kernel from code generic over `Backend`.
//!
//! burn has no specialisation, so a model generic over `B: Backend` cannot call a kernel
//! written for one backend directly. The host ops (`im2col_host.rs`, `group_norm_host.rs`)
//! move their tensors to the concrete CPU types by a run-time type check instead: the exact
//! types the engine runs on the CPU (`NdArray<f32>` and `Autodiff<NdArray<f32>>`) take the
//! host kernel, any other backend keeps its tensor-op path.

use std::any::Any;
use std::ops::Deref;

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_ndarray::NdArrayTensor;
use ndarray::{ArcArray, IxDyn};

/// The f32 CPU backend.
pub type Cpu = NdArray<f32>;
/// The f32 CPU backend with autodiff.
pub type CpuAutodiff = Autodiff<Cpu>;

/// Moves `value` to type `U` when `T` is `U`, else hands it back.
pub fn same_type<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let boxed: Box<dyn Any> = Box::new(value);
    match boxed.downcast::<U>() {
        Ok(u) => Ok(*u),
        Err(boxed) => Err(*boxed
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("a box holds the type it was made from"))),
    }
}

/// The values of a CPU tensor, row-major, as a slice (`Deref`): the tensor's own buffer when
/// it is row-major already (a residual or a value the autodiff graph keeps is shared, not
/// copied), else a row-major copy.
#[derive(Debug, Clone)]
pub struct HostValues(ArcArray<f32, IxDyn>);

impl Deref for HostValues {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        self.0
            .as_slice()
            .expect("row-major by construction (`to_host`)")
    }
}

/// The values of a CPU tensor, row-major.
pub fn to_host<const D: usize>(t: Tensor<Cpu, D>) -> HostValues {
    let array = match t.into_primitive().tensor() {
        NdArrayTensor::F32(storage) => storage.into_shared(),
        other => {
            let data = Tensor::<Cpu, D>::from_primitive(TensorPrimitive::Float(other))
                .into_data()
                .convert::<f32>();
            let shape = data.shape.clone();
            let values = data.into_vec::<f32>().expect("converted to f32");
            ArcArray::from_shape_vec(IxDyn(&shape), values).expect("the data's own shape")
        }
    };
    if array.is_standard_layout() {
        HostValues(array)
    } else {
        HostValues(array.as_standard_layout().into_owned().into_shared())
    }
}

/// A CPU tensor of `shape` from row-major `values`.
pub fn from_host<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &burn::tensor::Device<Cpu>,
) -> Tensor<Cpu, D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// `x` through a one-input host op: on the autodiff CPU backend `run` computes the output and
/// the state that `op` keeps for its backward; on the plain CPU backend `run` alone; any other
/// backend gets `x` back.
pub fn try_unary<B, Op, const D: usize>(
    x: Tensor<B, D>,
    op: Op,
    run: impl Fn(Tensor<Cpu, D>) -> (Tensor<Cpu, D>, Op::State),
) -> Result<Tensor<B, D>, Tensor<B, D>>
where
    B: Backend,
    Op: Backward<Cpu, 1>,
{
    let x = match same_type::<_, Tensor<CpuAutodiff, D>>(x) {
        Ok(x) => {
            let x: FloatTensor<CpuAutodiff> = x.into_primitive().tensor();
            let inner = || Tensor::from_primitive(TensorPrimitive::Float(x.primitive.clone()));
            let out = match op
                .prepare::<NoCheckpointing>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (out, state) = run(inner());
                    prep.finish(state, out.into_primitive().tensor())
                }
                OpsKind::UnTracked(prep) => prep.finish(run(inner()).0.into_primitive().tensor()),
            };
            let out = Tensor::<CpuAutodiff, D>::from_primitive(TensorPrimitive::Float(out));
            return Ok(same_type(out).unwrap_or_else(|_| unreachable!()));
        }
        Err(x) => x,
    };
    match same_type::<_, Tensor<Cpu, D>>(x) {
        Ok(x) => Ok(same_type(run(x).0).unwrap_or_else(|_| unreachable!())),
        Err(x) => Err(x),
    }
}
