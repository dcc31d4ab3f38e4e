//! GEGLU's gate (`hidden * gelu(gate)` on the two halves of the projection) on the host for
//! burn-ndarray, as one op with a hand-written backward.
//!
//! burn's path is a `chunk` (two copies), GELU as five tensor ops (divide, erf, add, multiply,
//! divide) and a product, each a full pass on ndarray, and about fifteen more in the backward,
//! whose GELU derivative is that of the tanh approximation. Here each way is one pass over the
//! projection, threaded over rows, with the exact derivative `Phi(x) + x phi(x)` (PyTorch's).
//! Reached through [`try_geglu`] (`host_dispatch.rs`).

use std::f32::consts::{FRAC_1_SQRT_2, PI};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::host_dispatch::{Cpu, HostValues, from_host, to_host, try_unary};

/// Rows per rayon task: enough work to amortise the task, small enough to balance 2-64 cores.
const ROWS_PER_TASK: usize = 32;

/// The standard normal CDF, `0.5 (1 + erf(x / sqrt 2))`.
fn phi_cdf(x: f32) -> f32 {
    0.5 * (1.0 + libm::erff(x * FRAC_1_SQRT_2))
}

/// `hidden * gelu(gate)` for each row of `projected` (`[rows, 2 * width]`: `[hidden, gate]`),
/// `[rows, width]` out.
pub fn forward(projected: &[f32], width: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; projected.len() / 2];
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(projected.par_chunks(2 * width * ROWS_PER_TASK))
        .for_each(|(out, projected)| {
            for (out, row) in out.chunks_mut(width).zip(projected.chunks(2 * width)) {
                let (hidden, gate) = row.split_at(width);
                for ((o, &h), &x) in out.iter_mut().zip(hidden).zip(gate) {
                    *o = h * x * phi_cdf(x);
                }
            }
        });
    out
}

/// The gradient of [`forward`] with respect to `projected`, for an output gradient `dout`:
/// `d hidden = dout * gelu(gate)`, `d gate = dout * hidden * (Phi(gate) + gate phi(gate))`.
pub fn backward(projected: &[f32], dout: &[f32], width: usize) -> Vec<f32> {
    let inv_sqrt_2pi = 1.0 / (2.0 * PI).sqrt();
    let mut grad = vec![0.0f32; projected.len()];
    grad.par_chunks_mut(2 * width * ROWS_PER_TASK)
        .zip(projected.par_chunks(2 * width * ROWS_PER_TASK))
        .zip(dout.par_chunks(width * ROWS_PER_TASK))
        .for_each(|((grad, projected), dout)| {
            for ((grad, row), dout) in grad
                .chunks_mut(2 * width)
                .zip(projected.chunks(2 * width))
                .zip(dout.chunks(width))
            {
                let (hidden, gate) = row.split_at(width);
                let (d_hidden, d_gate) = grad.split_at_mut(width);
                for i in 0..width {
                    let (h, x, g) = (hidden[i], gate[i], dout[i]);
                    let cdf = phi_cdf(x);
                    let pdf = inv_sqrt_2pi * (-0.5 * x * x).exp();
                    d_hidden[i] = g * x * cdf;
                    d_gate[i] = g * h * (cdf + x * pdf);
                }
            }
        });
    grad
}

/// What the backward needs: the projection and its shape.
#[derive(Debug, Clone)]
struct Saved {
    projected: HostValues,
    dims: [usize; 3],
}

#[derive(Debug)]
struct GegluBackward;

impl Backward<Cpu, 1> for GegluBackward {
    type State = Saved;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let Saved { projected, dims } = ops.state;
        let dout: Tensor<Cpu, 3> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<Cpu>(&ops.node)));
        let device = dout.device();
        if let [Some(parent)] = &ops.parents {
            let grad = backward(&projected, &to_host(dout), dims[2] / 2);
            let grad = from_host(grad, dims, &device);
            grads.register::<Cpu>(parent.id, grad.into_primitive().tensor());
        }
    }
}

/// [`forward`] on a CPU tensor `[batch, seq, 2 * width]`, with what the backward keeps.
fn forward_tensor(projected: Tensor<Cpu, 3>) -> (Tensor<Cpu, 3>, Saved) {
    let device = projected.device();
    let dims = projected.dims();
    let projected = to_host(projected);
    let out = forward(&projected, dims[2] / 2);
    let out = from_host(out, [dims[0], dims[1], dims[2] / 2], &device);
    (out, Saved { projected, dims })
}

/// `hidden * gelu(gate)` of `projected` (`[batch, seq, 2 * width]`) through the host op when
/// `B` is one of the CPU backends it serves; `projected` back otherwise.
pub fn try_geglu<B: Backend>(projected: Tensor<B, 3>) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    if projected.dims()[2] % 2 != 0 {
        return Err(projected);
    }
    try_unary(projected, GegluBackward, forward_tensor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn::tensor::activation::gelu;

    /// The forward equals burn's `chunk` + `gelu` + product; the backward equals central
    /// finite differences of an f64 evaluation of the same function (burn's own GELU backward
    /// is the tanh approximation's derivative, so it is not the reference here).
    #[test]
    fn geglu_matches_burn_forward_and_finite_difference_gradients() {
        let device = Default::default();
        let (rows, width) = (70, 5);
        let p = Tensor::<Cpu, 3>::random(
            [2, rows / 2, 2 * width],
            Distribution::Normal(0.0, 2.0),
            &device,
        );
        let halves = p.clone().chunk(2, 2);
        let want = halves[0].clone() * gelu(halves[1].clone());
        let got = try_geglu(p.clone()).unwrap_or_else(|_| panic!("the CPU backend takes it"));
        let diff = (got - want).abs().max().into_scalar();
        assert!(diff < 1e-5, "forward differs from burn's by {diff}");

        let values = p.into_data().into_vec::<f32>().unwrap();
        let dout: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0)
            .collect();
        let grad = backward(&values, &dout, width);
        // sum(dout * out) in f64, out = hidden * gate * Phi(gate).
        let objective = |v: &[f64]| -> f64 {
            let mut sum = 0.0;
            for (r, row) in v.chunks(2 * width).enumerate() {
                for i in 0..width {
                    let (h, x) = (row[i], row[width + i]);
                    let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
                    sum += dout[r * width + i] as f64 * h * x * cdf;
                }
            }
            sum
        };
        let base: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        let step = 1e-4;
        for index in (0..values.len()).step_by(7) {
            let (mut up, mut down) = (base.clone(), base.clone());
            up[index] += step;
            down[index] -= step;
            let numeric = (objective(&up) - objective(&down)) / (2.0 * step);
            let error = (grad[index] as f64 - numeric).abs();
            assert!(
                error < 1e-4 * (1.0 + numeric.abs()),
                "element {index}: {} vs {numeric}",
                grad[index]
            );
        }
    }
}
