//! RewardSDS's map from the rewards of the `N` noise samples to their weights `w_i` in
//! `g = sum_i w_i w(t) (eps_cfg_i - eps_i)` (step 3 of the algorithm; the official code's
//! `reward_strategy.py`).
//!
//! Ranking is deterministic: samples are ordered by reward, highest first, and equal rewards
//! keep their sample order (the lower index ranks higher). A NaN reward ranks below every
//! number and gets weight 0 under `softmax`.

use serde::{Deserialize, Serialize};

use super::ConfigError;

fn two() -> usize {
    2
}
fn one() -> usize {
    1
}
fn lambda_max() -> f32 {
    0.9
}
fn lambda_min() -> f32 {
    0.1
}
fn tau() -> f32 {
    1.0
}

/// How rewards become weights. Written in configs as `{"type": "min_max", "k": 2}`; fields
/// left out take the defaults below.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WeightStrategy {
    /// The official default and the paper's best: the top `k` samples get `+lambda_max / k`
    /// each, the bottom `k` get `-lambda_min / k` each, the rest 0 (pushes towards the best
    /// noises and away from the worst). Needs `N >= 2k`.
    MinMax {
        /// Samples rewarded and samples penalised (default 2).
        #[serde(default = "two")]
        k: usize,
        /// Total weight of the top `k` (default 0.9).
        #[serde(default = "lambda_max")]
        lambda_max: f32,
        /// Total (negative) weight of the bottom `k` (default 0.1).
        #[serde(default = "lambda_min")]
        lambda_min: f32,
    },
    /// `w_i = exp(r_i / tau) / sum_j exp(r_j / tau)`.
    Softmax {
        /// Temperature (default 1).
        #[serde(default = "tau")]
        tau: f32,
    },
    /// The top `k` samples share weight 1 (`1 / k` each), the rest 0.
    Best {
        /// Samples kept (default 1).
        #[serde(default = "one")]
        k: usize,
    },
    /// `w_i = 1 / N`: SDS averaged over `N` noises, the ablation baseline (rewards unused).
    Uniform,
}

impl Default for WeightStrategy {
    fn default() -> Self {
        Self::MinMax {
            k: two(),
            lambda_max: lambda_max(),
            lambda_min: lambda_min(),
        }
    }
}

impl WeightStrategy {
    /// The config name (`min_max`, `softmax`, `best`, `uniform`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::MinMax { .. } => "min_max",
            Self::Softmax { .. } => "softmax",
            Self::Best { .. } => "best",
            Self::Uniform => "uniform",
        }
    }

    /// Checks the strategy can weight `n` samples; the error names the strategy's field
    /// (`k`, `tau`, ...) or `n_samples`.
    pub fn validate(&self, n: usize) -> Result<(), ConfigError> {
        if n == 0 {
            return Err(ConfigError::new("n_samples", "must be at least 1"));
        }
        match *self {
            Self::MinMax {
                k,
                lambda_max,
                lambda_min,
            } => {
                if k == 0 {
                    return Err(ConfigError::new("k", "min_max needs k >= 1"));
                }
                if n < 2 * k {
                    return Err(ConfigError::new(
                        "k",
                        format!("min_max needs n_samples >= 2k, got n_samples = {n}, k = {k}"),
                    ));
                }
                for (field, v) in [("lambda_max", lambda_max), ("lambda_min", lambda_min)] {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(ConfigError::new(
                            field,
                            format!("{v} is not a finite number >= 0"),
                        ));
                    }
                }
            }
            Self::Softmax { tau } => {
                if !(tau.is_finite() && tau > 0.0) {
                    return Err(ConfigError::new(
                        "tau",
                        format!("{tau} is not a finite number > 0"),
                    ));
                }
            }
            Self::Best { k } => {
                if k == 0 || k > n {
                    return Err(ConfigError::new(
                        "k",
                        format!("best needs 1 <= k <= n_samples, got k = {k}, n_samples = {n}"),
                    ));
                }
            }
            Self::Uniform => {}
        }
        Ok(())
    }

    /// Whether the weights depend on the rewards (all but `uniform`).
    pub fn uses_rewards(&self) -> bool {
        !matches!(self, Self::Uniform)
    }

    /// The weight of each sample, in sample order.
    ///
    /// # Panics
    /// If [`validate`](Self::validate) fails for `rewards.len()` (a programming error: configs
    /// are validated when the guidance is built).
    pub fn weights(&self, rewards: &[f32]) -> Vec<f32> {
        let n = rewards.len();
        if let Err(e) = self.validate(n) {
            panic!("weights for {n} samples: {e}");
        }
        let mut w = vec![0.0f32; n];
        match *self {
            Self::MinMax {
                k,
                lambda_max,
                lambda_min,
            } => {
                let order = ranking(rewards);
                for &i in &order[..k] {
                    w[i] = lambda_max / k as f32;
                }
                for &i in &order[n - k..] {
                    w[i] = -lambda_min / k as f32;
                }
            }
            Self::Softmax { tau } => {
                let logits: Vec<f32> = rewards.iter().map(|&r| rank_key(r) / tau).collect();
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if max == f32::NEG_INFINITY || max.is_nan() {
                    // No usable reward at all: nothing to prefer.
                    w.fill(1.0 / n as f32);
                } else {
                    // Shifted by the max so exp never overflows; exp(-inf) = 0 drops NaNs.
                    let e: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    for (wi, ei) in w.iter_mut().zip(e) {
                        *wi = ei / sum;
                    }
                }
            }
            Self::Best { k } => {
                for &i in &ranking(rewards)[..k] {
                    w[i] = 1.0 / k as f32;
                }
            }
            Self::Uniform => w.fill(1.0 / n as f32),
        }
        w
    }
}

