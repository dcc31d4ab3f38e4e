//! 3D Gaussians (Kerbl et al. 2023) as the second scene representation next to the NeRF:
//! positions, log-scales, rotation quaternions, opacity logits and spherical-harmonics colour
//! (degree 0 by default, as DreamGaussian uses for SDS).
//!
//! The tensors are plain fields, not a burn `Module`: densification changes their length
//! mid-run, which burn's optimisers (state keyed by parameter id and shape) cannot follow, so
//! they are trained with [`GaussianAdam`].

mod adam;
mod densify;
mod export;
mod init;
mod prune;
pub mod rotation;
pub mod sh;

pub use adam::{GaussianAdam, GaussianLearningRates};
pub use densify::{DensifyConfig, DensifyReport, DensifyStats};
pub use export::SplatCloud;
pub use init::GaussiansConfig;
pub use prune::{PruneConfig, PruneConfigError, PruneReport};

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, activation::sigmoid};

/// What is wrong with a set of Gaussians.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GaussiansError {
    /// A parameter is NaN or infinite.
    #[error("Gaussian {index}: {attribute} is not finite ({value})")]
    NonFinite {
        /// Which parameter (means, log_scales, ...).
        attribute: &'static str,
        /// Which Gaussian.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// Tensors of different lengths, or a wrong width.
    #[error("Gaussians: {0}")]
    Shape(String),
    /// A config value out of range.
    #[error("Gaussians config: {0}")]
    Config(String),
}

/// A set of 3D Gaussians.
#[derive(Debug, Clone)]
pub struct Gaussians<B: Backend> {
    /// Centres, `[N, 3]`.
    pub means: Tensor<B, 2>,
    /// Per-axis standard deviations, log, `[N, 3]`.
    pub log_scales: Tensor<B, 2>,
    /// Rotation quaternions `(w, x, y, z)`, normalised when used, `[N, 4]`.
    pub rotations: Tensor<B, 2>,
    /// Opacity before the sigmoid, `[N, 1]`.
    pub opacity_logits: Tensor<B, 2>,
    /// Spherical-harmonics degree-0 coefficients (the view-independent colour), `[N, 3]`.
    pub sh_dc: Tensor<B, 2>,
    /// Higher-degree coefficients, `[N, (degree + 1)^2 - 1, 3]`; `None` at degree 0.
    pub sh_rest: Option<Tensor<B, 3>>,
}

/// The parameter tensors in a fixed order: what the optimiser and densification walk over.
pub const ATTRIBUTES: [&str; 6] = [
    "means",
    "log_scales",
    "rotations",
    "opacity_logits",
    "sh_dc",
    "sh_rest",
];

impl<B: Backend> Gaussians<B> {
    /// Number of Gaussians.
    pub fn len(&self) -> usize {
        self.means.dims()[0]
    }

    /// No Gaussians at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Spherical-harmonics degree.
    pub fn sh_degree(&self) -> usize {
        match &self.sh_rest {
            None => 0,
            Some(rest) => sh::degree_of(rest.dims()[1] + 1),
        }
    }

    /// Opacity in [0, 1], `[N, 1]`.
    pub fn opacities(&self) -> Tensor<B, 2> {
        sigmoid(self.opacity_logits.clone())
    }

    /// Standard deviations, `[N, 3]`.
    pub fn scales(&self) -> Tensor<B, 2> {
        self.log_scales.clone().exp()
    }

    /// Checks that the tensors agree in length and width.
    pub fn check_shapes(&self) -> Result<(), GaussiansError> {
        let n = self.len();
        let mut widths = vec![
            ("means", self.means.dims().to_vec(), vec![n, 3]),
            ("log_scales", self.log_scales.dims().to_vec(), vec![n, 3]),
            ("rotations", self.rotations.dims().to_vec(), vec![n, 4]),
            (
                "opacity_logits",
                self.opacity_logits.dims().to_vec(),
                vec![n, 1],
            ),
            ("sh_dc", self.sh_dc.dims().to_vec(), vec![n, 3]),
        ];
        if let Some(rest) = &self.sh_rest {
            let k = rest.dims()[1];
            if sh::degree_of(k + 1) > sh::MAX_DEGREE || (sh::degree_of(k + 1) + 1).pow(2) != k + 1 {
                return Err(GaussiansError::Shape(format!(
                    "sh_rest has {k} coefficients per channel; expected (degree + 1)^2 - 1 for a degree up to {}",
                    sh::MAX_DEGREE
                )));
            }
            widths.push(("sh_rest", rest.dims().to_vec(), vec![n, k, 3]));
        }
        for (name, got, want) in widths {
            if got != want {
                return Err(GaussiansError::Shape(format!(
                    "{name} has shape {got:?}, expected {want:?}"
                )));
            }
        }
        Ok(())
    }

