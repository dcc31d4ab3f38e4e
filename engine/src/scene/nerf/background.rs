//! What a ray sees when it leaves the object: a solid colour, or a small MLP on the view
//! direction (threestudio's "neural environment map"), which SDS needs so the prior's
//! preferred backdrop does not get painted onto the object.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::tensor::{Tensor, activation::sigmoid, backend::Backend};
use serde::{Deserialize, Serialize};

/// Which background model to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundKind {
    /// A fixed colour (`BackgroundConfig::color`).
    Solid,
    /// `sigmoid(MLP(direction))`, learnt.
    Mlp,
}

/// Background settings. Fields missing from a saved config take their defaults (configs
/// written before a field existed still load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackgroundConfig {
    /// Solid or learnt (default learnt).
    pub kind: BackgroundKind,
    /// Colour for `Solid`, linear RGB in [0, 1] (default white).
    pub color: [f32; 3],
    /// Hidden width of the MLP (default 16).
    pub hidden: usize,
    /// Share of training steps whose views each show a random solid colour instead of this
    /// background (threestudio's `random_aug`, `random_aug_prob`): the object cannot lean on
    /// one backdrop. 0 (the default) turns it off; renders outside training never use it.
    pub random_aug_probability: f32,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        Self {
            kind: BackgroundKind::Mlp,
            color: [1.0, 1.0, 1.0],
            hidden: 16,
            random_aug_probability: 0.0,
        }
    }
}

impl BackgroundConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `kind`.
    pub fn with_kind(self, kind: BackgroundKind) -> Self {
        Self { kind, ..self }
    }

    /// With `color`.
    pub fn with_color(self, color: [f32; 3]) -> Self {
        Self { color, ..self }
    }

    /// With `hidden`.
    pub fn with_hidden(self, hidden: usize) -> Self {
        Self { hidden, ..self }
    }

    /// With `random_aug_probability`.
    pub fn with_random_aug_probability(self, random_aug_probability: f32) -> Self {
        Self {
            random_aug_probability,
            ..self
        }
    }

    /// Checks the settings; the message names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        let p = self.random_aug_probability;
        if !(0.0..=1.0).contains(&p) {
            return Err(format!(
                "nerf.background.random_aug_probability {p} must be in [0, 1]"
            ));
        }
        Ok(())
    }

    /// Per-ray background colours for one training step's views of `pixels_per_view` rays
    /// each, drawn from `seed`: with probability `random_aug_probability` every view gets
    /// its own uniform random colour, else `None` (the scene's background).
    pub fn random_aug(&self, views: usize, pixels_per_view: usize, seed: u64) -> Option<Vec<f32>> {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        if self.random_aug_probability <= 0.0 || rng.random::<f32>() >= self.random_aug_probability
        {
            return None;
        }
        let mut colors = Vec::with_capacity(views * pixels_per_view * 3);
        for _ in 0..views {
            let color: [f32; 3] = [rng.random(), rng.random(), rng.random()];
            for _ in 0..pixels_per_view {
                colors.extend_from_slice(&color);
            }
        }
        Some(colors)
    }

    /// Builds the background.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Background<B> {
        let mlp = match self.kind {
            BackgroundKind::Solid => None,
            BackgroundKind::Mlp => Some(BackgroundMlp {
                fc1: LinearConfig::new(3, self.hidden).init(device),
                fc2: LinearConfig::new(self.hidden, 3).init(device),
                activation: Relu::new(),
            }),
        };
        Background {
            mlp,
            color: self.color,
        }
    }
}

/// Direction -> colour network.
#[derive(Module, Debug)]
pub struct BackgroundMlp<B: Backend> {
    /// First layer, 3 -> hidden.
    pub fc1: Linear<B>,
    /// Second layer, hidden -> 3.
    pub fc2: Linear<B>,
    activation: Relu,
}

/// The background model.
#[derive(Module, Debug)]
pub struct Background<B: Backend> {
    /// Present for [`BackgroundKind::Mlp`].
    pub mlp: Option<BackgroundMlp<B>>,
    #[module(skip)]
    color: [f32; 3],
}

impl<B: Backend> Background<B> {
    /// Colour seen along each ray.
    ///
    /// # Shapes
    /// - `directions`: `[rays, 3]` unit vectors
    /// - returns `[rays, 3]` in [0, 1]
    pub fn forward(&self, directions: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.mlp {
            Some(mlp) => {
                let h = mlp.activation.forward(mlp.fc1.forward(directions));
                sigmoid(mlp.fc2.forward(h))
            }
            None => {
                let [n, _] = directions.dims();
                Tensor::<B, 1>::from_floats(self.color, &directions.device())
                    .reshape([1, 3])
                    .expand([n, 3])
            }
        }
    }

    /// A copy that shows a solid colour instead (for evaluation against a known backdrop).
    pub fn solid(color: [f32; 3]) -> Self {
        Self { mlp: None, color }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_aug_gives_each_view_one_colour_in_the_asked_share_of_steps() {
        let off = BackgroundConfig::new();
        assert!((0..50).all(|seed| off.random_aug(2, 4, seed).is_none()));

        let always = BackgroundConfig::new().with_random_aug_probability(1.0);
        let colors = always.random_aug(3, 4, 7).unwrap();
        assert_eq!(colors.len(), 3 * 4 * 3);
        let view = |v: usize| &colors[v * 12..v * 12 + 3];
        for v in 0..3 {
            for p in 0..4 {
                assert_eq!(
                    &colors[v * 12 + 3 * p..v * 12 + 3 * p + 3],
                    view(v),
                    "view {v}"
                );
            }
            assert!(view(v).iter().all(|c| (0.0..1.0).contains(c)));
        }
        assert_ne!(view(0), view(1));
        assert_eq!(
            always.random_aug(3, 4, 7).unwrap(),
            colors,
            "a pure function of the seed"
        );

        let half = BackgroundConfig::new().with_random_aug_probability(0.5);
        let drawn = (0..400)
            .filter(|&s| half.random_aug(1, 1, s).is_some())
            .count();
        assert!((160..240).contains(&drawn), "{drawn} of 400 steps");
    }

    #[test]
    fn a_probability_outside_0_1_is_refused_by_name() {
        for p in [-0.1, 1.5, f32::NAN] {
            let err = BackgroundConfig::new()
                .with_random_aug_probability(p)
                .validate()
                .unwrap_err();
            assert!(
                err.contains("nerf.background.random_aug_probability"),
                "{err}"
            );
        }
        assert!(BackgroundConfig::new().validate().is_ok());
    }
}
