//! The NeRF of DreamFusion / threestudio's `ImplicitVolume`: a hash-grid encoding, a density
//! MLP and an albedo MLP, plus the density "blob" at the centre that starts optimisation from
//! a ball instead of empty space, and a background model.

mod background;
mod hash_grid;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod hash_grid_cube;
pub mod hash_grid_op;

pub use background::{Background, BackgroundConfig, BackgroundKind, BackgroundMlp};
pub use hash_grid::{HashGrid, HashGridConfig, LevelLayout};
pub use hash_grid_op::HashGridBackend;

use crate::optim::ParamGroup;
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::GradientsParams;
use burn::tensor::{
    Tensor,
    activation::sigmoid,
    backend::{AutodiffBackend, Backend},
};
use serde::{Deserialize, Serialize};

/// How raw density becomes non-negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DensityActivation {
    /// `softplus(x)` (threestudio default).
    Softplus,
    /// `exp(x)`, clamped at 15 before the exponent to stay finite (threestudio's `trunc_exp`).
    Exp,
}

/// The centre bias added to raw density before activation; `r` is the distance to the centre.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DensityBias {
    /// No bias.
    None,
    /// Magic3D: `scale * (1 - r / std)` (threestudio default).
    BlobMagic3d,
    /// DreamFusion: `scale * exp(-r^2 / (2 std^2))`.
    BlobDreamfusion,
}

/// NeRF settings. Defaults follow threestudio's `implicit-volume` (64-wide MLPs with one hidden
/// layer, softplus density, Magic3D blob of scale 10 and std 0.5, radius 1).
#[derive(Config, Debug, PartialEq)]
pub struct NerfConfig {
    /// The positional encoding.
    #[config(default = "HashGridConfig::new()")]
    pub encoding: HashGridConfig,
    /// Half-size of the cube `[-radius, radius]^3` the encoding covers; also the radius of the
    /// sphere the renderer samples in.
    #[config(default = 1.0)]
    pub radius: f32,
    /// Width of the hidden layers.
    #[config(default = 64)]
    pub hidden: usize,
    /// Hidden layers per MLP.
    #[config(default = 1)]
    pub n_hidden_layers: usize,
    /// Density activation.
    #[config(default = "DensityActivation::Softplus")]
    pub density_activation: DensityActivation,
    /// Density bias at the centre.
    #[config(default = "DensityBias::BlobMagic3d")]
    pub density_bias: DensityBias,
    /// Blob scale.
    #[config(default = 10.0)]
    pub density_blob_scale: f32,
    /// Blob radius-like spread.
    #[config(default = 0.5)]
    pub density_blob_std: f32,
    /// Background model.
    #[config(default = "BackgroundConfig::new()")]
    pub background: BackgroundConfig,
}

impl NerfConfig {
    /// Checks the settings; the message names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        self.encoding.validate()?;
        self.background.validate()?;
        if !(self.radius.is_finite() && self.radius > 0.0) {
            return Err(format!(
                "nerf radius {} must be finite and > 0",
                self.radius
            ));
        }
        if self.hidden == 0 {
            return Err("nerf hidden must be at least 1".into());
        }
        if !(self.density_blob_std.is_finite() && self.density_blob_std > 0.0) {
            return Err(format!(
                "nerf density_blob_std {} must be finite and > 0",
                self.density_blob_std
            ));
        }
        Ok(())
    }

    /// Builds the NeRF with fresh parameters.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Nerf<B> {
        let input = self.encoding.output_dim();
        Nerf {
            encoding: self.encoding.init(device),
            density_network: Mlp::new(input, self.hidden, self.n_hidden_layers, 1, device),
            feature_network: Mlp::new(input, self.hidden, self.n_hidden_layers, 3, device),
            background: self.background.init(device),
            shape: DensityShape {
                radius: self.radius,
                activation: self.density_activation,
                bias: self.density_bias,
                blob_scale: self.density_blob_scale,
                blob_std: self.density_blob_std,
            },
        }
    }
}

/// A plain ReLU MLP.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Layers, input first.
    pub layers: Vec<Linear<B>>,
    activation: Relu,
}

impl<B: Backend> Mlp<B> {
    fn new(
        input: usize,
        hidden: usize,
        n_hidden: usize,
        output: usize,
        device: &B::Device,
    ) -> Self {
        let mut dims = vec![input];
        dims.extend(std::iter::repeat_n(hidden, n_hidden));
        dims.push(output);
        let layers = dims
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Self {
            layers,
            activation: Relu::new(),
        }
    }

    /// `[n, input] -> [n, output]`, ReLU between layers, none after the last.
    pub fn forward(&self, mut x: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = self.activation.forward(x);
            }
        }
        x
    }
}

/// Density and albedo of the points asked about.
#[derive(Debug, Clone)]
pub struct FieldSample<B: Backend> {
    /// Non-negative density, `[points, 1]`.
    pub density: Tensor<B, 2>,
    /// Albedo in [0, 1], `[points, 3]`.
    pub albedo: Tensor<B, 2>,
}

/// Hash-grid NeRF.
#[derive(Module, Debug)]
pub struct Nerf<B: Backend> {
    /// Positional encoding (learning-rate group "encoding").
    pub encoding: HashGrid<B>,
    /// Encoding -> raw density (group "network").
    pub density_network: Mlp<B>,
    /// Encoding -> raw albedo (group "network").
    pub feature_network: Mlp<B>,
    /// Background (group "background").
    pub background: Background<B>,
    #[module(skip)]
    shape: DensityShape,
}

