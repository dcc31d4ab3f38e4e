//! Adam for Gaussians, one learning rate per attribute, with state that follows densification.
//! Hand-written (a few tensor ops) because burn's optimisers key their state by parameter id
//! and shape, which clone/split/prune change every few hundred steps.

use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use super::Gaussians;

/// Learning rates per attribute. Defaults are DreamGaussian's: position 1e-3 decaying
/// log-linearly to 2e-5, colour 0.01 (higher SH degrees 1/20 of it), opacity 0.05, scale and
/// rotation 0.005.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GaussianLearningRates {
    /// Position, at step 0.
    pub means: f32,
    /// Position, from `means_decay_steps` on.
    pub means_final: f32,
    /// Steps over which the position rate decays.
    pub means_decay_steps: usize,
    /// Log-scales.
    pub log_scales: f32,
    /// Rotations.
    pub rotations: f32,
    /// Opacity logits.
    pub opacity_logits: f32,
    /// Degree-0 colour.
    pub sh_dc: f32,
    /// Higher-degree colour.
    pub sh_rest: f32,
}

impl Default for GaussianLearningRates {
    fn default() -> Self {
        Self {
            means: 1e-3,
            means_final: 2e-5,
            means_decay_steps: 500,
            log_scales: 5e-3,
            rotations: 5e-3,
            opacity_logits: 0.05,
            sh_dc: 0.01,
            sh_rest: 0.01 / 20.0,
        }
    }
}

impl GaussianLearningRates {
    /// The position rate at `step` (3DGS's exponential schedule).
    pub fn means_at(&self, step: usize) -> f32 {
        let s = (step as f32 / self.means_decay_steps.max(1) as f32).clamp(0.0, 1.0);
        (self.means.max(1e-12).ln() * (1.0 - s) + self.means_final.max(1e-12).ln() * s).exp()
    }

    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("means", self.means),
            ("means_final", self.means_final),
            ("log_scales", self.log_scales),
            ("rotations", self.rotations),
            ("opacity_logits", self.opacity_logits),
            ("sh_dc", self.sh_dc),
            ("sh_rest", self.sh_rest),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(format!(
                    "learning rate {name} = {v} must be finite and >= 0"
                ));
            }
        }
        Ok(())
    }
}

/// Adam moments for every Gaussian, shaped like the parameters.
#[derive(Debug, Clone)]
pub struct GaussianAdam<B: Backend> {
    /// The rates.
    pub rates: GaussianLearningRates,
    /// Adam's (beta1, beta2).
    pub betas: [f32; 2],
    /// Adam's epsilon (3DGS: 1e-15).
    pub eps: f32,
    first: Gaussians<B>,
    second: Gaussians<B>,
    step: usize,
}

fn zeros<B: Backend>(g: &Gaussians<B>) -> Gaussians<B> {
    Gaussians {
        means: g.means.zeros_like(),
        log_scales: g.log_scales.zeros_like(),
        rotations: g.rotations.zeros_like(),
        opacity_logits: g.opacity_logits.zeros_like(),
        sh_dc: g.sh_dc.zeros_like(),
        sh_rest: g.sh_rest.as_ref().map(|t| t.zeros_like()),
    }
}

impl<B: Backend> GaussianAdam<B> {
    /// Fresh moments for `params`.
    pub fn new(rates: GaussianLearningRates, params: &Gaussians<B>) -> Self {
        Self {
            rates,
            betas: [0.9, 0.999],
            eps: 1e-15,
            first: zeros(params),
            second: zeros(params),
            step: 0,
        }
    }

    /// Updates taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// The first and second moments (PyTorch's `exp_avg` and `exp_avg_sq`), shaped like the
    /// parameters: with [`steps`](Self::steps), the state a checkpoint keeps.
    pub(crate) fn moments(&self) -> [&Gaussians<B>; 2] {
        [&self.first, &self.second]
    }

    /// These rates with the state [`moments`](Self::moments) and [`steps`](Self::steps)
    /// returned (a resumed run); the caller checks that the moments fit the parameters.
    pub(crate) fn with_state(self, first: Gaussians<B>, second: Gaussians<B>, step: usize) -> Self {
        Self {
            first,
            second,
            step,
            ..self
        }
    }

    /// One update of every attribute with its own rate.
    pub fn step(&mut self, params: Gaussians<B>, grads: Gaussians<B>) -> Gaussians<B> {
        let [b1, b2] = self.betas;
        let lr_means = self.rates.means_at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let eps = self.eps;
        fn update<B: Backend, const D: usize>(
            p: Tensor<B, D>,
            g: Tensor<B, D>,
            m: &mut Tensor<B, D>,
            v: &mut Tensor<B, D>,
            lr: f32,
            [b1, b2, c1, c2, eps]: [f32; 5],
        ) -> Tensor<B, D> {
            *m = m.clone().mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1);
            *v = v.clone().mul_scalar(b2) + (g.clone() * g).mul_scalar(1.0 - b2);
            let step = m.clone().div_scalar(c1) / (v.clone().div_scalar(c2).sqrt().add_scalar(eps));
            p - step.mul_scalar(lr)
        }
        let k = [b1, b2, c1, c2, eps];
        let (m, v, r) = (&mut self.first, &mut self.second, &self.rates);
        Gaussians {
            means: update(
                params.means,
                grads.means,
                &mut m.means,
                &mut v.means,
                lr_means,
                k,
            ),
            log_scales: update(
                params.log_scales,
                grads.log_scales,
                &mut m.log_scales,
                &mut v.log_scales,
                r.log_scales,
                k,
            ),
            rotations: update(
                params.rotations,
                grads.rotations,
                &mut m.rotations,
                &mut v.rotations,
                r.rotations,
                k,
            ),
            opacity_logits: update(
                params.opacity_logits,
                grads.opacity_logits,
                &mut m.opacity_logits,
                &mut v.opacity_logits,
                r.opacity_logits,
                k,
            ),
            sh_dc: update(
                params.sh_dc,
                grads.sh_dc,
                &mut m.sh_dc,
                &mut v.sh_dc,
                r.sh_dc,
                k,
            ),
            sh_rest: match (
                params.sh_rest,
                grads.sh_rest,
                &mut m.sh_rest,
                &mut v.sh_rest,
            ) {
                (Some(p), Some(g), Some(mm), Some(vv)) => Some(update(p, g, mm, vv, r.sh_rest, k)),
                (p, _, _, _) => p,
            },
        }
    }

    /// Keeps the moments of the Gaussians at `indices` (densification's clone/split/prune),
    /// then appends zero moments for `added` new ones.
    pub fn remap(&mut self, indices: &[usize], added: &Gaussians<B>) {
        self.first = self.first.select(indices).concat(zeros(added));
        self.second = self.second.select(indices).concat(zeros(added));
    }

    /// Zeroes the opacity moments (after an opacity reset, as 3DGS does).
    pub fn reset_opacity(&mut self) {
        self.first.opacity_logits = self.first.opacity_logits.zeros_like();
        self.second.opacity_logits = self.second.opacity_logits.zeros_like();
    }
}
