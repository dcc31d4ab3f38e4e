//! The settings of score distillation: [`GuidanceConfig`] (CFG, timestep range, `w(t)`,
//! view-dependent prompts) and [`RewardSdsConfig`], each with a `validate` that names the
//! field at fault. What they drive is [`super::sds::Guidance`].

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::ism::IsmConfig;
use super::prompts::ViewThresholds;
use super::recon::ReconLossConfig;
use super::reward_feedback::RewardFeedbackConfig;
use super::scoring::ScoringMode;
use super::vsd::VsdConfig;
use super::weighting::WeightStrategy;

/// A fraction of the training timesteps, annealed linearly from `start` (step 0) to `end`
/// (step `anneal_steps` and after), as threestudio's `[0, start, end, anneal_steps]`
/// schedules. In configs either a number (constant) or `{"start": .., "end": ..}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "AnnealedRepr")]
pub struct AnnealedFraction {
    /// Value at step 0.
    pub start: f64,
    /// Value from step `anneal_steps` on.
    pub end: f64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AnnealedRepr {
    Constant(f64),
    Range { start: f64, end: f64 },
}

impl From<AnnealedRepr> for AnnealedFraction {
    fn from(repr: AnnealedRepr) -> Self {
        match repr {
            AnnealedRepr::Constant(v) => Self::constant(v),
            AnnealedRepr::Range { start, end } => Self { start, end },
        }
    }
}

impl AnnealedFraction {
    /// The same value at every step.
    pub fn constant(value: f64) -> Self {
        Self {
            start: value,
            end: value,
        }
    }

    /// From `start` to `end`.
    pub fn linear(start: f64, end: f64) -> Self {
        Self { start, end }
    }

    /// The value at `step` (threestudio's `C()`: `start + (end - start) * clamp(step /
    /// anneal_steps, 0, 1)`, in `f64` like Python; `anneal_steps = 0` means `end` throughout).
    pub fn at(&self, step: usize, anneal_steps: usize) -> f64 {
        if anneal_steps == 0 {
            return self.end;
        }
        let progress = (step as f64 / anneal_steps as f64).clamp(0.0, 1.0);
        self.start + (self.end - self.start) * progress
    }
}

/// `w(t)`, the per-timestep weight of the SDS gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeWeighting {
    /// `w(t) = 1 - abar_t` (threestudio's `"sds"`, DreamFusion's `sigma_t^2`).
    #[default]
    Sds,
    /// `w(t) = 1`.
    Uniform,
}

fn default_n_samples() -> usize {
    4
}
fn default_reward_duration() -> f64 {
    1.0
}

/// RewardSDS settings: how many noises, how they are scored and weighted, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardSdsConfig {
    /// Noise samples `N` per step (4; the paper uses 4-8 in 2D, 7 for 3D with MVDream).
    pub n_samples: usize,
    /// Reward-to-weight map (`min_max` with k = 2, 0.9 / 0.1: the official default).
    pub strategy: WeightStrategy,
    /// How samples are denoised for scoring (`ddim`: the official grid).
    pub scoring: ScoringMode,
    /// Fraction of the steps, in (0, 1], that use rewards; later steps are plain
    /// single-noise SDS (1.0; the official 3D config uses 0.7).
    pub reward_duration: f64,
    /// CFG scale of the scoring passes; `None` = `guidance_scale` (the official 3D code; its
    /// 2D code denoises with 7.5).
    pub scoring_guidance_scale: Option<f32>,
}

impl Default for RewardSdsConfig {
    fn default() -> Self {
        Self {
            n_samples: default_n_samples(),
            strategy: WeightStrategy::default(),
            scoring: ScoringMode::default(),
            reward_duration: default_reward_duration(),
            scoring_guidance_scale: None,
        }
    }
}

impl RewardSdsConfig {
    /// Checks every field; errors name it (`n_samples`, `strategy.k`, `reward_duration`, ...).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.n_samples == 0 {
            return Err(ConfigError::new("n_samples", "must be at least 1"));
        }
        self.strategy
            .validate(self.n_samples)
            .map_err(|e| e.within("strategy"))?;
        let d = self.reward_duration;
        if !(d > 0.0 && d <= 1.0) {
            return Err(ConfigError::new(
                "reward_duration",
                format!("{d} is not in (0, 1]"),
            ));
        }
        if let Some(s) = self.scoring_guidance_scale
            && !(s.is_finite() && s >= 0.0)
        {
            return Err(ConfigError::new(
                "scoring_guidance_scale",
                format!("{s} is not a finite number >= 0"),
            ));
        }
        Ok(())
    }
}

