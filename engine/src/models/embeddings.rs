//! Timestep embeddings (diffusers `models/embeddings.py`): the sinusoidal [`Timesteps`]
//! projection and the two-layer [`TimestepEmbedding`] MLP the UNet feeds to every ResNet block.
//!
//! Sinusoidal embedding of a timestep `t` into `num_channels = 2 * half` features:
//! `freq_i = exp(-ln(max_period) * i / (half - downscale_freq_shift))` for `i < half`, then
//! `[sin(t * freq), cos(t * freq)]`, or `[cos, sin]` with `flip_sin_to_cos` (Stable Diffusion).
//! The frequencies are computed on the host in `f32` exactly as diffusers' torch code does.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Tensor, TensorData, backend::Backend};

/// Settings of [`Timesteps`]; defaults are diffusers' `get_timestep_embedding` defaults except
/// `flip_sin_to_cos`, which every Stable Diffusion UNet sets.
#[derive(Config, Debug, PartialEq)]
pub struct TimestepsConfig {
    /// Output features (`block_out_channels[0]` in the UNet).
    pub num_channels: usize,
    /// Put the cosines first (`flip_sin_to_cos` in the UNet config).
    #[config(default = true)]
    pub flip_sin_to_cos: bool,
    /// Shift of the frequency denominator (`freq_shift` in the UNet config).
    #[config(default = 0.0)]
    pub downscale_freq_shift: f64,
    /// Multiplier applied to the angles.
    #[config(default = 1.0)]
    pub scale: f64,
    /// Longest period of the sinusoids.
    #[config(default = 10000.0)]
    pub max_period: f64,
}

impl TimestepsConfig {
    /// Builds the (parameter-free) projection.
    pub fn init(&self) -> Timesteps {
        Timesteps {
            num_channels: self.num_channels,
            flip_sin_to_cos: self.flip_sin_to_cos,
            downscale_freq_shift: self.downscale_freq_shift,
            scale: self.scale,
            max_period: self.max_period,
        }
    }
}

/// Sinusoidal timestep projection (diffusers `Timesteps`); it has no parameters.
#[derive(Module, Debug, Clone)]
pub struct Timesteps {
    /// Output features.
    pub num_channels: usize,
    /// Cosines first.
    pub flip_sin_to_cos: bool,
    /// Shift of the frequency denominator.
    pub downscale_freq_shift: f64,
    /// Multiplier applied to the angles.
    pub scale: f64,
    /// Longest period of the sinusoids.
    pub max_period: f64,
}

impl Timesteps {
    /// The `half = num_channels / 2` frequencies, computed in `f32` like torch does
    /// (`exp(-ln(max_period) * arange(half) / (half - shift))`).
    pub fn frequencies(&self) -> Vec<f32> {
        let half = self.num_channels / 2;
        let log_max = -(self.max_period.ln() as f32);
        let denominator = (half as f64 - self.downscale_freq_shift) as f32;
        (0..half)
            .map(|i| (log_max * i as f32 / denominator).exp())
            .collect()
    }

    /// Embeds one timestep per batch element.
    ///
    /// # Shapes
    /// - timesteps: `[batch]` (float, may be fractional)
    /// - output: `[batch, num_channels]`
    pub fn forward<B: Backend>(&self, timesteps: Tensor<B, 1>) -> Tensor<B, 2> {
        let device = timesteps.device();
        let dtype = timesteps.dtype();
        let [batch] = timesteps.dims();
        let freqs = self.frequencies();
        let half = freqs.len();
        let freqs = Tensor::<B, 2>::from_data(TensorData::new(freqs, [1, half]), (&device, dtype));
        // [batch, half]
        let mut angles = timesteps.reshape([batch, 1]) * freqs;
        if self.scale != 1.0 {
            angles = angles * self.scale;
        }
        let (sin, cos) = (angles.clone().sin(), angles.cos());
        let mut parts = if self.flip_sin_to_cos {
            vec![cos, sin]
        } else {
            vec![sin, cos]
        };
        if self.num_channels % 2 == 1 {
            parts.push(Tensor::zeros([batch, 1], (&device, dtype)));
        }
        // [batch, num_channels]
        Tensor::cat(parts, 1)
    }
}

/// Settings of [`TimestepEmbedding`].
#[derive(Config, Debug, PartialEq)]
pub struct TimestepEmbeddingConfig {
    /// Input features (the [`Timesteps`] width).
    pub in_channels: usize,
    /// Hidden and output features (`4 * block_out_channels[0]` in the UNet).
    pub time_embed_dim: usize,
}

impl TimestepEmbeddingConfig {
    /// Builds the MLP with burn's default initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TimestepEmbedding<B> {
        TimestepEmbedding {
            linear_1: LinearConfig::new(self.in_channels, self.time_embed_dim).init(device),
            linear_2: LinearConfig::new(self.time_embed_dim, self.time_embed_dim).init(device),
        }
    }
}

/// `linear_2(silu(linear_1(x)))` (diffusers `TimestepEmbedding` with `act_fn="silu"`).
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    /// First projection, `in_channels -> time_embed_dim`.
    pub linear_1: Linear<B>,
    /// Second projection, `time_embed_dim -> time_embed_dim`.
    pub linear_2: Linear<B>,
}

impl<B: Backend> TimestepEmbedding<B> {
    /// # Shapes
    /// - sample: `[batch, in_channels]`
    /// - output: `[batch, time_embed_dim]`
    pub fn forward(&self, sample: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear_2.forward(silu(self.linear_1.forward(sample)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn timestep_zero_is_cos_one_then_sin_zero() {
        let t = TimestepsConfig::new(8).init();
        let out = t.forward(Tensor::<B, 1>::from_floats(
            [0.0, 10.0],
            &Default::default(),
        ));
        assert_eq!(out.dims(), [2, 8]);
        let v = out.into_data().to_vec::<f32>().unwrap();
        assert_eq!(&v[..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        // First frequency is 1: cos(10), then sin(10) at index half.
        assert!((v[8] - 10f32.cos()).abs() < 1e-6);
        assert!((v[12] - 10f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn frequencies_follow_the_shift() {
        let t = TimestepsConfig::new(4)
            .with_downscale_freq_shift(1.0)
            .init();
        let f = t.frequencies();
        // half = 2, denominator = 1: exp(0), exp(-ln 10000)
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 1e-4).abs() < 1e-9);
        let odd = TimestepsConfig::new(5).with_flip_sin_to_cos(false).init();
        let out = odd.forward(Tensor::<B, 1>::from_floats([3.0], &Default::default()));
        assert_eq!(out.dims(), [1, 5]);
        let v = out.into_data().to_vec::<f32>().unwrap();
        assert!((v[0] - 3f32.sin()).abs() < 1e-6);
        assert_eq!(v[4], 0.0);
    }
}
