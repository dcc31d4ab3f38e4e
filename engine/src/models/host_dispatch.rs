//! Reaching a host kernel from code generic over `Backend`.
//!
//! burn has no specialisation, so a model generic over `B: Backend` cannot call a kernel
//! written for one backend directly. The host ops (`im2col_host.rs`, `group_norm_host.rs`)
//! move their tensors to the concrete CPU types by a run-time type check instead: the exact
//! types the engine runs on the CPU (`NdArray<f32>` and `Autodiff<NdArray<f32>>`) take the
//! host kernel, any other backend keeps its tensor-op path.

use std::any::Any;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

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

/// The values of a CPU tensor, row-major.
pub fn to_host<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    // A buffer another tensor still holds (a residual, the autodiff graph) would be copied by
    // `into_data` one element at a time through ndarray's iterator; copy the slice instead.
    let primitive = t.into_primitive().tensor();
    if let burn_ndarray::NdArrayTensor::F32(storage) = &primitive
        && !storage.is_unique()
        && let Some(values) = storage.view().as_slice()
    {
        return values.to_vec();
    }
    Tensor::<Cpu, D>::from_primitive(TensorPrimitive::Float(primitive))
        .into_data()
        .into_vec::<f32>()
        .expect("an f32 tensor of the f32 CPU backend")
}

/// A CPU tensor of `shape` from row-major `values`.
pub fn from_host<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &burn::tensor::Device<Cpu>,
) -> Tensor<Cpu, D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}