/// SDS / RewardSDS settings. Defaults are threestudio's DreamFusion-style SD baseline
/// (CFG 100, `t` in [0.02, 0.98], `w(t) = 1 - abar_t`, view-dependent prompts) with rewards off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuidanceConfig {
    /// Classifier-free guidance scale `s` (100), at step 0.
    pub guidance_scale: f32,
    /// CFG scale at the last step, reached linearly from `guidance_scale`; `None` (the
    /// default here, and the `quality` preset's): constant; the `fast` preset's: 1.5. A high
    /// scale forms the objects, a low one keeps their shaded faces (docs/tiny_world.md, "SDS
    /// from the true scene").
    pub guidance_scale_end: Option<f32>,
    /// Weight of SDS's generative term `eps_uncond - eps` beside the classifier term
    /// `s (eps_cond - eps_uncond)` (1: SDS; 0: classifier score distillation, CSD, arXiv
    /// 2310.19415, whose gradient carries no sampled noise). Under ISM `eps` is its target.
    /// With Adam, weight `w` at CFG `s` steps as SDS at CFG `s / w` (Adam ignores a constant
    /// scale); docs/tiny_world.md, "Classifier score distillation".
    pub generative_weight: f32,
    /// Share of the steps, from step 0, run as CSD (generative weight 0) before
    /// `generative_weight` applies (0: none): the classifier term alone sets the binding,
    /// the generative term then cleans up the haze it leaves.
    pub csd_fraction: f32,
    /// Prompt of CFG's unconditional branch (`""`).
    pub negative_prompt: String,
    /// Lower end of the timestep range as a fraction of `T` (0.02).
    pub t_min: AnnealedFraction,
    /// Upper end of the timestep range as a fraction of `T` (0.98).
    pub t_max: AnnealedFraction,
    /// Steps over which `t_min` and `t_max` go from `start` to `end` (0: `end` throughout).
    pub anneal_steps: usize,
    /// `w(t)` (`sds`).
    pub weighting: TimeWeighting,
    /// Condition each view on `"<prompt>, front view"` etc. (true).
    pub view_dependent_prompting: bool,
    /// Angles of the view-dependent prompts (threestudio's 45 / 45 / 60 degrees).
    pub view_thresholds: ViewThresholds,
    /// Samples per UNet pass and per decode/reward call, to bound memory (16).
    pub max_batch: usize,
    /// RewardSDS; `None` is plain SDS.
    pub reward: Option<RewardSdsConfig>,
    /// The reward's own gradient added to the loss ([`super::reward_feedback`]); `None`
    /// (the default) is the paper's RewardSDS. Needs a model attached with
    /// [`super::Guidance::set_reward_feedback`].
    pub reward_feedback: Option<RewardFeedbackConfig>,
    /// Interval score matching ([`super::ism`]): `x_t` by DDIM inversion and the prior's
    /// prediction at `x_s` as the target, instead of a random noise; `None` (the default) is
    /// SDS's random noise. With RewardSDS the `N` samples differ only in the inversion's
    /// starting noise.
    pub ism: Option<IsmConfig>,
    /// MVDream's x0-reconstruction loss ([`super::recon`]): the gradient `z - x0_hat` (CFG
    /// std-rescaled per view group) instead of `w(t) (eps_cfg - eps)`; `None` (the default)
    /// is SDS's. The official MVDream and RewardSDS 3D configs set it with `std_rescale` 0.5.
    pub recon_loss: Option<ReconLossConfig>,
    /// Variational score distillation ([`super::vsd`]): a LoRA of the prior, trained on the
    /// renders every step, replaces SDS's sampled noise (`w(t) (eps_cfg - eps_lora)`); with
    /// `reward` set, RewardVSD. `None` (the default) is SDS. The official 2D `vsd` mode pairs
    /// it with CFG 7.5.
    pub vsd: Option<VsdConfig>,
}

impl Default for GuidanceConfig {
    fn default() -> Self {
        Self {
            guidance_scale: 100.0,
            guidance_scale_end: None,
            generative_weight: 1.0,
            csd_fraction: 0.0,
            negative_prompt: String::new(),
            t_min: AnnealedFraction::constant(0.02),
            t_max: AnnealedFraction::constant(0.98),
            anneal_steps: 0,
            weighting: TimeWeighting::Sds,
            view_dependent_prompting: true,
            view_thresholds: ViewThresholds::default(),
            max_batch: 16,
            reward: None,
            reward_feedback: None,
            ism: None,
            recon_loss: None,
            vsd: None,
        }
    }
}

