//! GroupNorm, optionally followed by SiLU, on the host for burn-ndarray: one op with a
//! hand-written backward.
//!
//! burn's `GroupNorm` is seven tensor ops (mean, subtract, square, mean, divide, scale, shift)
//! and SiLU three more; on ndarray each is a full pass over the activation, and autodiff's
//! backward of each is one to three more. Here the forward is two passes per group (statistics,
//! then normalise + affine + SiLU) and the backward two (the per-channel sums, then the input
//! gradient), threaded over (sample, group). Sums run in f64 in a fixed order, so results do not
//! depend on the thread count. Reached through [`try_group_norm`] (`host_dispatch.rs`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::host_dispatch::{Cpu, CpuAutodiff, HostValues, from_host, same_type, to_host};

/// What one GroupNorm call computes: `x` is `[batch, channels, spatial]` row-major (any
/// trailing dims flattened), `channels / groups` consecutive channels per group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormSpec {
    /// Samples.
    pub batch: usize,
    /// Channels (`num_channels` of the GroupNorm).
    pub channels: usize,
    /// Product of the dims after the channels.
    pub spatial: usize,
    /// `num_groups`.
    pub groups: usize,
    /// Added to the variance.
    pub epsilon: f64,
    /// SiLU after the affine map (the ResNet blocks' `silu(norm(x))`).
    pub silu: bool,
}

impl GroupNormSpec {
    /// Elements in one (sample, group) block.
    fn block(&self) -> usize {
        self.channels / self.groups * self.spatial
    }
}

/// Mean and 1 / std of each (sample, group), `[batch * groups]` each.
#[derive(Debug, Clone)]
pub struct GroupStats {
    /// Mean of each (sample, group).
    pub mean: Vec<f32>,
    /// `1 / sqrt(var + epsilon)` of each (sample, group).
    pub rstd: Vec<f32>,
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// Forward: `y = (x - mean) * rstd * gamma[c] + beta[c]`, then `y * sigmoid(y)` with SiLU.
pub fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    s: &GroupNormSpec,
) -> (Vec<f32>, GroupStats) {
    let block = s.block();
    let per_group = s.channels / s.groups;
    let mut out = vec![0.0f32; x.len()];
    let mut mean = vec![0.0f32; s.batch * s.groups];
    let mut rstd = vec![0.0f32; s.batch * s.groups];
    out.par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .enumerate()
        .for_each(|(index, ((out, x), (mean, rstd)))| {
            // Two passes (mean, then the centred variance) as burn and PyTorch do, in f64.
            let m = x.iter().map(|&v| v as f64).sum::<f64>() / block as f64;
            let var = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / block as f64;
            let r = 1.0 / (var + s.epsilon).sqrt();
            (*mean, *rstd) = (m as f32, r as f32);
            let first_channel = (index % s.groups) * per_group;
            for (k, (out, x)) in out
                .chunks_mut(s.spatial)
                .zip(x.chunks(s.spatial))
                .enumerate()
            {
                let c = first_channel + k;
                // Centre first: x * scale + (beta - mean * scale) would cancel catastrophically
                // when |mean| is large against the spread.
                let (m, scale) = (m as f32, r as f32 * gamma[c]);
                for (o, &v) in out.iter_mut().zip(x) {
                    let y = (v - m) * scale + beta[c];
                    *o = if s.silu { y * sigmoid(y) } else { y };
                }
            }
        });
    (out, GroupStats { mean, rstd })
}

/// Gradients of [`forward`] for an output gradient `dout`: `(dx, dgamma, dbeta)`.
pub fn backward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &GroupStats,
    dout: &[f32],
    s: &GroupNormSpec,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let block = s.block();
    let per_group = s.channels / s.groups;
    let mut dx = vec![0.0f32; x.len()];
    // Per (sample, channel): sum of dy and of dy * x_hat, reduced over samples afterwards in
    // a fixed order.
    let mut sums = vec![[0.0f64; 2]; s.batch * s.channels];
    dx.par_chunks_mut(block)
        .zip(x.par_chunks(block).zip(dout.par_chunks(block)))
        .zip(sums.par_chunks_mut(per_group))
        .enumerate()
        .for_each(|(index, ((dx, (x, dout)), sums))| {
            let (m, r) = (stats.mean[index], stats.rstd[index]);
            let first_channel = (index % s.groups) * per_group;
            // Pass 1: dy (the gradient at the affine output, through SiLU) into dx, and the
            // per-channel sums.
            for (k, ((dy, x), dout)) in dx
                .chunks_mut(s.spatial)
                .zip(x.chunks(s.spatial))
                .zip(dout.chunks(s.spatial))
                .enumerate()
            {
                let c = first_channel + k;
                let (mut sum_dy, mut sum_dy_xhat) = (0.0f64, 0.0f64);
                for ((dy, &v), &g) in dy.iter_mut().zip(x).zip(dout) {
                    let x_hat = (v - m) * r;
                    let d = if s.silu {
                        let y = x_hat * gamma[c] + beta[c];
                        let sig = sigmoid(y);
                        g * sig * (1.0 + y * (1.0 - sig))
                    } else {
                        g
                    };
                    *dy = d;
                    sum_dy += d as f64;
                    sum_dy_xhat += (d * x_hat) as f64;
                }
                sums[k] = [sum_dy, sum_dy_xhat];
            }
            // Pass 2: dx = rstd * (g dy - mean(g dy) - x_hat * mean(g dy * x_hat)).
            let (mut a, mut b) = (0.0f64, 0.0f64);
            for (k, [sum_dy, sum_dy_xhat]) in sums.iter().enumerate() {
                a += gamma[first_channel + k] as f64 * sum_dy;
                b += gamma[first_channel + k] as f64 * sum_dy_xhat;
            }
            let (a, b) = ((a / block as f64) as f32, (b / block as f64) as f32);
            for (k, (dx, x)) in dx
                .chunks_mut(s.spatial)
                .zip(x.chunks(s.spatial))
                .enumerate()
            {
                let g = gamma[first_channel + k];
                for (d, &v) in dx.iter_mut().zip(x) {
                    let x_hat = (v - m) * r;
                    *d = r * (g * *d - a - x_hat * b);
                }
            }
        });
    let mut dgamma = vec![0.0f64; s.channels];
    let mut dbeta = vec![0.0f64; s.channels];
    for sample in sums.chunks(s.channels) {
        for (c, [sum_dy, sum_dy_xhat]) in sample.iter().enumerate() {
            dbeta[c] += sum_dy;
            dgamma[c] += sum_dy_xhat;
        }
    }
    let narrow = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (dx, narrow(dgamma), narrow(dbeta))
}