/// NaN ranks below every number.
fn rank_key(r: f32) -> f32 {
    if r.is_nan() { f32::NEG_INFINITY } else { r }
}

/// Sample indices by reward, highest first; equal rewards keep index order (stable sort).
pub fn ranking(rewards: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rewards.len()).collect();
    order.sort_by(|&a, &b| {
        rank_key(rewards[b])
            .partial_cmp(&rank_key(rewards[a]))
            .expect("no NaN after rank_key")
    });
    order
}

/// The samples that contribute to the gradient (non-zero weight), in sample order.
pub fn selected(weights: &[f32]) -> Vec<usize> {
    (0..weights.len()).filter(|&i| weights[i] != 0.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_defaults_weight_the_right_samples() {
        let w = WeightStrategy::default().weights(&[0.3, 0.9, -1.0, 0.5]);
        // Ranking: 1 (0.9), 3 (0.5), 0 (0.3), 2 (-1.0).
        assert_eq!(w, vec![-0.05, 0.45, -0.05, 0.45]);
        assert_eq!(selected(&w), vec![0, 1, 2, 3]);
        let w = WeightStrategy::default().weights(&[5.0, 4.0, 3.0, 2.0, 1.0]);
        assert_eq!(w, vec![0.45, 0.45, 0.0, -0.05, -0.05]);
        assert_eq!(selected(&w), vec![0, 1, 3, 4]);
    }

    #[test]
    fn ties_and_nans_rank_deterministically() {
        assert_eq!(ranking(&[1.0, 2.0, 1.0, 2.0]), vec![1, 3, 0, 2]);
        assert_eq!(ranking(&[f32::NAN, 0.0, -0.0, -5.0]), vec![1, 2, 3, 0]);
        let w = WeightStrategy::default().weights(&[1.0; 4]);
        assert_eq!(w, vec![0.45, 0.45, -0.05, -0.05]);
        let w = WeightStrategy::Softmax { tau: 1.0 }.weights(&[f32::NAN, 0.0]);
        assert_eq!(w, vec![0.0, 1.0]);
        let w = WeightStrategy::Softmax { tau: 1.0 }.weights(&[f32::NAN; 2]);
        assert_eq!(w, vec![0.5, 0.5]);
    }

    #[test]
    fn softmax_sums_to_one_and_is_monotone() {
        let rewards = [0.2, -1.0, 3.0, 0.7, 0.7, 100.0];
        for tau in [0.1, 1.0, 10.0] {
            let w = WeightStrategy::Softmax { tau }.weights(&rewards);
            let sum: f32 = w.iter().sum();
            assert!((sum - 1.0).abs() < 1e-6, "tau {tau}: sum {sum}");
            for i in 0..rewards.len() {
                for j in 0..rewards.len() {
                    if rewards[i] > rewards[j] {
                        assert!(w[i] >= w[j], "tau {tau}: w{i} {} < w{j} {}", w[i], w[j]);
                    }
                }
            }
            assert_eq!(w[3], w[4]);
        }
    }

    #[test]
    fn best_and_uniform() {
        let w = WeightStrategy::Best { k: 1 }.weights(&[0.1, 0.4, 0.4, -2.0]);
        assert_eq!(w, vec![0.0, 1.0, 0.0, 0.0]);
        let w = WeightStrategy::Best { k: 2 }.weights(&[0.1, 0.4, 0.4, -2.0]);
        assert_eq!(w, vec![0.0, 0.5, 0.5, 0.0]);
        assert_eq!(WeightStrategy::Uniform.weights(&[3.0; 4]), vec![0.25; 4]);
        assert_eq!(WeightStrategy::Uniform.weights(&[3.0]), vec![1.0]);
    }

    #[test]
    fn validation_names_the_field() {
        let e = WeightStrategy::default().validate(3).unwrap_err();
        assert_eq!(e.field, "k");
        assert!(e.reason.contains("n_samples >= 2k"), "{e}");
        let e = WeightStrategy::Softmax { tau: 0.0 }
            .validate(4)
            .unwrap_err();
        assert_eq!(e.field, "tau");
        let e = WeightStrategy::Best { k: 5 }.validate(4).unwrap_err();
        assert_eq!(e.field, "k");
        let e = WeightStrategy::MinMax {
            k: 1,
            lambda_max: -1.0,
            lambda_min: 0.1,
        }
        .validate(4)
        .unwrap_err();
        assert_eq!(e.field, "lambda_max");
        assert_eq!(
            WeightStrategy::Uniform.validate(0).unwrap_err().field,
            "n_samples"
        );
        WeightStrategy::default().validate(4).unwrap();
    }

    #[test]
    fn serde_names_and_defaults() {
        let s: WeightStrategy = serde_json::from_str(r#"{"type": "min_max"}"#).unwrap();
        assert_eq!(s, WeightStrategy::default());
        let s: WeightStrategy = serde_json::from_str(r#"{"type": "best", "k": 3}"#).unwrap();
        assert_eq!(s, WeightStrategy::Best { k: 3 });
        let s: WeightStrategy = serde_json::from_str(r#"{"type": "softmax"}"#).unwrap();
        assert_eq!(s, WeightStrategy::Softmax { tau: 1.0 });
        let s: WeightStrategy = serde_json::from_str(r#"{"type": "uniform"}"#).unwrap();
        assert_eq!(s, WeightStrategy::Uniform);
        assert!(serde_json::from_str::<WeightStrategy>(r#"{"type": "best", "n": 3}"#).is_err());
        let json = serde_json::to_string(&WeightStrategy::default()).unwrap();
        assert!(json.contains(r#""type":"min_max""#), "{json}");
    }
}
