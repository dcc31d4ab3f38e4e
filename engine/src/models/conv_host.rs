//! A convolution on burn-ndarray's autodiff backend as one host op: im2col + GEMM forward, and
//! a backward that rebuilds the patch matrix from the input instead of keeping it.
//!
//! Lowered as two ops (`im2col_host.rs`, then `host_matmul.rs`), the product keeps its operand,
//! the patch matrix, for the weight's gradient: `kh * kw` times the input (9x for a 3x3
//! convolution), for every convolution until the backward. The SD VAE encoder at 256 px then
//! held ~2.8 GB per view (MVDream's 8 views did not fit 23 GB). This op keeps the input (shared
//! with the graph) and the weight, and builds the patch matrix again only when the weight's
//! gradient is asked for: a frozen encoder's backward never builds it.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_ndarray::NdArrayTensor;
use ndarray::{ArcArray, ArrayD, ArrayViewD, Axis, IxDyn};

use super::host_dispatch::{Cpu, CpuAutodiff, same_type};
use super::host_matmul::{BiasAxis, bias_gradient, matmul, matmul_bias};
use super::im2col_host::{Geometry, col2im, im2col};

type Operand = ArcArray<f32, IxDyn>;

fn array(t: &NdArrayTensor) -> Option<Operand> {
    match t {
        NdArrayTensor::F32(storage) => Some(storage.clone().into_shared()),
        _ => None,
    }
}

fn tensor(a: ArrayD<f32>) -> NdArrayTensor {
    NdArrayTensor::from(a.into_shared())
}

/// The patch matrix of `x`, `[batch, in * kh * kw, h_out * w_out]`.
fn cols(x: &Operand, g: &Geometry) -> ArrayD<f32> {
    let x = x.as_standard_layout();
    let values = im2col(x.as_slice().expect("row-major"), g);
    ArrayD::from_shape_vec(IxDyn(&g.cols()), values).expect("im2col's shape")
}

/// The weight as the `[out, in * kh * kw]` matrix, row-major.
fn weight_matrix(w: &Operand) -> ArrayD<f32> {
    let out = w.shape()[0];
    let k = w.len() / out.max(1);
    w.as_standard_layout()
        .to_owned()
        .into_shape_with_order(IxDyn(&[out, k]))
        .expect("a row-major weight")
}

fn transposed(v: ArrayViewD<'_, f32>) -> ArrayViewD<'_, f32> {
    let mut v = v;
    let d = v.ndim();
    v.swap_axes(d - 2, d - 1);
    v
}

fn forward(x: &Operand, w: &Operand, bias: Option<&Operand>, g: &Geometry) -> NdArrayTensor {
    let cols = cols(x, g);
    let bias = bias.map(|b| b.as_standard_layout().to_owned());
    let bias = bias
        .as_ref()
        .map(|b| (b.as_slice().expect("row-major copy"), BiasAxis::Rows));
    let out = matmul_bias(&weight_matrix(w).view(), &cols.view(), bias).expect("shapes checked");
    let [batch, _, _, _] = g.input;
    let [h_out, w_out] = g.output();
    tensor(
        out.into_shape_with_order(IxDyn(&[batch, w.shape()[0], h_out, w_out]))
            .expect("the product's shape"),
    )
}

#[derive(Debug)]
struct ConvBackward;

impl<const N: usize> Backward<Cpu, N> for ConvBackward {
    type State = (Operand, Operand, Geometry);

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (x, w, g) = &ops.state;
        let grad = grads.consume::<Cpu>(&ops.node);
        let grad = array(&grad).expect("an f32 gradient");
        let [batch, _, _, _] = g.input;
        let [h_out, w_out] = g.output();
        let c_out = w.shape()[0];
        let grad = grad
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&[batch, c_out, h_out * w_out]))
            .expect("the output's shape");
        let parents = &ops.parents;
        if let Some(parent) = &parents[0] {
            // d cols = W^T @ grad, then every patch entry back to its pixel.
            let w2 = weight_matrix(w);
            let d_cols = matmul(&transposed(w2.view()), &grad.view()).expect("shapes");
            let d_cols = d_cols.as_standard_layout();
            let dx = col2im(d_cols.as_slice().expect("row-major"), g);
            let dx = ArrayD::from_shape_vec(IxDyn(&g.input), dx).expect("the input's shape");
            grads.register::<Cpu>(parent.id, tensor(dx));
        }
        if let Some(parent) = &parents[1] {
            // d W = sum over the batch of grad @ cols^T, with the patch matrix built again.
            let cols = cols(x, g);
            let per_sample = matmul(&grad.view(), &transposed(cols.view())).expect("shapes");
            let dw = per_sample
                .sum_axis(Axis(0))
                .into_shape_with_order(IxDyn(w.shape()))
                .expect("the weight's shape");
            grads.register::<Cpu>(parent.id, tensor(dw));
        }
        if let Some(Some(parent)) = parents.get(2) {
            grads.register::<Cpu>(
                parent.id,
                tensor(bias_gradient(&grad.view(), BiasAxis::Rows)),
            );
        }
    }
}