/// The CPU forward on tensors; `x` is `[batch, channels, spatial]`.
fn forward_tensor(
    x: Tensor<Cpu, 3>,
    gamma: Tensor<Cpu, 1>,
    beta: Tensor<Cpu, 1>,
    spec: &GroupNormSpec,
) -> (Tensor<Cpu, 3>, Saved) {
    let device = x.device();
    let (x, gamma, beta) = (to_host(x), to_host(gamma), to_host(beta));
    let (out, stats) = forward(&x, &gamma, &beta, spec);
    let out = from_host(out, [spec.batch, spec.channels, spec.spatial], &device);
    let saved = Saved {
        x,
        gamma,
        beta,
        stats,
        spec: *spec,
    };
    (out, saved)
}

/// What the backward needs: the input, the parameters and the statistics.
#[derive(Debug, Clone)]
struct Saved {
    x: HostValues,
    gamma: HostValues,
    beta: HostValues,
    stats: GroupStats,
    spec: GroupNormSpec,
}

#[derive(Debug)]
struct GroupNormBackward;

impl Backward<Cpu, 3> for GroupNormBackward {
    type State = Saved;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let saved = ops.state;
        let s = saved.spec;
        let dout: Tensor<Cpu, 3> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<Cpu>(&ops.node)));
        let device = dout.device();
        let (dx, dgamma, dbeta) = backward(
            &saved.x,
            &saved.gamma,
            &saved.beta,
            &saved.stats,
            &to_host(dout),
            &s,
        );
        let [x, gamma, beta] = &ops.parents;
        if let Some(x) = x {
            let dx = from_host(dx, [s.batch, s.channels, s.spatial], &device);
            grads.register::<Cpu>(x.id, dx.into_primitive().tensor());
        }
        for (parent, values) in [(gamma, dgamma), (beta, dbeta)] {
            if let Some(parent) = parent {
                let grad = from_host(values, [s.channels], &device);
                grads.register::<Cpu>(parent.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// [`forward_tensor`] on autodiff tensors, differentiable in `x`, `gamma` and `beta`.
fn forward_autodiff(
    x: Tensor<CpuAutodiff, 3>,
    gamma: Tensor<CpuAutodiff, 1>,
    beta: Tensor<CpuAutodiff, 1>,
    s: &GroupNormSpec,
) -> Tensor<CpuAutodiff, 3> {
    let x: FloatTensor<CpuAutodiff> = x.into_primitive().tensor();
    let gamma: FloatTensor<CpuAutodiff> = gamma.into_primitive().tensor();
    let beta: FloatTensor<CpuAutodiff> = beta.into_primitive().tensor();
    let run = || {
        forward_tensor(
            Tensor::from_primitive(TensorPrimitive::Float(x.primitive.clone())),
            Tensor::from_primitive(TensorPrimitive::Float(gamma.primitive.clone())),
            Tensor::from_primitive(TensorPrimitive::Float(beta.primitive.clone())),
            s,
        )
    };
    let out = match GroupNormBackward
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, saved) = run();
            prep.finish(saved, out.into_primitive().tensor())
        }
        OpsKind::UnTracked(prep) => prep.finish(run().0.into_primitive().tensor()),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// GroupNorm (+ SiLU) of `x` (`[batch, channels, spatial]`) through the host op when `B` is
/// one of the CPU backends it serves; the inputs back otherwise.
#[allow(clippy::type_complexity)]
pub fn try_group_norm<B: Backend>(
    x: Tensor<B, 3>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    s: &GroupNormSpec,
) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>)> {
    let inputs = match same_type::<
        _,
        (
            Tensor<CpuAutodiff, 3>,
            Tensor<CpuAutodiff, 1>,
            Tensor<CpuAutodiff, 1>,
        ),
    >((x, gamma, beta))
    {
        Ok((x, gamma, beta)) => {
            let out = forward_autodiff(x, gamma, beta, s);
            return Ok(same_type(out).unwrap_or_else(|_| unreachable!()));
        }
        Err(inputs) => inputs,
    };
    match same_type::<_, (Tensor<Cpu, 3>, Tensor<Cpu, 1>, Tensor<Cpu, 1>)>(inputs) {
        Ok((x, gamma, beta)) => {
            let out = forward_tensor(x, gamma, beta, s).0;
            Ok(same_type(out).unwrap_or_else(|_| unreachable!()))
        }
        Err(inputs) => Err(inputs),
    }
}