impl GuidanceConfig {
    /// The timesteps `[lo, hi]` a step draws from, of `num_train_timesteps`:
    /// `int(T * fraction)` of the annealed `t_min` and `t_max`, at most `T - 1`.
    pub fn timestep_range(&self, step: usize, num_train_timesteps: usize) -> [usize; 2] {
        let at = |f: &AnnealedFraction| {
            let v = (num_train_timesteps as f64 * f.at(step, self.anneal_steps)) as usize;
            v.min(num_train_timesteps.saturating_sub(1))
        };
        [at(&self.t_min), at(&self.t_max)]
    }

    /// Checks every field; errors name it (`guidance_scale`, `t_min`, `reward.strategy.k`, ...).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, s) in [
            ("guidance_scale", Some(self.guidance_scale)),
            ("guidance_scale_end", self.guidance_scale_end),
            ("generative_weight", Some(self.generative_weight)),
        ] {
            if let Some(s) = s
                && !(s.is_finite() && s >= 0.0)
            {
                return Err(ConfigError::new(
                    field,
                    format!("{s} is not a finite number >= 0"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.csd_fraction) {
            return Err(ConfigError::new(
                "csd_fraction",
                format!("{} is not a fraction in [0, 1]", self.csd_fraction),
            ));
        }
        for (name, f) in [("t_min", self.t_min), ("t_max", self.t_max)] {
            for (end, v) in [("start", f.start), ("end", f.end)] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(ConfigError::new(
                        format!("{name}.{end}"),
                        format!("{v} is not a fraction in [0, 1]"),
                    ));
                }
            }
        }
        // Both ends ordered keeps every linear interpolation between them ordered.
        for (end, lo, hi) in [
            ("start", self.t_min.start, self.t_max.start),
            ("end", self.t_min.end, self.t_max.end),
        ] {
            if lo > hi {
                return Err(ConfigError::new(
                    "t_min",
                    format!("t_min.{end} = {lo} is above t_max.{end} = {hi}"),
                ));
            }
        }
        let annealed = self.t_min.start != self.t_min.end || self.t_max.start != self.t_max.end;
        if annealed && self.anneal_steps == 0 {
            return Err(ConfigError::new(
                "anneal_steps",
                "is 0 but t_min or t_max has different start and end values: set the steps to \
                 anneal over",
            ));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::new("max_batch", "must be at least 1"));
        }
        let v = &self.view_thresholds;
        for (field, x) in [
            ("front_threshold", v.front_threshold),
            ("back_threshold", v.back_threshold),
            ("overhead_threshold", v.overhead_threshold),
        ] {
            if !x.is_finite() {
                return Err(ConfigError::new(
                    format!("view_thresholds.{field}"),
                    format!("{x} is not finite"),
                ));
            }
        }
        if let Some(reward) = &self.reward {
            reward.validate().map_err(|e| e.within("reward"))?;
        }
        if let Some(feedback) = &self.reward_feedback {
            feedback
                .validate()
                .map_err(|e| e.within("reward_feedback"))?;
        }
        if let Some(ism) = &self.ism {
            ism.validate().map_err(|e| e.within("ism"))?;
        }
        if let Some(recon) = &self.recon_loss {
            recon.validate().map_err(|e| e.within("recon_loss"))?;
            if self.ism.is_some() {
                return Err(ConfigError::new(
                    "recon_loss",
                    "and ism both replace SDS's target: choose one",
                ));
            }
            if self.generative_weight != 1.0 || self.csd_fraction > 0.0 {
                return Err(ConfigError::new(
                    "recon_loss",
                    "reconstructs x0 from the full CFG prediction: it needs generative_weight \
                     1 and csd_fraction 0",
                ));
            }
        }
        if let Some(vsd) = &self.vsd {
            vsd.validate().map_err(|e| e.within("vsd"))?;
            let clash = if self.ism.is_some() {
                Some("ism")
            } else if self.recon_loss.is_some() {
                Some("recon_loss")
            } else if self.generative_weight != 1.0 || self.csd_fraction > 0.0 {
                Some("generative_weight below 1 (or csd_fraction)")
            } else {
                None
            };
            if let Some(other) = clash {
                return Err(ConfigError::new(
                    "vsd",
                    format!("and {other} both replace SDS's noise term: choose one"),
                ));
            }
        }
        Ok(())
    }

    /// Whether the settings that use a reward model have one: `reward` is the host config's
    /// reward spec (a folder or preset name). The error names `reward`.
    pub fn check_reward_model(&self, reward: Option<&str>) -> Result<(), ConfigError> {
        if reward.is_some() {
            return Ok(());
        }
        if self
            .reward
            .as_ref()
            .is_some_and(|r| r.strategy.uses_rewards())
        {
            return Err(ConfigError::new(
                "reward",
                "RewardSDS ranks samples by reward: name a reward model (e.g. tiny-world-reward)",
            ));
        }
        if self.reward_feedback.is_some() {
            return Err(ConfigError::new(
                "reward",
                "guidance.reward_feedback differentiates a reward: name a reward model (e.g. \
                 tiny-world-reward)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annealing_is_threestudios() {
        let f = AnnealedFraction::linear(0.98, 0.02);
        assert_eq!(f.at(0, 8000), 0.98);
        assert_eq!(f.at(4000, 8000), 0.5);
        // Python's arithmetic too: 0.98 + (0.02 - 0.98) * 1.0 = 0.020000000000000018.
        assert_eq!(f.at(8000, 8000), 0.98 + (0.02 - 0.98));
        assert_eq!((1000.0 * f.at(9000, 8000)) as usize, 20);
        assert_eq!(f.at(5, 0), 0.02);
        // Python: int(1000 * 0.02) = 20, int(1000 * 0.98) = 980.
        assert_eq!(
            (1000.0 * AnnealedFraction::constant(0.02).at(0, 0)) as usize,
            20
        );
        assert_eq!(
            (1000.0 * AnnealedFraction::constant(0.98).at(0, 0)) as usize,
            980
        );
    }

    #[test]
    fn config_defaults_and_serde() {
        let c: GuidanceConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, GuidanceConfig::default());
        c.validate().unwrap();
        let c: GuidanceConfig = serde_json::from_str(
            r#"{"guidance_scale": 50, "t_min": {"start": 0.98, "end": 0.02},
                "t_max": {"start": 0.98, "end": 0.5}, "anneal_steps": 8000,
                "weighting": "uniform",
                "reward": {"n_samples": 7, "strategy": {"type": "min_max"},
                           "scoring": "one_step", "reward_duration": 0.7}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.t_max, AnnealedFraction::linear(0.98, 0.5));
        assert_eq!(c.weighting, TimeWeighting::Uniform);
        let r = c.reward.as_ref().unwrap();
        assert_eq!((r.n_samples, r.scoring), (7, ScoringMode::OneStep));
        assert_eq!(r.strategy, WeightStrategy::default());
        let back: GuidanceConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<GuidanceConfig>(r#"{"cfg": 3}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let field = |c: GuidanceConfig| c.validate().unwrap_err().field;
        let reward = |r: RewardSdsConfig| GuidanceConfig {
            reward: Some(r),
            ..GuidanceConfig::default()
        };
        assert_eq!(
            field(GuidanceConfig {
                guidance_scale: -1.0,
                ..Default::default()
            }),
            "guidance_scale"
        );
        assert_eq!(
            field(GuidanceConfig {
                t_min: AnnealedFraction::constant(0.9),
                t_max: AnnealedFraction::constant(0.5),
                ..Default::default()
            }),
            "t_min"
        );
        assert_eq!(
            field(GuidanceConfig {
                t_max: AnnealedFraction::linear(0.98, 1.5),
                ..Default::default()
            }),
            "t_max.end"
        );
        assert_eq!(
            field(GuidanceConfig {
                t_max: AnnealedFraction::linear(0.98, 0.5),
                ..Default::default()
            }),
            "anneal_steps"
        );
        assert_eq!(
            field(reward(RewardSdsConfig {
                n_samples: 3,
                ..Default::default()
            })),
            "reward.strategy.k"
        );
        for d in [0.0, 1.5, f64::NAN] {
            assert_eq!(
                field(reward(RewardSdsConfig {
                    reward_duration: d,
                    ..Default::default()
                })),
                "reward.reward_duration"
            );
        }
        assert_eq!(
            field(reward(RewardSdsConfig {
                n_samples: 0,
                ..Default::default()
            })),
            "reward.n_samples"
        );
        let e = GuidanceConfig {
            t_min: AnnealedFraction::constant(0.9),
            t_max: AnnealedFraction::constant(0.5),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("t_max.start = 0.5"), "{e}");
    }
}
