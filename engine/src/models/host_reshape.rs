//! Reshapes without copies on burn-ndarray.
//!
//! burn-ndarray 0.21 copies the whole buffer on every `reshape` (its `to_shape` gives a view
//! that `into_shared` then clones), and autodiff's backward of a reshape copies the gradient
//! again. A row-major array is reshaped here by changing its dims alone, forward and backward.
//! Reached through [`try_reshape`] (`host_dispatch.rs`); a strided input (a transposed view)
//! goes back to burn's reshape, which must lay it out anyway.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_ndarray::NdArrayTensor;
use ndarray::IxDyn;

use super::host_dispatch::{Cpu, CpuAutodiff, same_type};

/// Whether `t` is an f32 array laid out row-major, so its dims can change in place.
fn row_major(t: &NdArrayTensor) -> bool {
    match t {
        NdArrayTensor::F32(storage) => storage.view().is_standard_layout(),
        _ => false,
    }
}

/// `t` with dims `shape` (same element count), sharing its buffer. `t` must be row-major f32.
fn reshaped(t: NdArrayTensor, shape: &[usize]) -> NdArrayTensor {
    let NdArrayTensor::F32(storage) = t else {
        unreachable!("checked by `row_major`")
    };
    let array = storage
        .into_shared()
        .into_shape_with_order(IxDyn(shape))
        .expect("a row-major array takes any shape of its element count");
    NdArrayTensor::from(array)
}

/// Row-major `t` as is, else laid out row-major (a gradient may arrive strided).
fn standard(t: NdArrayTensor) -> NdArrayTensor {
    if row_major(&t) {
        return t;
    }
    let NdArrayTensor::F32(storage) = t else {
        unreachable!("gradients of f32 tensors are f32")
    };
    NdArrayTensor::from(
        storage
            .view()
            .as_standard_layout()
            .into_owned()
            .into_shared(),
    )
}

#[derive(Debug)]
struct ReshapeBackward;

impl Backward<Cpu, 1> for ReshapeBackward {
    /// The input's dims.
    type State = Vec<usize>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = standard(grads.consume::<Cpu>(&ops.node));
        if let [Some(parent)] = &ops.parents {
            grads.register::<Cpu>(parent.id, reshaped(grad, &ops.state));
        }
    }
}

fn reshape_autodiff(x: FloatTensor<CpuAutodiff>, shape: &[usize]) -> FloatTensor<CpuAutodiff> {
    let dims = match &x.primitive {
        NdArrayTensor::F32(storage) => storage.shape().to_vec(),
        _ => unreachable!("checked by `row_major`"),
    };
    match ReshapeBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(dims, reshaped(x.primitive, shape)),
        OpsKind::UnTracked(prep) => prep.finish(reshaped(x.primitive, shape)),
    }
}

/// `x` reshaped to `shape` without a copy when `B` is one of the CPU backends and `x` is a
/// row-major f32 array; `x` back otherwise. The element count must match (as burn requires).
pub fn try_reshape<B: Backend, const D1: usize, const D2: usize>(
    x: Tensor<B, D1>,
    shape: [usize; D2],
) -> Result<Tensor<B, D2>, Tensor<B, D1>> {
    if x.shape().num_elements() != shape.iter().product::<usize>() {
        return Err(x);
    }
    let x = match same_type::<_, Tensor<CpuAutodiff, D1>>(x) {
        Ok(x) => {
            let x: FloatTensor<CpuAutodiff> = x.into_primitive().tensor();
            if !row_major(&x.primitive) {
                let back = Tensor::<CpuAutodiff, D1>::from_primitive(TensorPrimitive::Float(x));
                return Err(same_type(back).unwrap_or_else(|_| unreachable!()));
            }
            let out = Tensor::<CpuAutodiff, D2>::from_primitive(TensorPrimitive::Float(
                reshape_autodiff(x, &shape),
            ));
            return Ok(same_type(out).unwrap_or_else(|_| unreachable!()));
        }
        Err(x) => x,
    };
    match same_type::<_, Tensor<Cpu, D1>>(x) {
        Ok(x) => {
            let x = x.into_primitive().tensor();
            if !row_major(&x) {
                let back = Tensor::<Cpu, D1>::from_primitive(TensorPrimitive::Float(x));
                return Err(same_type(back).unwrap_or_else(|_| unreachable!()));
            }
            let out =
                Tensor::<Cpu, D2>::from_primitive(TensorPrimitive::Float(reshaped(x, &shape)));
            Ok(same_type(out).unwrap_or_else(|_| unreachable!()))
        }
        Err(x) => Err(x),
    }
}
