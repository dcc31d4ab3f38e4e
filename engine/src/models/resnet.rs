//! ResNet blocks and resamplers (diffusers `models/resnet.py`, `models/downsampling.py`,
//! `models/upsampling.py`): [`ResnetBlock2D`], [`Downsample2D`], [`Upsample2D`].
//!
//! Only what Stable Diffusion's UNet and VAE use is ported: `time_embedding_norm="default"`,
//! SiLU, convolutional resampling (`use_conv=True`), nearest-neighbour upsampling.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Tensor, backend::Backend};

use super::conv::{Conv2d, Conv2dConfig};
use super::group_norm::group_norm_silu;

/// A 3x3 convolution with padding 1 (the shape-preserving convolution used throughout SD).
pub(crate) fn conv3x3<B: Backend>(
    in_channels: usize,
    out_channels: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([in_channels, out_channels], [3, 3])
        .with_padding([1, 1, 1, 1])
        .init(device)
}

/// A 1x1 convolution.
pub(crate) fn conv1x1<B: Backend>(
    in_channels: usize,
    out_channels: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([in_channels, out_channels], [1, 1]).init(device)
}

/// Settings of [`ResnetBlock2D`]; defaults are diffusers' constructor defaults.
#[derive(Config, Debug, PartialEq)]
pub struct ResnetBlock2DConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (`None`: same as input).
    #[config(default = "None")]
    pub out_channels: Option<usize>,
    /// Width of the time embedding; `None` for the VAE's blocks, which have no `time_emb_proj`.
    #[config(default = "Some(512)")]
    pub temb_channels: Option<usize>,
    /// GroupNorm groups of `norm1`.
    #[config(default = 32)]
    pub groups: usize,
    /// GroupNorm groups of `norm2` (`None`: `groups`).
    #[config(default = "None")]
    pub groups_out: Option<usize>,
    /// GroupNorm epsilon.
    #[config(default = 1e-6)]
    pub eps: f64,
    /// The output is divided by this.
    #[config(default = 1.0)]
    pub output_scale_factor: f64,
    /// Force (`Some(true)`) or forbid a 1x1 `conv_shortcut`; `None`: only when channels change.
    #[config(default = "None")]
    pub use_in_shortcut: Option<bool>,
}

impl ResnetBlock2DConfig {
    /// Builds the block with burn's default initialisation.
    ///
    /// # Panics
    /// If a channel count is not divisible by its number of groups.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResnetBlock2D<B> {
        let out_channels = self.out_channels.unwrap_or(self.in_channels);
        let groups_out = self.groups_out.unwrap_or(self.groups);
        let use_in_shortcut = self
            .use_in_shortcut
            .unwrap_or(self.in_channels != out_channels);
        ResnetBlock2D {
            norm1: GroupNormConfig::new(self.groups, self.in_channels)
                .with_epsilon(self.eps)
                .init(device),
            conv1: conv3x3(self.in_channels, out_channels, device),
            time_emb_proj: self
                .temb_channels
                .map(|t| LinearConfig::new(t, out_channels).init(device)),
            norm2: GroupNormConfig::new(groups_out, out_channels)
                .with_epsilon(self.eps)
                .init(device),
            conv2: conv3x3(out_channels, out_channels, device),
            conv_shortcut: use_in_shortcut.then(|| conv1x1(self.in_channels, out_channels, device)),
            output_scale_factor: self.output_scale_factor,
        }
    }
}

/// Pre-activation ResNet block with an additive time embedding:
/// `(shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))) / scale`.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    /// GroupNorm before `conv1`.
    pub norm1: GroupNorm<B>,
    /// First 3x3 convolution, `in -> out`.
    pub conv1: Conv2d<B>,
    /// Projection of the time embedding to `out` channels (absent in the VAE).
    pub time_emb_proj: Option<Linear<B>>,
    /// GroupNorm before `conv2`.
    pub norm2: GroupNorm<B>,
    /// Second 3x3 convolution, `out -> out`.
    pub conv2: Conv2d<B>,
    /// 1x1 convolution on the residual path when channels change.
    pub conv_shortcut: Option<Conv2d<B>>,
    /// The output is divided by this.
    pub output_scale_factor: f64,
}