/// Whether the op takes these operands: f32, a 4-D weight matching the geometry's channels.
fn takes(x: &Operand, w: &Operand, bias: Option<&Operand>, g: &Geometry) -> bool {
    let [c_out, c_in, kh, kw] = match w.shape() {
        &[a, b, c, d] => [a, b, c, d],
        _ => return false,
    };
    x.shape() == g.input
        && c_in == g.input[1]
        && [kh, kw] == g.kernel
        && bias.is_none_or(|b| b.shape() == [c_out])
}

type Operands<B> = (Tensor<B, 4>, Tensor<B, 4>, Option<Tensor<B, 1>>);

/// The convolution of `x` (`[batch, in, h, w]`) by `weight` (`[out, in, kh, kw]`) plus
/// `bias` as this op when `B` is burn-ndarray's f32 autodiff backend; the operands back
/// otherwise (the inner backend keeps nothing for a backward, and lowers as before).
pub fn try_conv2d<B: Backend>(
    operands: Operands<B>,
    g: &Geometry,
) -> Result<Tensor<B, 4>, Operands<B>> {
    let (x, w, bias) = same_type::<_, Operands<CpuAutodiff>>(operands)?;
    let (x, w) = (x.into_primitive().tensor(), w.into_primitive().tensor());
    let bias = bias.map(|b| b.into_primitive().tensor());
    let arrays = (
        array(&x.primitive),
        array(&w.primitive),
        bias.as_ref().map(|b| array(&b.primitive)),
    );
    let (Some(px), Some(pw), pb) = arrays else {
        return Err(hand_back(x, w, bias));
    };
    let pb = match pb {
        Some(Some(b)) => Some(b),
        Some(None) => return Err(hand_back(x, w, bias)),
        None => None,
    };
    if !takes(&px, &pw, pb.as_ref(), g) {
        return Err(hand_back(x, w, bias));
    }
    let out = forward(&px, &pw, pb.as_ref(), g);
    let out = match bias {
        None => match ConvBackward
            .prepare::<NoCheckpointing>([x.node, w.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((px, pw, *g), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
        Some(b) => match ConvBackward
            .prepare::<NoCheckpointing>([x.node, w.node, b.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((px, pw, *g), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
    };
    let out = Tensor::<CpuAutodiff, 4>::from_primitive(TensorPrimitive::Float(out));
    Ok(same_type(out).unwrap_or_else(|_| unreachable!()))
}

fn hand_back<B: Backend>(
    x: FloatTensor<CpuAutodiff>,
    w: FloatTensor<CpuAutodiff>,
    bias: Option<FloatTensor<CpuAutodiff>>,
) -> Operands<B> {
    let back: Operands<CpuAutodiff> = (
        Tensor::from_primitive(TensorPrimitive::Float(x)),
        Tensor::from_primitive(TensorPrimitive::Float(w)),
        bias.map(|b| Tensor::from_primitive(TensorPrimitive::Float(b))),
    );
    same_type(back).unwrap_or_else(|_| unreachable!())
}
