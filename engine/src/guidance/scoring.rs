//! How RewardSDS scores a noisy sample `x_t^i` (step 2 of the algorithm): denoise it to a
//! clean estimate, decode it to images and ask the reward model; the sample's reward is the
//! mean over the `B` views. No gradients flow through any of this (inner backend).
//!
//! - [`ScoringMode::Ddim`] (official): deterministic DDIM from `t` down to 0 on the grid
//!   `np.linspace(0, 999, 15, dtype=int)` reversed ([`ddim_scoring_grid`]), each step
//!   `x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_hat` with CFG noise predictions;
//!   the sample reached at the grid's last point is decoded, as in the official
//!   `diffusion_denoising_loop`.
//! - [`ScoringMode::OneStep`] (cheap): `x0_hat = (x_t - sqrt(1 - abar_t) eps_cfg) / sqrt(abar_t)`.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::GuidanceError;
use super::prior::DiffusionPrior;
use crate::models::SchedulerError;
use crate::models::autoencoder_tiny::AutoencoderTiny;
use crate::models::reward::RewardModel;

/// Points of the official scoring grid (`num_steps = 15` in `explore_direction`).
pub const DDIM_SCORING_STEPS: usize = 15;

/// How a noisy sample is turned into a clean one for scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoringMode {
    /// Deterministic DDIM on the official 15-point grid (up to 14 extra CFG UNet passes).
    #[default]
    Ddim,
    /// The one-step `x0` estimate from the SDS noise prediction (no extra UNet pass).
    OneStep,
}

/// The DDIM scoring timesteps from `t`: `linspace(0, T - 1, steps)` truncated to integers
/// (numpy's `dtype=int`), reversed, the points below `t` kept and `t` put first. Ends at 0
/// unless `t` is 0, where it is `[0]` (nothing to denoise).
pub fn ddim_scoring_grid(t: usize, num_train_timesteps: usize, steps: usize) -> Vec<usize> {
    assert!(num_train_timesteps >= 1 && steps >= 1);
    let last = num_train_timesteps - 1;
    let step = if steps > 1 {
        last as f64 / (steps - 1) as f64
    } else {
        0.0
    };
    // numpy: arange(steps) * step + start, then the last point set to stop exactly.
    let grid = (0..steps).rev().map(|i| {
        if i + 1 == steps && steps > 1 {
            last
        } else {
            (i as f64 * step) as usize
        }
    });
    std::iter::once(t).chain(grid.filter(|&g| g < t)).collect()
}

/// Everything scoring needs besides the samples.
pub struct Scorer<'a, B: Backend> {
    /// The prior that denoises and decodes.
    pub prior: &'a DiffusionPrior<B>,
    /// The reward model.
    pub reward: &'a dyn RewardModel<B>,
    /// The prompt rewards are computed against (without view suffix, as the official code).
    pub prompt: &'a str,
    /// DDIM or one step.
    pub mode: ScoringMode,
    /// CFG scale of the denoising passes.
    pub guidance_scale: f32,
    /// Samples per UNet pass and per decode/reward call (memory bound).
    pub max_batch: usize,
    /// A cheaper decoder for the scored images (TAESD) instead of the prior's VAE.
    pub decoder: Option<&'a AutoencoderTiny<B>>,
}

