//! Softmax over the last dim on the host for burn-ndarray, as one op with a hand-written
//! backward (the attention probabilities on the CPU backends).
//!
//! burn's softmax is four tensor ops (max, subtract + exp, sum, divide), each a pass over the
//! scores on ndarray, with autodiff's backward of each. Here each way is one pass per row,
//! threaded over rows: `y = exp(x - max) / sum`, and `dx = y * (g - sum(g * y))`.
//! Reached through [`try_softmax`] (`host_dispatch.rs`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::host_dispatch::{Cpu, HostValues, from_host, to_host, try_unary};

/// Elements per rayon task (whole rows): amortises the task on short rows.
const ELEMENTS_PER_TASK: usize = 8192;

fn rows_per_task(width: usize) -> usize {
    (ELEMENTS_PER_TASK / width.max(1)).max(1)
}

/// Softmax of each `width`-long row of `x`.
pub fn forward(x: &[f32], width: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    let task = rows_per_task(width) * width;
    out.par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .for_each(|(out, x)| {
            for (out, x) in out.chunks_mut(width).zip(x.chunks(width)) {
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = (v - max).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                out.iter_mut().for_each(|o| *o *= inv);
            }
        });
    out
}

/// The gradient of [`forward`] given its output `y` and the output gradient `dout`.
pub fn backward(y: &[f32], dout: &[f32], width: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; y.len()];
    let task = rows_per_task(width) * width;
    dx.par_chunks_mut(task)
        .zip(y.par_chunks(task).zip(dout.par_chunks(task)))
        .for_each(|(dx, (y, dout))| {
            for ((dx, y), g) in dx
                .chunks_mut(width)
                .zip(y.chunks(width))
                .zip(dout.chunks(width))
            {
                let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                for ((d, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                    *d = y * (g - dot);
                }
            }
        });
    dx
}

/// What the backward needs: the output and its shape.
#[derive(Debug, Clone)]
struct Saved {
    y: HostValues,
    dims: [usize; 4],
}

#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Cpu, 1> for SoftmaxBackward {
    type State = Saved;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let Saved { y, dims } = ops.state;
        let dout: Tensor<Cpu, 4> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<Cpu>(&ops.node)));
        let device = dout.device();
        if let [Some(parent)] = &ops.parents {
            let dx = from_host(backward(&y, &to_host(dout), dims[3]), dims, &device);
            grads.register::<Cpu>(parent.id, dx.into_primitive().tensor());
        }
    }
}

/// [`forward`] on a CPU tensor, with what the backward keeps.
fn forward_tensor(x: Tensor<Cpu, 4>) -> (Tensor<Cpu, 4>, Saved) {
    let device = x.device();
    let dims = x.dims();
    let y = from_host(forward(&to_host(x), dims[3]), dims, &device);
    let saved = Saved {
        y: to_host(y.clone()),
        dims,
    };
    (y, saved)
}

/// Softmax over the last dim of `x` (`[batch, heads, seq_q, seq_k]`) through the host op when
/// `B` is one of the CPU backends it serves; `x` back otherwise.
pub fn try_softmax<B: Backend>(x: Tensor<B, 4>) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    try_unary(x, SoftmaxBackward, forward_tensor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::host_dispatch::CpuAutodiff;
    use burn::tensor::Distribution;
    use burn::tensor::activation::softmax;

    /// Equals burn's softmax in value and in the input gradient, on rows long and short and
    /// with large logits (the max shift keeps `exp` finite).
    #[test]
    fn softmax_matches_burn_forward_and_gradient() {
        let device = Default::default();
        for (dims, spread) in [([2, 3, 5, 7], 1.0), ([1, 2, 3, 3000], 30.0)] {
            let x = Tensor::<Cpu, 4>::random(dims, Distribution::Normal(0.0, spread), &device);
            let c = Tensor::<Cpu, 4>::random(dims, Distribution::Default, &device);
            let run = |host: bool| {
                let leaf = Tensor::<CpuAutodiff, 4>::from_inner(x.clone()).require_grad();
                let y = if host {
                    try_softmax(leaf.clone()).unwrap_or_else(|_| panic!("the CPU backend takes it"))
                } else {
                    softmax(leaf.clone(), 3)
                };
                let grads = (y.clone() * Tensor::from_inner(c.clone())).sum().backward();
                (y.inner(), leaf.grad(&grads).unwrap())
            };
            let ((y1, g1), (y2, g2)) = (run(true), run(false));
            assert!((y1 - y2).abs().max().into_scalar() < 1e-6);
            assert!((g1 - g2).abs().max().into_scalar() < 1e-6);
        }
    }
}
