//! MVDream's x0-reconstruction loss (MVDream paper Sec. 3.2; threestudio's
//! `multiview_diffusion_guidance.py`, `recon_loss: true`): instead of SDS's `w(t) (eps_cfg -
//! eps)`, the render's latent `z` is pulled towards the CFG-denoised `x0_hat`, with the
//! gradient `z - x0_hat`. At the high CFG scales MVDream runs (50), the CFG `x0_hat` is
//! over-saturated, so each group of views' `x0_hat` is rescaled towards the standard deviation
//! of the text-only prediction's (`recon_std_rescale`, CFG rescale of Lin et al. 2023):
//!
//! `x0 = r * x0_cfg * std(x0_text) / std(x0_cfg) + (1 - r) * x0_cfg`,
//!
//! each std unbiased over all elements of one group of `num_frames` views (threestudio views
//! the batch as `[-1, n_view, C, h, w]` and takes `std([1, 2, 3, 4])`), `+ 1e-8` on both.

use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use super::ConfigError;

fn default_std_rescale() -> f64 {
    0.5
}

/// Settings of the x0-reconstruction loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconLossConfig {
    /// `r` above, in `[0, 1]` (threestudio's `recon_std_rescale`; MVDream's configs: 0.5).
    pub std_rescale: f64,
}

impl Default for ReconLossConfig {
    fn default() -> Self {
        Self {
            std_rescale: default_std_rescale(),
        }
    }
}

impl ReconLossConfig {
    /// Checks `std_rescale`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = self.std_rescale;
        if !(0.0..=1.0).contains(&r) {
            return Err(ConfigError::new(
                "std_rescale",
                format!("{r} is not a fraction in [0, 1]"),
            ));
        }
        Ok(())
    }
}

/// `x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)` (LDM's `predict_start_from_noise`).
pub fn predict_start_from_noise<B: Backend>(
    x_t: Tensor<B, 4>,
    eps: Tensor<B, 4>,
    alpha_prod: f32,
) -> Tensor<B, 4> {
    (x_t - eps * (1.0 - alpha_prod).sqrt()) / alpha_prod.sqrt()
}

/// The rescaled reconstruction target of the module docs.
///
/// # Shapes
/// - x0_cfg, x0_text: `[n, C, h, w]`, `n` a multiple of `group`; groups are consecutive rows
/// - output: `[n, C, h, w]`
pub fn rescaled_x0<B: Backend>(
    x0_cfg: Tensor<B, 4>,
    x0_text: Tensor<B, 4>,
    std_rescale: f64,
    group: usize,
) -> Tensor<B, 4> {
    if std_rescale == 0.0 {
        return x0_cfg;
    }
    let [n, c, h, w] = x0_cfg.dims();
    let group = group.max(1);
    let groups = n / group;
    let per_group = group * c * h * w;
    let std = |x: Tensor<B, 4>| {
        // [groups, 1]: unbiased, as torch.std
        let rows = x.reshape([groups, per_group]);
        let mean = rows.clone().mean_dim(1);
        let centred = rows - mean;
        (centred.powi_scalar(2).sum_dim(1) / (per_group.saturating_sub(1).max(1) as f32)).sqrt()
    };
    let factor = (std(x0_text) + 1e-8) / (std(x0_cfg.clone()) + 1e-8);
    // [n, 1, 1, 1]: each group's factor on its rows
    let factor = factor
        .reshape([groups, 1])
        .repeat_dim(1, group)
        .reshape([n, 1, 1, 1]);
    let r = std_rescale as f32;
    x0_cfg.clone() * factor * r + x0_cfg * (1.0 - r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, TensorData};

    type B = NdArray<f32>;

    fn values(t: Tensor<B, 4>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    #[test]
    fn rescale_matches_a_direct_computation_per_group() {
        let device = Default::default();
        let cfg = Tensor::<B, 4>::random([4, 2, 3, 3], Distribution::Normal(0.0, 3.0), &device);
        let text = Tensor::<B, 4>::random([4, 2, 3, 3], Distribution::Normal(0.5, 1.0), &device);
        let out = values(rescaled_x0(cfg.clone(), text.clone(), 0.5, 2));
        let (cfg, text) = (values(cfg), values(text));
        let per_group = 2 * 2 * 9;
        let std = |v: &[f32]| {
            let m = v.iter().sum::<f32>() / v.len() as f32;
            (v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / (v.len() - 1) as f32).sqrt()
        };
        for g in 0..2 {
            let range = g * per_group..(g + 1) * per_group;
            let factor = (std(&text[range.clone()]) + 1e-8) / (std(&cfg[range.clone()]) + 1e-8);
            for i in range {
                let expected = 0.5 * cfg[i] * factor + 0.5 * cfg[i];
                assert!(
                    (out[i] - expected).abs() < 1e-5,
                    "{i}: {} vs {expected}",
                    out[i]
                );
            }
        }
        // r = 1: the group's std becomes the text prediction's.
        let cfg4 = Tensor::<B, 4>::from_data(TensorData::new(cfg.clone(), [4, 2, 3, 3]), &device);
        let text4 = Tensor::<B, 4>::from_data(TensorData::new(text.clone(), [4, 2, 3, 3]), &device);
        let full = values(rescaled_x0(cfg4, text4, 1.0, 2));
        for g in 0..2 {
            let range = g * per_group..(g + 1) * per_group;
            let (a, b) = (std(&full[range.clone()]), std(&text[range]));
            assert!((a - b).abs() < 1e-4, "group {g}: {a} vs {b}");
        }
    }

    #[test]
    fn x0_from_noise_inverts_the_forward_process() {
        let device = Default::default();
        let x0 = Tensor::<B, 4>::random([2, 1, 2, 2], Distribution::Default, &device);
        let eps = Tensor::<B, 4>::random([2, 1, 2, 2], Distribution::Default, &device);
        let abar = 0.3f32;
        let x_t = x0.clone() * abar.sqrt() + eps.clone() * (1.0 - abar).sqrt();
        let back = values(predict_start_from_noise(x_t, eps, abar));
        for (a, b) in back.iter().zip(values(x0)) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn std_rescale_outside_0_1_is_named() {
        let e = ReconLossConfig { std_rescale: 1.5 }.validate().unwrap_err();
        assert!(e.to_string().contains("std_rescale"), "{e}");
    }
}