impl<B: Backend> ResnetBlock2D<B> {
    /// # Shapes
    /// - input_tensor: `[batch, in_channels, h, w]`
    /// - temb: `[batch, temb_channels]`, required when the block has `time_emb_proj`
    /// - output: `[batch, out_channels, h, w]`
    ///
    /// # Panics
    /// If the block has a time projection and `temb` is `None`.
    pub fn forward(&self, input_tensor: Tensor<B, 4>, temb: Option<Tensor<B, 2>>) -> Tensor<B, 4> {
        // [batch, in, h, w]
        let hidden = group_norm_silu(&self.norm1, input_tensor.clone());
        // [batch, out, h, w]
        let mut hidden = self.conv1.forward(hidden);
        if let Some(proj) = &self.time_emb_proj {
            let temb = temb.expect("ResnetBlock2D with time_emb_proj needs a time embedding");
            // [batch, out] -> [batch, out, 1, 1]
            let temb = proj.forward(silu(temb)).unsqueeze_dims::<4>(&[2, 3]);
            hidden = hidden + temb;
        }
        let hidden = group_norm_silu(&self.norm2, hidden);
        let hidden = self.conv2.forward(hidden);
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(input_tensor),
            None => input_tensor,
        };
        let out = shortcut + hidden;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}

/// Settings of [`Downsample2D`] (always `use_conv=True`, as in every SD checkpoint).
#[derive(Config, Debug, PartialEq)]
pub struct Downsample2DConfig {
    /// Input channels.
    pub channels: usize,
    /// Output channels (`None`: same as input).
    #[config(default = "None")]
    pub out_channels: Option<usize>,
    /// Convolution padding: 1 in the UNet; 0 in the VAE, where diffusers pads the right and
    /// bottom by one instead (asymmetric, as the original LDM code).
    #[config(default = 1)]
    pub padding: usize,
}

impl Downsample2DConfig {
    /// Builds the strided convolution.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Downsample2D<B> {
        let out = self.out_channels.unwrap_or(self.channels);
        let p = self.padding;
        // [top, left, bottom, right]; diffusers pads (0, 1, 0, 1) by hand when padding=0.
        let padding = if p == 0 { [0, 0, 1, 1] } else { [p, p, p, p] };
        Downsample2D {
            conv: Conv2dConfig::new([self.channels, out], [3, 3])
                .with_stride([2, 2])
                .with_padding(padding)
                .init(device),
        }
    }
}

/// Halves the resolution with a 3x3 stride-2 convolution.
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    /// The strided convolution.
    pub conv: Conv2d<B>,
}

impl<B: Backend> Downsample2D<B> {
    /// # Shapes
    /// - hidden_states: `[batch, channels, h, w]`
    /// - output: `[batch, out_channels, ceil(h / 2), ceil(w / 2)]` with padding 1,
    ///   `[batch, out_channels, floor(h / 2), floor(w / 2)]` with padding 0
    pub fn forward(&self, hidden_states: Tensor<B, 4>) -> Tensor<B, 4> {
        self.conv.forward(hidden_states)
    }
}

/// Settings of [`Upsample2D`] (always `use_conv=True`, nearest-neighbour interpolation).
#[derive(Config, Debug, PartialEq)]
pub struct Upsample2DConfig {
    /// Input channels.
    pub channels: usize,
    /// Output channels (`None`: same as input).
    #[config(default = "None")]
    pub out_channels: Option<usize>,
}

impl Upsample2DConfig {
    /// Builds the convolution that follows the interpolation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Upsample2D<B> {
        let out = self.out_channels.unwrap_or(self.channels);
        Upsample2D {
            conv: conv3x3(self.channels, out, device),
        }
    }
}

