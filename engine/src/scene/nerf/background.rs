//! What a ray sees when it leaves the object: a solid colour, or a small MLP on the view
//! direction (threestudio's "neural environment map"), which SDS needs so the prior's
//! preferred backdrop does not get painted onto the object.

use burn::config::Config;
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

/// Background settings.
#[derive(Config, Debug, PartialEq)]
pub struct BackgroundConfig {
    /// Solid or learnt.
    #[config(default = "BackgroundKind::Mlp")]
    pub kind: BackgroundKind,
    /// Colour for `Solid`, linear RGB in [0, 1].
    #[config(default = "[1.0, 1.0, 1.0]")]
    pub color: [f32; 3],
    /// Hidden width of the MLP.
    #[config(default = 16)]
    pub hidden: usize,
}

impl BackgroundConfig {
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