impl<B: Backend> Scorer<'_, B> {
    /// The clean estimate of each noisy sample.
    ///
    /// `eps_at_t` is the CFG noise prediction at `(x_t, t)` with this scale if already
    /// computed (the SDS pass): it is reused instead of running the UNet again.
    ///
    /// # Shapes
    /// - x_t, eps_at_t, output: `[n, channels, h, w]`
    /// - cond: `[n, seq, hidden]`; uncond: `[1, seq, hidden]`
    /// - class_labels: `[n, width]` (a camera-conditioned prior's cameras)
    pub fn denoise(
        &self,
        x_t: Tensor<B, 4>,
        t: usize,
        cond: Tensor<B, 3>,
        uncond: Tensor<B, 3>,
        class_labels: Option<Tensor<B, 2>>,
        eps_at_t: Option<Tensor<B, 4>>,
    ) -> Result<Tensor<B, 4>, SchedulerError> {
        let prior = self.prior;
        let predict = |x: Tensor<B, 4>, t| {
            prior.predict_noise_cfg_chunked(
                x,
                t,
                cond.clone(),
                uncond.clone(),
                class_labels.clone(),
                self.guidance_scale,
                self.max_batch,
            )
        };
        let x0_hat = |x: Tensor<B, 4>, eps: Tensor<B, 4>, t| {
            prior.scheduler().original_from_epsilon(eps, x, &[t])
        };
        match self.mode {
            ScoringMode::OneStep => {
                let eps = match eps_at_t {
                    Some(eps) => eps,
                    None => predict(x_t.clone(), t)?,
                };
                x0_hat(x_t, eps, t)
            }
            ScoringMode::Ddim => {
                let grid = ddim_scoring_grid(t, prior.num_train_timesteps(), DDIM_SCORING_STEPS);
                let mut x = x_t;
                let mut eps_first = eps_at_t;
                for pair in grid.windows(2) {
                    let (t_now, t_next) = (pair[0], pair[1]);
                    let eps = match eps_first.take() {
                        Some(eps) => eps,
                        None => predict(x.clone(), t_now)?,
                    };
                    let x0 = x0_hat(x, eps.clone(), t_now)?;
                    let a_next = prior.alpha_prod(t_next)?;
                    x = x0 * a_next.sqrt() + eps * (1.0 - a_next).sqrt();
                }
                Ok(x)
            }
        }
    }

    /// The images the reward sees for clean estimates `x0` (`[rows, channels, h, w]`):
    /// decoded by the score decoder or the prior, in `[0, 1]`.
    pub fn decode(&self, x0: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.decoder {
            Some(taesd) => (taesd.decode(x0) * 0.5 + 0.5).clamp(0.0, 1.0),
            None => self.prior.decode(x0),
        }
    }

    /// Decodes clean estimates and scores them; returns one reward per noise sample, the
    /// mean over its views.
    ///
    /// # Shapes
    /// - x0: `[n_samples * views, channels, h, w]`, noise-sample major (sample `i`, view `b`
    ///   at row `i * views + b`)
    pub fn rewards(&self, x0: Tensor<B, 4>, n_samples: usize) -> Result<Vec<f32>, GuidanceError> {
        let rows = x0.dims()[0];
        assert!(
            n_samples > 0 && rows.is_multiple_of(n_samples),
            "{rows} rows for {n_samples} samples"
        );
        let views = rows / n_samples;
        let mut scores = Vec::with_capacity(rows);
        for chunk in x0.split(self.max_batch.max(1), 0) {
            let s = self.reward.score(self.decode(chunk), self.prompt)?;
            scores.extend(
                s.into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .expect("float scores"),
            );
        }
        Ok(scores
            .chunks(views)
            .map(|c| c.iter().sum::<f32>() / views as f32)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_grid() {
        let full = [
            999, 927, 856, 784, 713, 642, 570, 499, 428, 356, 285, 214, 142, 71, 0,
        ];
        assert_eq!(ddim_scoring_grid(999, 1000, 15), full);
        assert_eq!(ddim_scoring_grid(1000, 1000, 15)[1..], full);
        assert_eq!(
            ddim_scoring_grid(500, 1000, 15),
            [500, 499, 428, 356, 285, 214, 142, 71, 0]
        );
        assert_eq!(
            ddim_scoring_grid(499, 1000, 15),
            [499, 428, 356, 285, 214, 142, 71, 0]
        );
        assert_eq!(ddim_scoring_grid(71, 1000, 15), [71, 0]);
        assert_eq!(ddim_scoring_grid(72, 1000, 15), [72, 71, 0]);
        assert_eq!(ddim_scoring_grid(20, 1000, 15), [20, 0]);
        assert_eq!(ddim_scoring_grid(1, 1000, 15), [1, 0]);
        assert_eq!(ddim_scoring_grid(0, 1000, 15), [0]);
    }

    #[test]
    fn serde_names() {
        let m: ScoringMode = serde_json::from_str("\"one_step\"").unwrap();
        assert_eq!(m, ScoringMode::OneStep);
        assert_eq!(
            serde_json::to_string(&ScoringMode::Ddim).unwrap(),
            "\"ddim\""
        );
    }
}
