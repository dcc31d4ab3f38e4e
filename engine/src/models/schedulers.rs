//! The DDIM scheduler (diffusers `schedulers/scheduling_ddim.py`) and the noise-schedule
//! conversions SDS needs: [`DDIMScheduler`], configured from diffusers'
//! `scheduler/scheduler_config.json` ([`DDIMSchedulerConfig`]).
//!
//! With `a_t = alphas_cumprod[t]` and `b_t = 1 - a_t`, a noisy sample is
//! `x_t = sqrt(a_t) x0 + sqrt(b_t) eps`, and the model predicts `eps` (epsilon) or
//! `v = sqrt(a_t) eps - sqrt(b_t) x0` (v_prediction, SD 2.1 768). The schedule is computed on
//! the host in `f32` the way torch does (`linspace`, then a sequential `cumprod`), so it matches
//! diffusers' values to the last bits.
//!
//! Stable Diffusion folders ship a `PNDMScheduler` config; its fields are DDIM's, and diffusers
//! builds a DDIM scheduler from it the same way ([`DDIMSchedulerConfig::from_file`] does too).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use serde::{Deserialize, Serialize};

use super::unet_2d::{DiffusersConfigError, parse_validated, read_validated, reject_unsupported};

const DDIM: &str = "DDIMScheduler";