    /// Finds the first NaN or infinite parameter and names it.
    pub fn check_finite(&self) -> Result<(), GaussiansError> {
        let check = |attribute: &'static str, data: Vec<f32>, width: usize| match data
            .iter()
            .position(|v| !v.is_finite())
        {
            None => Ok(()),
            Some(p) => Err(GaussiansError::NonFinite {
                attribute,
                index: p / width.max(1),
                value: data[p],
            }),
        };
        let host = |t: Tensor<B, 2>| {
            t.into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default()
        };
        check("means", host(self.means.clone()), 3)?;
        check("log_scales", host(self.log_scales.clone()), 3)?;
        check("rotations", host(self.rotations.clone()), 4)?;
        check("opacity_logits", host(self.opacity_logits.clone()), 1)?;
        check("sh_dc", host(self.sh_dc.clone()), 3)?;
        if let Some(rest) = &self.sh_rest {
            let k = rest.dims()[1];
            let data = rest
                .clone()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default();
            check("sh_rest", data, 3 * k)?;
        }
        Ok(())
    }

    /// Keeps the Gaussians at `indices` (in that order).
    pub fn select(&self, indices: &[usize]) -> Self {
        let device = self.means.device();
        let index = burn::tensor::Tensor::<B, 1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(
                indices.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [indices.len()],
            ),
            &device,
        );
        Self {
            means: self.means.clone().select(0, index.clone()),
            log_scales: self.log_scales.clone().select(0, index.clone()),
            rotations: self.rotations.clone().select(0, index.clone()),
            opacity_logits: self.opacity_logits.clone().select(0, index.clone()),
            sh_dc: self.sh_dc.clone().select(0, index.clone()),
            sh_rest: self.sh_rest.clone().map(|r| r.select(0, index)),
        }
    }

    /// Appends `other` (same SH degree) after these.
    pub fn concat(self, other: Self) -> Self {
        Self {
            means: Tensor::cat(vec![self.means, other.means], 0),
            log_scales: Tensor::cat(vec![self.log_scales, other.log_scales], 0),
            rotations: Tensor::cat(vec![self.rotations, other.rotations], 0),
            opacity_logits: Tensor::cat(vec![self.opacity_logits, other.opacity_logits], 0),
            sh_dc: Tensor::cat(vec![self.sh_dc, other.sh_dc], 0),
            sh_rest: match (self.sh_rest, other.sh_rest) {
                (Some(a), Some(b)) => Some(Tensor::cat(vec![a, b], 0)),
                _ => None,
            },
        }
    }
}

impl<B: AutodiffBackend> Gaussians<B> {
    /// Leaf copies of inner-backend parameters that record gradients: one training step's
    /// view of the parameters.
    pub fn tracked(inner: &Gaussians<B::InnerBackend>) -> Self {
        let leaf2 =
            |t: &Tensor<B::InnerBackend, 2>| Tensor::<B, 2>::from_inner(t.clone()).require_grad();
        Self {
            means: leaf2(&inner.means),
            log_scales: leaf2(&inner.log_scales),
            rotations: leaf2(&inner.rotations),
            opacity_logits: leaf2(&inner.opacity_logits),
            sh_dc: leaf2(&inner.sh_dc),
            sh_rest: inner
                .sh_rest
                .as_ref()
                .map(|t| Tensor::<B, 3>::from_inner(t.clone()).require_grad()),
        }
    }

    /// The gradients of these leaves, shaped like the parameters (zeros where unused).
    pub fn grads(&self, grads: &B::Gradients) -> Gaussians<B::InnerBackend> {
        let g2 = |t: &Tensor<B, 2>| {
            t.grad(grads)
                .unwrap_or_else(|| t.clone().inner().zeros_like())
        };
        Gaussians {
            means: g2(&self.means),
            log_scales: g2(&self.log_scales),
            rotations: g2(&self.rotations),
            opacity_logits: g2(&self.opacity_logits),
            sh_dc: g2(&self.sh_dc),
            sh_rest: self.sh_rest.as_ref().map(|t| {
                t.grad(grads)
                    .unwrap_or_else(|| t.clone().inner().zeros_like())
            }),
        }
    }
}