/// The fixed (not learnt) part of the density: region, centre bias, activation.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DensityShape {
    radius: f32,
    activation: DensityActivation,
    bias: DensityBias,
    blob_scale: f32,
    blob_std: f32,
}

impl<B: Backend> Nerf<B> {
    /// Radius of the region the field covers.
    pub fn radius(&self) -> f32 {
        self.shape.radius
    }
}

impl<B: HashGridBackend> Nerf<B> {
    /// Density and albedo at world points.
    ///
    /// # Shapes
    /// - `points`: `[n, 3]`, world space
    pub fn query(&self, points: Tensor<B, 2>) -> FieldSample<B> {
        let features = self.encode(points.clone());
        let raw_density = self.density_network.forward(features.clone());
        FieldSample {
            density: self.activate_density(raw_density, points),
            albedo: sigmoid(self.feature_network.forward(features)),
        }
    }

    /// Density alone (mesh extraction asks for nothing else).
    pub fn density(&self, points: Tensor<B, 2>) -> Tensor<B, 2> {
        let raw = self.density_network.forward(self.encode(points.clone()));
        self.activate_density(raw, points)
    }

    fn encode(&self, points: Tensor<B, 2>) -> Tensor<B, 2> {
        // [-radius, radius]^3 -> [0, 1]^3
        self.encoding
            .forward(points.div_scalar(2.0 * self.shape.radius).add_scalar(0.5))
    }

    fn activate_density(&self, raw: Tensor<B, 2>, points: Tensor<B, 2>) -> Tensor<B, 2> {
        let r2 = points.powi_scalar(2).sum_dim(1);
        let (scale, std) = (self.shape.blob_scale, self.shape.blob_std);
        let raw = match self.shape.bias {
            DensityBias::None => raw,
            DensityBias::BlobMagic3d => raw + (r2.sqrt().div_scalar(-std) + 1.0) * scale,
            DensityBias::BlobDreamfusion => raw + r2.div_scalar(-2.0 * std * std).exp() * scale,
        };
        match self.shape.activation {
            // log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): finite for the blob's large raw values.
            DensityActivation::Softplus => {
                raw.clone().clamp_min(0.0) + raw.abs().neg().exp().add_scalar(1.0).log()
            }
            DensityActivation::Exp => raw.clamp_max(15.0).exp(),
        }
    }
}

/// Learning rate per parameter group. Defaults are the paper's 3D settings: 0.01 for the
/// encoding, 0.001 for the networks and the background.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NerfLearningRates {
    /// Hash-grid entries.
    pub encoding: f64,
    /// Density and albedo MLPs.
    pub network: f64,
    /// Background model.
    pub background: f64,
}

impl Default for NerfLearningRates {
    fn default() -> Self {
        Self {
            encoding: 0.01,
            network: 0.001,
            background: 0.001,
        }
    }
}

impl NerfLearningRates {
    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, lr) in [
            ("encoding", self.encoding),
            ("network", self.network),
            ("background", self.background),
        ] {
            if !(lr.is_finite() && lr >= 0.0) {
                return Err(format!(
                    "learning rate {name} = {lr} must be finite and >= 0"
                ));
            }
        }
        Ok(())
    }
}

impl<B: AutodiffBackend> Nerf<B> {
    /// Splits `grads` into learning-rate groups (the two MLPs share the "network" rate).
    pub fn param_groups(
        &self,
        grads: &mut B::Gradients,
        lr: &NerfLearningRates,
    ) -> Vec<ParamGroup> {
        let group = |name, lr, grads| ParamGroup { name, lr, grads };
        vec![
            group(
                "encoding",
                lr.encoding,
                GradientsParams::from_module(grads, &self.encoding),
            ),
            group(
                "network",
                lr.network,
                GradientsParams::from_module(grads, &self.density_network),
            ),
            group(
                "network",
                lr.network,
                GradientsParams::from_module(grads, &self.feature_network),
            ),
            group(
                "background",
                lr.background,
                GradientsParams::from_module(grads, &self.background),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn blob_makes_the_centre_dense_and_the_outside_empty() {
        let device = Default::default();
        let config = NerfConfig::new().with_encoding(
            HashGridConfig::new()
                .with_n_levels(2)
                .with_log2_hashmap_size(8)
                .with_max_resolution(32),
        );
        let nerf = config.init::<B>(&device);
        let points = Tensor::<B, 2>::from_floats([[0.0, 0.0, 0.0], [0.0, 0.95, 0.0]], &device);
        let sample = nerf.query(points);
        let density: Vec<f32> = sample.density.into_data().to_vec().unwrap();
        assert!(density[0] > 5.0, "centre density {}", density[0]);
        assert!(density[1] < 0.5, "outer density {}", density[1]);
        let albedo: Vec<f32> = sample.albedo.into_data().to_vec().unwrap();
        assert!(albedo.iter().all(|a| (0.0..=1.0).contains(a)));
    }

    #[test]
    fn config_round_trips_through_json_and_rejects_bad_values() {
        let config = NerfConfig::new().with_radius(1.5);
        let json = serde_json::to_string(&config).unwrap();
        let back: NerfConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
        let bad = NerfConfig::new().with_radius(0.0);
        assert!(bad.validate().unwrap_err().contains("radius"));
        let bad = NerfConfig::new().with_encoding(HashGridConfig::new().with_log2_hashmap_size(30));
        assert!(bad.validate().unwrap_err().contains("log2_hashmap_size"));
    }
}