/// How the betas are spaced over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)`.
    #[default]
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end), T)^2` (latent diffusion, SD).
    ScaledLinear,
    /// Glide's cosine schedule, betas capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise `eps` (SD 1.x, SD 2.x base).
    #[default]
    Epsilon,
    /// The clean sample `x0`.
    Sample,
    /// The velocity `v = sqrt(a_t) eps - sqrt(1 - a_t) x0` (SD 2.x 768).
    VPrediction,
}

/// How `set_timesteps` places the inference timesteps (Table 2 of arXiv:2305.08891).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `round(linspace(0, T - 1, n))`, descending.
    Linspace,
    /// `arange(n) * (T / n) + steps_offset`, descending (diffusers' default).
    #[default]
    Leading,
    /// `round(arange(T, 0, -T / n)) - 1`.
    Trailing,
}

fn default_train_timesteps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_true() -> bool {
    true
}
fn default_one() -> f64 {
    1.0
}

/// diffusers' `DDIMScheduler` config (`scheduler/scheduler_config.json`); defaults are
/// diffusers' constructor defaults, which are NOT SD's (use the presets or the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DDIMSchedulerConfig {
    /// Training timesteps `T`.
    #[serde(default = "default_train_timesteps")]
    pub num_train_timesteps: usize,
    /// First beta.
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    /// Last beta.
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    /// Beta spacing.
    #[serde(default)]
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, overriding the schedule.
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// Clamp the predicted `x0` to `[-clip_sample_range, clip_sample_range]`.
    #[serde(default = "default_true")]
    pub clip_sample: bool,
    /// Bound of `clip_sample`.
    #[serde(default = "default_one")]
    pub clip_sample_range: f64,
    /// The "previous" `alphas_cumprod` of the last step is 1 (`true`) or `alphas_cumprod[0]`.
    #[serde(default = "default_true")]
    pub set_alpha_to_one: bool,
    /// Added to every inference timestep with `leading` spacing (SD: 1).
    #[serde(default)]
    pub steps_offset: usize,
    /// What the model predicts.
    #[serde(default)]
    pub prediction_type: PredictionType,
    /// Inference timestep placement.
    #[serde(default)]
    pub timestep_spacing: TimestepSpacing,
    /// Rescale betas to zero terminal SNR (arXiv:2305.08891).
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// Every other field (`_class_name`, `skip_prk_steps`, ...).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for DDIMSchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl DDIMSchedulerConfig {
    /// Stable Diffusion 1.5 and 2.1 base (epsilon prediction), mirroring
    /// <https://huggingface.co/stabilityai/stable-diffusion-2-1-base/blob/main/scheduler/scheduler_config.json>.
    pub fn sd21_base() -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            clip_sample: false,
            set_alpha_to_one: false,
            steps_offset: 1,
            ..Self::default()
        }
    }

    /// Stable Diffusion 1.5 (the same schedule as 2.1 base), mirroring
    /// <https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/blob/main/scheduler/scheduler_config.json>.
    pub fn sd15() -> Self {
        Self::sd21_base()
    }

    /// Stable Diffusion 2.1 768 (v-prediction), mirroring
    /// <https://huggingface.co/stabilityai/stable-diffusion-2-1/blob/main/scheduler/scheduler_config.json>.
    pub fn sd21() -> Self {
        Self {
            prediction_type: PredictionType::VPrediction,
            ..Self::sd21_base()
        }
    }

    /// Parses a config from JSON text and validates it.
    pub fn from_json(text: &str) -> Result<Self, DiffusersConfigError> {
        parse_validated(DDIM, text, Self::validate)
    }

    /// Reads `scheduler/scheduler_config.json` and validates it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DiffusersConfigError> {
        read_validated(DDIM, path.as_ref(), Self::validate)
    }

    /// Checks the values this port relies on.
    pub fn validate(&self) -> Result<(), DiffusersConfigError> {
        let invalid = |field: &str, reason: String| DiffusersConfigError::Invalid {
            what: DDIM,
            field: field.into(),
            reason,
        };
        if self.num_train_timesteps < 2 {
            return Err(invalid(
                "num_train_timesteps",
                format!("{} is fewer than 2", self.num_train_timesteps),
            ));
        }
        if let Some(betas) = &self.trained_betas {
            if betas.len() != self.num_train_timesteps {
                return Err(invalid(
                    "trained_betas",
                    format!(
                        "has {} values but num_train_timesteps is {}",
                        betas.len(),
                        self.num_train_timesteps
                    ),
                ));
            }
            if betas.iter().any(|b| !(0.0..1.0).contains(b)) {
                return Err(invalid("trained_betas", "values must be in [0, 1)".into()));
            }
        } else {
            for (field, b) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
                if !(0.0..1.0).contains(&b) {
                    return Err(invalid(field, format!("{b} is not in [0, 1)")));
                }
            }
        }
        reject_unsupported(
            DDIM,
            &self.other,
            &[("thresholding", serde_json::Value::Bool(false))],
        )
    }

    /// The betas, in `f32` as torch computes them.
    pub fn betas(&self) -> Vec<f32> {
        let t = self.num_train_timesteps;
        let betas = if let Some(trained) = &self.trained_betas {
            trained.iter().map(|&b| b as f32).collect()
        } else {
            match self.beta_schedule {
                BetaSchedule::Linear => {
                    linspace_f32(self.beta_start as f32, self.beta_end as f32, t)
                }
                BetaSchedule::ScaledLinear => linspace_f32(
                    self.beta_start.sqrt() as f32,
                    self.beta_end.sqrt() as f32,
                    t,
                )
                .into_iter()
                .map(|b| b * b)
                .collect(),
                BetaSchedule::SquaredcosCapV2 => {
                    let alpha_bar = |x: f64| {
                        ((x + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                            .cos()
                            .powi(2)
                    };
                    (0..t)
                        .map(|i| {
                            let (t1, t2) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
                            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                        })
                        .collect()
                }
            }
        };
        if self.rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        }
    }
}

/// torch's `linspace` on CPU in `f32`: the first half counts up from `start`, the second half
/// down from `end`, so both ends are exact.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// `cumprod(1 - betas)` in `f32`, sequentially (torch's CPU order).
fn cumprod_alphas(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f32;
    betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc
        })
        .collect()
}

/// Algorithm 1 of arXiv:2305.08891: shift and scale `sqrt(alphas_cumprod)` so the last is 0.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut sqrt_ab: Vec<f32> = cumprod_alphas(betas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt_ab[0], sqrt_ab[sqrt_ab.len() - 1]);
    for s in &mut sqrt_ab {
        *s -= last;
        *s *= first / (first - last);
    }
    let ab: Vec<f32> = sqrt_ab.iter().map(|s| s * s).collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    for i in 1..ab.len() {
        out.push(1.0 - ab[i] / ab[i - 1]);
    }
    out
}

/// Why a scheduler call cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] DiffusersConfigError),
    /// `step` was called before `set_timesteps`.
    #[error("DDIMScheduler: call set_timesteps before step")]
    TimestepsNotSet,
    /// More inference steps than training timesteps.
    #[error(
        "DDIMScheduler: num_inference_steps {requested} is not in 1..={num_train_timesteps} (num_train_timesteps)"
    )]
    InferenceSteps {
        /// What was asked.
        requested: usize,
        /// The config's `num_train_timesteps`.
        num_train_timesteps: usize,
    },
    /// A timestep outside `0..num_train_timesteps`.
    #[error("DDIMScheduler: timestep {timestep} is not in 0..{num_train_timesteps}")]
    Timestep {
        /// The timestep.
        timestep: usize,
        /// The config's `num_train_timesteps`.
        num_train_timesteps: usize,
    },
    /// Per-sample timesteps whose count matches neither 1 nor the batch.
    #[error("DDIMScheduler: {given} timesteps for a batch of {batch}")]
    TimestepCount {
        /// Timesteps given.
        given: usize,
        /// Batch size of the tensor.
        batch: usize,
    },
}

/// Output of [`DDIMScheduler::step`].
#[derive(Debug, Clone)]
pub struct DDIMSchedulerOutput<B: Backend, const D: usize> {
    /// `x_{t-1}`, same shape as the sample.
    pub prev_sample: Tensor<B, D>,
    /// The predicted `x0` (clipped if `clip_sample`), same shape as the sample.
    pub pred_original_sample: Tensor<B, D>,
}

/// DDIM (Song et al. 2020) with diffusers' semantics. The schedule lives on the host; tensors
/// of any rank whose first dimension is the batch go through the conversions.
#[derive(Debug, Clone)]
pub struct DDIMScheduler {
    /// The config it was built from.
    pub config: DDIMSchedulerConfig,
    /// `betas[t]`, `f32`.
    pub betas: Vec<f32>,
    /// `alphas_cumprod[t] = prod_{s <= t} (1 - betas[s])`, `f32`.
    pub alphas_cumprod: Vec<f32>,
    /// The "previous" `alphas_cumprod` of the last step (`set_alpha_to_one`).
    pub final_alpha_cumprod: f32,
    /// Inference timesteps, descending (all training timesteps until `set_timesteps`).
    pub timesteps: Vec<usize>,
    /// Set by [`set_timesteps`](Self::set_timesteps).
    pub num_inference_steps: Option<usize>,
}

impl DDIMScheduler {
    /// Builds the schedule.
    pub fn new(config: DDIMSchedulerConfig) -> Result<Self, SchedulerError> {
        config.validate()?;
        let betas = config.betas();
        let alphas_cumprod = cumprod_alphas(&betas);
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let timesteps = (0..config.num_train_timesteps).rev().collect();
        Ok(Self {
            config,
            betas,
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps,
            num_inference_steps: None,
        })
    }

    /// Chooses `num_inference_steps` timesteps by `timestep_spacing`.
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        let t = self.config.num_train_timesteps;
        let n = num_inference_steps;
        if n == 0 || n > t {
            return Err(SchedulerError::InferenceSteps {
                requested: n,
                num_train_timesteps: t,
            });
        }
        self.timesteps = match self.config.timestep_spacing {
            TimestepSpacing::Linspace => (0..n)
                .rev()
                .map(|i| {
                    let x = if n == 1 {
                        0.0
                    } else {
                        i as f64 * (t - 1) as f64 / (n - 1) as f64
                    };
                    x.round_ties_even() as usize
                })
                .collect(),
            TimestepSpacing::Leading => (0..n)
                .rev()
                .map(|i| i * (t / n) + self.config.steps_offset)
                .collect(),
            TimestepSpacing::Trailing => {
                // numpy: arange(T, 0, -ratio) has ceil(T / ratio) elements T - i * ratio.
                let ratio = t as f64 / n as f64;
                let len = (t as f64 / ratio).ceil() as usize;
                (0..len)
                    .map(|i| (t as f64 - i as f64 * ratio).round_ties_even() as usize - 1)
                    .collect()
            }
        };
        self.num_inference_steps = Some(n);
        Ok(())
    }

    /// `alphas_cumprod[timestep]`.
    pub fn alpha_prod(&self, timestep: usize) -> Result<f32, SchedulerError> {
        self.alphas_cumprod
            .get(timestep)
            .copied()
            .ok_or(SchedulerError::Timestep {
                timestep,
                num_train_timesteps: self.config.num_train_timesteps,
            })
    }

    /// Per-sample `[batch, 1, ...]` (or `[1, ...]`) tensor of `f(alphas_cumprod[t])`.
    fn coefficient<B: Backend, const D: usize>(
        &self,
        like: &Tensor<B, D>,
        timesteps: &[usize],
        f: impl Fn(f32) -> f32,
    ) -> Result<Tensor<B, D>, SchedulerError> {
        let batch = like.dims()[0];
        if timesteps.len() != 1 && timesteps.len() != batch {
            return Err(SchedulerError::TimestepCount {
                given: timesteps.len(),
                batch,
            });
        }
        let values = timesteps
            .iter()
            .map(|&t| self.alpha_prod(t).map(&f))
            .collect::<Result<Vec<f32>, _>>()?;
        let mut shape = [1usize; D];
        shape[0] = values.len();
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            (&like.device(), like.dtype()),
        ))
    }

    /// The signal and noise scales `(sqrt(a_t), sqrt(1 - a_t))` as `coefficient` tensors.
    fn signal_noise<B: Backend, const D: usize>(
        &self,
        like: &Tensor<B, D>,
        timesteps: &[usize],
    ) -> Result<(Tensor<B, D>, Tensor<B, D>), SchedulerError> {
        Ok((
            self.coefficient(like, timesteps, |a| a.sqrt())?,
            self.coefficient(like, timesteps, |a| (1.0 - a).sqrt())?,
        ))
    }

    /// Forward diffusion: `sqrt(a_t) x0 + sqrt(1 - a_t) noise`.
    ///
    /// # Shapes
    /// - original_samples, noise, output: `[batch, ...]`; timesteps: 1 or `batch` values
    pub fn add_noise<B: Backend, const D: usize>(
        &self,
        original_samples: Tensor<B, D>,
        noise: Tensor<B, D>,
        timesteps: &[usize],
    ) -> Result<Tensor<B, D>, SchedulerError> {
        let (sqrt_a, sqrt_b) = self.signal_noise(&original_samples, timesteps)?;
        Ok(sqrt_a * original_samples + sqrt_b * noise)
    }

    /// The v-prediction target: `sqrt(a_t) noise - sqrt(1 - a_t) sample`.
    ///
    /// # Shapes
    /// - sample, noise, output: `[batch, ...]`; timesteps: 1 or `batch` values
    pub fn get_velocity<B: Backend, const D: usize>(
        &self,
        sample: Tensor<B, D>,
        noise: Tensor<B, D>,
        timesteps: &[usize],
    ) -> Result<Tensor<B, D>, SchedulerError> {
        let (sqrt_a, sqrt_b) = self.signal_noise(&sample, timesteps)?;
        Ok(sqrt_a * noise - sqrt_b * sample)
    }

    /// The clean-sample estimate `x0` from the model output at noisy `sample`, by
    /// `prediction_type` (no clipping).
    ///
    /// # Shapes
    /// - model_output, sample, output: `[batch, ...]`; timesteps: 1 or `batch` values
    pub fn pred_original_sample<B: Backend, const D: usize>(
        &self,
        model_output: Tensor<B, D>,
        sample: Tensor<B, D>,
        timesteps: &[usize],
    ) -> Result<Tensor<B, D>, SchedulerError> {
        match self.config.prediction_type {
            PredictionType::Epsilon => self.original_from_epsilon(model_output, sample, timesteps),
            PredictionType::Sample => {
                // Still rejects timesteps outside the schedule or of the wrong count.
                self.coefficient(&sample, timesteps, |a| a)?;
                Ok(model_output)
            }
            PredictionType::VPrediction => {
                let (sqrt_a, sqrt_b) = self.signal_noise(&sample, timesteps)?;
                Ok(sqrt_a * sample - sqrt_b * model_output)
            }
        }
    }

    /// The clean-sample estimate `(sample - sqrt(1 - a_t) eps) / sqrt(a_t)` from a noise
    /// estimate, whatever the model predicts (the guidance hands out epsilon for every
    /// `prediction_type`).
    ///
    /// # Shapes
    /// - eps, sample, output: `[batch, ...]`; timesteps: 1 or `batch` values
    pub fn original_from_epsilon<B: Backend, const D: usize>(
        &self,
        eps: Tensor<B, D>,
        sample: Tensor<B, D>,
        timesteps: &[usize],
    ) -> Result<Tensor<B, D>, SchedulerError> {
        let (sqrt_a, sqrt_b) = self.signal_noise(&sample, timesteps)?;
        Ok((sample - sqrt_b * eps) / sqrt_a)
    }

    /// The noise estimate `eps` from the model output at noisy `sample`, by `prediction_type`.
    ///
    /// # Shapes
    /// - model_output, sample, output: `[batch, ...]`; timesteps: 1 or `batch` values
    pub fn pred_epsilon<B: Backend, const D: usize>(
        &self,
        model_output: Tensor<B, D>,
        sample: Tensor<B, D>,
        timesteps: &[usize],
    ) -> Result<Tensor<B, D>, SchedulerError> {
        let (sqrt_a, sqrt_b) = self.signal_noise(&sample, timesteps)?;
        Ok(match self.config.prediction_type {
            PredictionType::Epsilon => model_output,
            PredictionType::Sample => (sample - sqrt_a * model_output) / sqrt_b,
            PredictionType::VPrediction => sqrt_a * model_output + sqrt_b * sample,
        })
    }

    /// Deterministic DDIM step (`eta = 0`) from `timestep` to the previous inference timestep.
    ///
    /// # Shapes
    /// - model_output, sample, outputs: `[batch, ...]`
    pub fn step<B: Backend, const D: usize>(
        &self,
        model_output: Tensor<B, D>,
        timestep: usize,
        sample: Tensor<B, D>,
    ) -> Result<DDIMSchedulerOutput<B, D>, SchedulerError> {
        self.step_with_eta(model_output, timestep, sample, 0.0, None)
    }

    /// DDIM step with stochasticity `eta` (1 = DDPM); `variance_noise ~ N(0, 1)` is drawn from
    /// the backend's generator when `None` and `eta > 0`.
    ///
    /// # Shapes
    /// - model_output, sample, variance_noise, outputs: `[batch, ...]`
    pub fn step_with_eta<B: Backend, const D: usize>(
        &self,
        model_output: Tensor<B, D>,
        timestep: usize,
        sample: Tensor<B, D>,
        eta: f32,
        variance_noise: Option<Tensor<B, D>>,
    ) -> Result<DDIMSchedulerOutput<B, D>, SchedulerError> {
        let n = self
            .num_inference_steps
            .ok_or(SchedulerError::TimestepsNotSet)?;
        // 1. previous step value
        let prev_timestep = timestep as i64 - (self.config.num_train_timesteps / n) as i64;
        // 2. alphas, betas
        let alpha_prod_t = self.alpha_prod(timestep)?;
        let alpha_prod_t_prev = if prev_timestep >= 0 {
            self.alpha_prod(prev_timestep as usize)?
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (sqrt_a, sqrt_b) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
        // 3. predicted x0 and eps
        let (mut pred_original_sample, pred_epsilon) = match self.config.prediction_type {
            PredictionType::Epsilon => (
                (sample.clone() - model_output.clone() * sqrt_b) / sqrt_a,
                model_output,
            ),
            PredictionType::Sample => (
                model_output.clone(),
                (sample.clone() - model_output * sqrt_a) / sqrt_b,
            ),
            PredictionType::VPrediction => (
                sample.clone() * sqrt_a - model_output.clone() * sqrt_b,
                model_output * sqrt_a + sample.clone() * sqrt_b,
            ),
        };
        // 4. clip x0
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            pred_original_sample = pred_original_sample.clamp(-r, r);
        }
        // 5. variance sigma_t^2 (formula 16)
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = eta * variance.sqrt();
        // 6. direction pointing to x_t, 7. x_{t-1}
        let direction = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let mut prev_sample =
            pred_original_sample.clone() * alpha_prod_t_prev.sqrt() + pred_epsilon * direction;
        if eta > 0.0 {
            let noise = variance_noise.unwrap_or_else(|| {
                prev_sample.random_like(burn::tensor::Distribution::Normal(0.0, 1.0))
            });
            prev_sample = prev_sample + noise * std_dev_t;
        }
        Ok(DDIMSchedulerOutput {
            prev_sample,
            pred_original_sample,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn schedules_have_known_ends() {
        let s = DDIMScheduler::new(DDIMSchedulerConfig::sd21_base()).unwrap();
        assert_eq!(s.betas.len(), 1000);
        assert!((s.betas[0] - 0.00085).abs() < 1e-9);
        assert!((s.betas[999] - 0.012).abs() < 1e-8);
        // SD's well-known terminal alpha_bar.
        assert!((s.alphas_cumprod[999] - 0.004_660_5).abs() < 1e-6);
        assert_eq!(s.final_alpha_cumprod, s.alphas_cumprod[0]);
        let zsnr = DDIMSchedulerConfig {
            rescale_betas_zero_snr: true,
            ..DDIMSchedulerConfig::sd21_base()
        };
        let s = DDIMScheduler::new(zsnr).unwrap();
        assert!(s.alphas_cumprod[999].abs() < 1e-12);
    }

    #[test]
    fn timestep_spacings() {
        let mut s = DDIMScheduler::new(DDIMSchedulerConfig::sd21_base()).unwrap();
        s.set_timesteps(4).unwrap();
        assert_eq!(s.timesteps, vec![751, 501, 251, 1]);
        s.config.timestep_spacing = TimestepSpacing::Trailing;
        s.set_timesteps(3).unwrap();
        assert_eq!(s.timesteps, vec![999, 666, 332]);
        s.config.timestep_spacing = TimestepSpacing::Linspace;
        s.set_timesteps(3).unwrap();
        assert_eq!(s.timesteps, vec![999, 500, 0]);
        assert!(matches!(
            s.set_timesteps(1001),
            Err(SchedulerError::InferenceSteps { .. })
        ));
    }

    #[test]
    fn conversions_invert_each_other() {
        let device = Default::default();
        let mut config = DDIMSchedulerConfig::sd21();
        let x0 = Tensor::<B, 2>::from_floats([[0.5, -1.0], [2.0, 0.25]], &device);
        let eps = Tensor::<B, 2>::from_floats([[0.1, 0.7], [-0.3, 1.2]], &device);
        let s = DDIMScheduler::new(config.clone()).unwrap();
        let t = [100, 900];
        let xt = s.add_noise(x0.clone(), eps.clone(), &t).unwrap();
        let v = s.get_velocity(x0.clone(), eps.clone(), &t).unwrap();
        let x0_back = s.pred_original_sample(v.clone(), xt.clone(), &t).unwrap();
        let eps_back = s.pred_epsilon(v, xt.clone(), &t).unwrap();
        let tol = burn::tensor::Tolerance::<f32>::absolute(1e-5);
        x0_back
            .into_data()
            .assert_approx_eq(&x0.clone().into_data(), tol);
        eps_back
            .into_data()
            .assert_approx_eq(&eps.clone().into_data(), tol);
        config.prediction_type = PredictionType::Epsilon;
        let s = DDIMScheduler::new(config).unwrap();
        let x0_eps = s.pred_original_sample(eps, xt, &t).unwrap();
        x0_eps.into_data().assert_approx_eq(&x0.into_data(), tol);
        assert!(matches!(
            s.add_noise(
                Tensor::<B, 2>::zeros([2, 2], &device),
                Tensor::zeros([2, 2], &device),
                &[1, 2, 3]
            ),
            Err(SchedulerError::TimestepCount { given: 3, batch: 2 })
        ));
        assert!(matches!(
            s.alpha_prod(1000),
            Err(SchedulerError::Timestep { timestep: 1000, .. })
        ));
    }

    #[test]
    fn step_needs_timesteps_and_reaches_x0_at_the_end() {
        let device = Default::default();
        let mut config = DDIMSchedulerConfig::sd21_base();
        config.set_alpha_to_one = true;
        let mut s = DDIMScheduler::new(config).unwrap();
        let x = Tensor::<B, 1>::from_floats([0.3, -0.2], &device);
        assert!(matches!(
            s.step(x.clone(), 1, x.clone()),
            Err(SchedulerError::TimestepsNotSet)
        ));
        s.set_timesteps(10).unwrap();
        // Last step with set_alpha_to_one: prev_sample == predicted x0.
        let out = s.step(x.clone(), 1, x).unwrap();
        out.prev_sample
            .into_data()
            .assert_approx_eq::<f32>(&out.pred_original_sample.into_data(), Default::default());
    }
}
