//! Interval score matching (ISM; LucidDreamer, Liang et al. 2023, arXiv 2311.11284): SDS with
//! the noise found by DDIM inversion instead of drawn at random.
//!
//! SDS pulls a render `x` toward the prior's one-step estimate `E[x0 | x_t]` of a randomly
//! noised copy; at large `t` that estimate is an average over everything the noise allows, so
//! SDS blurs edges and rounds shapes even when `x` already is a perfect sample. ISM reaches
//! `x_s` from `x` by unconditional DDIM inversion (which maps back onto `x`), steps on to
//! `x_t = x_{s + delta}`, and takes `g = w(t) (eps_cfg(x_t, t) - eps_uncond(x_s, s))`: the
//! target is the inversion's own prediction, so what is left is mostly the prompt's direction.
//! It needs accurate unconditional predictions: on the 32 px Tiny World prior it is worse
//! than SDS (docs/tiny_world.md, "SDS from the true scene").

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::prior::DiffusionPrior;
use crate::models::schedulers::SchedulerError;

/// ISM settings (LucidDreamer's defaults, in training timesteps of a 1000-step schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsmConfig {
    /// `delta_t`: the interval from `x_s` to `x_t` (50; LucidDreamer anneals 100 -> 50).
    pub interval: usize,
    /// `xs_delta_t`: the stride of the inversion from `x_0` to `x_s` (200), so at most
    /// `ceil(s / stride)` unconditional UNet passes before the one at `s`.
    pub inversion_stride: usize,
}

impl Default for IsmConfig {
    fn default() -> Self {
        Self {
            interval: 50,
            inversion_stride: 200,
        }
    }
}

impl IsmConfig {
    /// Both fields at least 1 (errors name the field).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval == 0 {
            return Err(ConfigError::new("interval", "must be at least 1"));
        }
        if self.inversion_stride == 0 {
            return Err(ConfigError::new("inversion_stride", "must be at least 1"));
        }
        Ok(())
    }

    /// `s` for the step's `t`.
    pub fn s(&self, t: usize) -> usize {
        t.saturating_sub(self.interval)
    }

    /// UNet passes (batches of the step's samples) one ISM target costs at `t`: the inversion
    /// to `s` and the prediction at `s`; the CFG pass at `t` is SDS's own.
    pub fn passes(&self, t: usize) -> usize {
        self.s(t).div_ceil(self.inversion_stride) + 1
    }
}

/// What ISM puts where SDS puts `add_noise(x0, noise, t)` and `noise`.
#[derive(Debug, Clone)]
pub struct IsmTarget<B: Backend> {
    /// `x_t`, reached from `x0` by deterministic DDIM inversion.
    pub x_t: Tensor<B, 4>,
    /// `eps_uncond(x_s, s)`: the noise the guided prediction at `x_t` is compared with.
    pub target: Tensor<B, 4>,
}

/// One deterministic DDIM move (eta 0) of `x`, at the noise level `alpha_from` (`abar` of its
/// timestep), to the level `alpha_to`, along the noise prediction `eps`: up (inversion) or
/// down (sampling).
pub fn ddim_move<B: Backend>(
    x: Tensor<B, 4>,
    eps: Tensor<B, 4>,
    alpha_from: f32,
    alpha_to: f32,
) -> Tensor<B, 4> {
    let x0 = (x - eps.clone() * (1.0 - alpha_from).sqrt()) / alpha_from.sqrt();
    x0 * alpha_to.sqrt() + eps * (1.0 - alpha_to).sqrt()
}

/// ISM's `x_t` and target for clean samples `x0` at timestep `t`: `x0` noised to timestep 0
/// with `noise` (as LucidDreamer starts), inverted to `s = t - interval` in strides with the
/// unconditional prediction, then moved to `t` along the prediction at `s`, which is the target.
///
/// # Shapes
/// - x0, noise: `[n, channels, h, w]`; uncond: `[1, seq, hidden]`
/// - class_labels: `[n, width]` (a camera-conditioned prior's cameras)
#[allow(clippy::too_many_arguments)]
pub fn interval_target<B: Backend>(
    prior: &DiffusionPrior<B>,
    x0: Tensor<B, 4>,
    noise: Tensor<B, 4>,
    t: usize,
    uncond: Tensor<B, 3>,
    class_labels: Option<Tensor<B, 2>>,
    config: &IsmConfig,
    max_batch: usize,
) -> Result<IsmTarget<B>, SchedulerError> {
    let s = config.s(t);
    let predict = |x: Tensor<B, 4>, at: usize| -> Result<Tensor<B, 4>, SchedulerError> {
        let n = x.dims()[0];
        let chunk = max_batch.max(1);
        let mut out = Vec::with_capacity(n.div_ceil(chunk));
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let labels = class_labels.clone().map(|l| l.narrow(0, start, len));
            out.push(prior.predict_noise(
                x.clone().narrow(0, start, len),
                at,
                uncond.clone(),
                labels,
            )?);
        }
        Ok(Tensor::cat(out, 0))
    };
    let mut x = prior.scheduler().add_noise(x0, noise, &[0])?;
    let mut at = 0;
    while at < s {
        let next = (at + config.inversion_stride).min(s);
        let eps = predict(x.clone(), at)?;
        x = ddim_move(x, eps, prior.alpha_prod(at)?, prior.alpha_prod(next)?);
        at = next;
    }
    let target = predict(x.clone(), s)?;
    let x_t = ddim_move(
        x,
        target.clone(),
        prior.alpha_prod(s)?,
        prior.alpha_prod(t)?,
    );
    Ok(IsmTarget { x_t, target })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn ddim_moves_along_the_true_noise_land_on_the_forward_process() {
        // With the exact noise, a move from any level to any other is `add_noise` there, and
        // moving back returns the start: the inversion is lossless when the prior is right.
        let device = Default::default();
        let shape = [2, 3, 4, 4];
        let x0 = Tensor::<NdArray<f32>, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let eps = Tensor::<NdArray<f32>, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let at = |a: f32| x0.clone() * a.sqrt() + eps.clone() * (1.0 - a).sqrt();
        let (a_s, a_t) = (0.9, 0.2);
        let up = ddim_move(at(a_s), eps.clone(), a_s, a_t);
        up.to_data()
            .assert_approx_eq::<f32>(&at(a_t).to_data(), Tolerance::absolute(1e-5));
        let back = ddim_move(up, eps.clone(), a_t, a_s);
        back.to_data()
            .assert_approx_eq::<f32>(&at(a_s).to_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn passes_count_the_inversion() {
        let c = IsmConfig::default();
        // t = 30: s = 0, only the prediction at s.
        assert_eq!(c.passes(30), 1);
        // t = 250: s = 200, one stride then the prediction.
        assert_eq!(c.passes(250), 2);
        // t = 980: s = 930, strides 0-200-400-600-800-930 (5) then the prediction.
        assert_eq!(c.passes(980), 6);
        assert_eq!(
            IsmConfig { interval: 0, ..c }.validate().unwrap_err().field,
            "interval"
        );
        assert_eq!(
            IsmConfig {
                inversion_stride: 0,
                ..c
            }
            .validate()
            .unwrap_err()
            .field,
            "inversion_stride"
        );
    }
}
