//! Where Gaussians start: uniformly inside a sphere (DreamGaussian), or at given points.

use burn::config::Config;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Gaussians, GaussiansError, sh};

/// Initial Gaussians.
#[derive(Config, Debug, PartialEq)]
pub struct GaussiansConfig {
    /// How many (DreamGaussian: 5000).
    #[config(default = 5000)]
    pub num_points: usize,
    /// Radius of the ball they start in (DreamGaussian: 0.5).
    #[config(default = 0.5)]
    pub radius: f32,
    /// Spherical-harmonics degree, 0 to 3 (0 for SDS: view-dependent colour only bakes the
    /// prior's view bias into the asset).
    #[config(default = 0)]
    pub sh_degree: usize,
    /// Initial opacity (3DGS and DreamGaussian: 0.1).
    #[config(default = 0.1)]
    pub opacity: f32,
    /// Initial standard deviation as a fraction of the mean spacing between points.
    #[config(default = 0.5)]
    pub scale_of_spacing: f32,
}

impl GaussiansConfig {
    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<(), GaussiansError> {
        let bad = |m: String| Err(GaussiansError::Config(m));
        if self.sh_degree > sh::MAX_DEGREE {
            return bad(format!(
                "sh_degree = {} is above {}",
                self.sh_degree,
                sh::MAX_DEGREE
            ));
        }
        if !(self.radius > 0.0 && self.radius.is_finite()) {
            return bad(format!("radius = {} must be positive", self.radius));
        }
        if !(self.opacity > 0.0 && self.opacity < 1.0) {
            return bad(format!("opacity = {} must lie in (0, 1)", self.opacity));
        }
        if !(self.scale_of_spacing > 0.0 && self.scale_of_spacing.is_finite()) {
            return bad(format!(
                "scale_of_spacing = {} must be positive",
                self.scale_of_spacing
            ));
        }
        Ok(())
    }

    /// `num_points` Gaussians uniform in the ball, random colours, identity rotations.
    pub fn init<B: Backend>(
        &self,
        seed: u64,
        device: &B::Device,
    ) -> Result<Gaussians<B>, GaussiansError> {
        self.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut points = Vec::with_capacity(self.num_points);
        while points.len() < self.num_points {
            let p: [f32; 3] = std::array::from_fn(|_| rng.random_range(-1.0..1.0f32));
            if p.iter().map(|v| v * v).sum::<f32>() <= 1.0 {
                points.push(p.map(|v| v * self.radius));
            }
        }
        let colors: Vec<[f32; 3]> = (0..self.num_points)
            .map(|_| std::array::from_fn(|_| rng.random::<f32>()))
            .collect();
        let volume = 4.0 / 3.0 * std::f32::consts::PI * self.radius.powi(3);
        let spacing = (volume / self.num_points.max(1) as f32).cbrt();
        self.from_points(&points, &colors, spacing * self.scale_of_spacing, device)
    }

    /// Gaussians at `points` with `colors` (RGB in [0, 1]) and isotropic standard deviation
    /// `scale`.
    pub fn from_points<B: Backend>(
        &self,
        points: &[[f32; 3]],
        colors: &[[f32; 3]],
        scale: f32,
        device: &B::Device,
    ) -> Result<Gaussians<B>, GaussiansError> {
        self.validate()?;
        if points.len() != colors.len() {
            return Err(GaussiansError::Shape(format!(
                "{} points but {} colours",
                points.len(),
                colors.len()
            )));
        }
        if !(scale > 0.0 && scale.is_finite()) {
            return Err(GaussiansError::Config(format!(
                "initial scale = {scale} must be positive"
            )));
        }
        let n = points.len();
        let t2 =
            |v: Vec<f32>, w: usize| Tensor::<B, 2>::from_data(TensorData::new(v, [n, w]), device);
        let logit = (self.opacity / (1.0 - self.opacity)).ln();
        let rest = (self.sh_degree > 0).then(|| {
            let k = sh::coefficients(self.sh_degree) - 1;
            Tensor::<B, 3>::zeros([n, k, 3], device)
        });
        let gaussians = Gaussians {
            means: t2(points.iter().flatten().copied().collect(), 3),
            log_scales: t2(vec![scale.ln(); n * 3], 3),
            rotations: t2((0..n).flat_map(|_| [1.0, 0.0, 0.0, 0.0]).collect(), 4),
            opacity_logits: t2(vec![logit; n], 1),
            sh_dc: t2(
                colors.iter().flatten().map(|&c| sh::rgb_to_dc(c)).collect(),
                3,
            ),
            sh_rest: rest,
        };
        gaussians.check_finite()?;
        Ok(gaussians)
    }
}