/// Doubles the resolution (nearest neighbour), then a 3x3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    /// The convolution after the interpolation.
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample2D<B> {
    /// `output_size` overrides the doubled size (diffusers' `upsample_size`, used when the
    /// latent is not divisible by the UNet's total downsampling factor).
    ///
    /// # Shapes
    /// - hidden_states: `[batch, channels, h, w]`
    /// - output: `[batch, out_channels, 2h, 2w]` or `[batch, out_channels, output_size]`
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 4>,
        output_size: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        let [b, c, h, w] = hidden_states.dims();
        let size = output_size.unwrap_or([2 * h, 2 * w]);
        // [batch, channels, 2h, 2w]
        let hidden_states = if size == [2 * h, 2 * w] {
            // Exact doubling repeats each pixel 2x2: a broadcast, whose backward is a sum;
            // burn-ndarray's interpolate kernels are several times slower both ways.
            hidden_states
                .reshape([b, c, h, 1, w, 1])
                .expand([b, c, h, 2, w, 2])
                .reshape([b, c, 2 * h, 2 * w])
        } else {
            let options =
                InterpolateOptions::new(InterpolateMode::Nearest).with_align_corners(false);
            interpolate(hidden_states, size, options)
        };
        self.conv.forward(hidden_states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    type B = NdArray<f32>;

    #[test]
    fn resnet_shapes_and_shortcut() {
        let device = Default::default();
        let block = ResnetBlock2DConfig::new(8)
            .with_out_channels(Some(16))
            .with_temb_channels(Some(12))
            .with_groups(4)
            .init::<B>(&device);
        assert!(block.conv_shortcut.is_some());
        let x = Tensor::<B, 4>::random([2, 8, 5, 6], Distribution::Default, &device);
        let t = Tensor::<B, 2>::random([2, 12], Distribution::Default, &device);
        assert_eq!(block.forward(x, Some(t)).dims(), [2, 16, 5, 6]);

        let vae_block = ResnetBlock2DConfig::new(8)
            .with_temb_channels(None)
            .with_groups(4)
            .init::<B>(&device);
        assert!(vae_block.conv_shortcut.is_none() && vae_block.time_emb_proj.is_none());
    }

    #[test]
    fn resamplers_change_resolution() {
        let device = Default::default();
        let x = Tensor::<B, 4>::random([1, 4, 7, 8], Distribution::Default, &device);
        let down = Downsample2DConfig::new(4).init::<B>(&device);
        assert_eq!(down.forward(x.clone()).dims(), [1, 4, 4, 4]);
        let down_vae = Downsample2DConfig::new(4)
            .with_padding(0)
            .init::<B>(&device);
        // Right/bottom padding only: floor(h / 2), as torch's F.pad(x, (0, 1, 0, 1)) + conv.
        assert_eq!(down_vae.forward(x.clone()).dims(), [1, 4, 3, 4]);
        let up = Upsample2DConfig::new(4)
            .with_out_channels(Some(6))
            .init::<B>(&device);
        assert_eq!(up.forward(x.clone(), None).dims(), [1, 6, 14, 16]);
        assert_eq!(up.forward(x, Some([13, 15])).dims(), [1, 6, 13, 15]);
    }

    #[test]
    fn doubling_matches_nearest_interpolation() {
        let device = Default::default();
        let x = Tensor::<B, 4>::random([2, 3, 5, 4], Distribution::Default, &device);
        let up = Upsample2DConfig::new(3).init::<B>(&device);
        let options = InterpolateOptions::new(InterpolateMode::Nearest).with_align_corners(false);
        let reference = up.conv.forward(interpolate(x.clone(), [10, 8], options));
        let err: f32 = (up.forward(x, None) - reference).abs().max().into_scalar();
        assert!(err < 1e-5, "differs by {err}");
    }
}
