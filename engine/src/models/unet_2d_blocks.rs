//! The UNet's and VAE's stages (diffusers `models/unets/unet_2d_blocks.py`).
//!
//! UNet: [`CrossAttnDownBlock2D`], [`DownBlock2D`], [`UNetMidBlock2DCrossAttn`],
//! [`CrossAttnUpBlock2D`], [`UpBlock2D`]. VAE: [`DownEncoderBlock2D`], [`UpDecoderBlock2D`],
//! [`UNetMidBlock2D`]. Down blocks return every intermediate state as skip connections; up
//! blocks consume them from the end (`res_hidden_states_tuple[-1]` first), as diffusers does.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use super::attention::{Attention, AttentionConfig, Transformer2DModel, Transformer2DModelConfig};
use super::resnet::{
    Downsample2D, Downsample2DConfig, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D,
    Upsample2DConfig,
};

/// Settings shared by the UNet's down and up blocks (the arguments of diffusers'
/// `get_down_block` / `get_up_block`).
#[derive(Config, Debug, PartialEq)]
pub struct UNetBlockConfig {
    /// Input channels (for up blocks: the channels of the skip from the matching down level).
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Time-embedding width.
    pub temb_channels: usize,
    /// ResNets in the block (`layers_per_block`, plus one for up blocks).
    #[config(default = 2)]
    pub num_layers: usize,
    /// GroupNorm epsilon of the ResNets (`norm_eps`).
    #[config(default = 1e-5)]
    pub resnet_eps: f64,
    /// GroupNorm groups (`norm_num_groups`).
    #[config(default = 32)]
    pub resnet_groups: usize,
    /// Attention heads (cross-attention blocks only); head width is `out_channels / heads`.
    #[config(default = 8)]
    pub num_attention_heads: usize,
    /// Text-context width (cross-attention blocks only).
    #[config(default = 768)]
    pub cross_attention_dim: usize,
    /// Transformer blocks per attention (`transformer_layers_per_block`).
    #[config(default = 1)]
    pub transformer_layers_per_block: usize,
    /// Linear `proj_in`/`proj_out` (SD 2.x).
    #[config(default = false)]
    pub use_linear_projection: bool,
    /// Down blocks: end with a [`Downsample2D`]; up blocks: with an [`Upsample2D`].
    #[config(default = true)]
    pub add_resample: bool,
    /// Padding of the downsampling convolution (`downsample_padding`).
    #[config(default = 1)]
    pub downsample_padding: usize,
    /// Up blocks only: channels coming from the previous (deeper) up block.
    #[config(default = 0)]
    pub prev_output_channel: usize,
}

impl UNetBlockConfig {
    fn resnet(&self, in_channels: usize) -> ResnetBlock2DConfig {
        ResnetBlock2DConfig::new(in_channels)
            .with_out_channels(Some(self.out_channels))
            .with_temb_channels(Some(self.temb_channels))
            .with_groups(self.resnet_groups)
            .with_eps(self.resnet_eps)
    }

    fn transformer(&self) -> Transformer2DModelConfig {
        Transformer2DModelConfig::new(
            self.num_attention_heads,
            self.out_channels / self.num_attention_heads,
            self.out_channels,
        )
        .with_num_layers(self.transformer_layers_per_block)
        .with_cross_attention_dim(Some(self.cross_attention_dim))
        .with_norm_num_groups(self.resnet_groups)
        .with_use_linear_projection(self.use_linear_projection)
    }

    fn down_resnets<B: Backend>(&self, device: &B::Device) -> Vec<ResnetBlock2D<B>> {
        (0..self.num_layers)
            .map(|i| {
                let in_channels = if i == 0 {
                    self.in_channels
                } else {
                    self.out_channels
                };
                self.resnet(in_channels).init(device)
            })
            .collect()
    }

    fn downsamplers<B: Backend>(&self, device: &B::Device) -> Vec<Downsample2D<B>> {
        self.add_resample
            .then(|| {
                Downsample2DConfig::new(self.out_channels)
                    .with_padding(self.downsample_padding)
                    .init(device)
            })
            .into_iter()
            .collect()
    }

    /// ResNet `i` of an up block takes the previous state plus one skip: the last one comes
    /// from the block's own input level (`in_channels`), the others from `out_channels`.
    fn up_resnets<B: Backend>(&self, device: &B::Device) -> Vec<ResnetBlock2D<B>> {
        (0..self.num_layers)
            .map(|i| {
                let res_skip = if i == self.num_layers - 1 {
                    self.in_channels
                } else {
                    self.out_channels
                };
                let resnet_in = if i == 0 {
                    self.prev_output_channel
                } else {
                    self.out_channels
                };
                self.resnet(resnet_in + res_skip).init(device)
            })
            .collect()
    }

    fn upsamplers<B: Backend>(&self, device: &B::Device) -> Vec<Upsample2D<B>> {
        self.add_resample
            .then(|| Upsample2DConfig::new(self.out_channels).init(device))
            .into_iter()
            .collect()
    }

    /// Builds a [`CrossAttnDownBlock2D`].
    pub fn init_cross_attn_down<B: Backend>(&self, device: &B::Device) -> CrossAttnDownBlock2D<B> {
        CrossAttnDownBlock2D {
            resnets: self.down_resnets(device),
            attentions: (0..self.num_layers)
                .map(|_| self.transformer().init(device))
                .collect(),
            downsamplers: self.downsamplers(device),
        }
    }

    /// Builds a [`DownBlock2D`].
    pub fn init_down<B: Backend>(&self, device: &B::Device) -> DownBlock2D<B> {
        DownBlock2D {
            resnets: self.down_resnets(device),
            downsamplers: self.downsamplers(device),
        }
    }

    /// Builds a [`CrossAttnUpBlock2D`].
    pub fn init_cross_attn_up<B: Backend>(&self, device: &B::Device) -> CrossAttnUpBlock2D<B> {
        CrossAttnUpBlock2D {
            resnets: self.up_resnets(device),
            attentions: (0..self.num_layers)
                .map(|_| self.transformer().init(device))
                .collect(),
            upsamplers: self.upsamplers(device),
        }
    }

    /// Builds an [`UpBlock2D`].
    pub fn init_up<B: Backend>(&self, device: &B::Device) -> UpBlock2D<B> {
        UpBlock2D {
            resnets: self.up_resnets(device),
            upsamplers: self.upsamplers(device),
        }
    }

    /// Builds a [`UNetMidBlock2DCrossAttn`] with `num_layers` attention+ResNet pairs after the
    /// first ResNet (`in_channels` is used throughout).
    pub fn init_mid_cross_attn<B: Backend>(
        &self,
        device: &B::Device,
    ) -> UNetMidBlock2DCrossAttn<B> {
        let same = UNetBlockConfig {
            out_channels: self.in_channels,
            ..self.clone()
        };
        UNetMidBlock2DCrossAttn {
            resnets: (0..=self.num_layers)
                .map(|_| same.resnet(self.in_channels).init(device))
                .collect(),
            attentions: (0..self.num_layers)
                .map(|_| same.transformer().init(device))
                .collect(),
        }
    }
}

/// Runs `resnets` (and `attentions`, when present) in turn, collecting each output as a skip,
/// then the downsampler, whose output is also a skip.
fn down_forward<B: Backend>(
    resnets: &[ResnetBlock2D<B>],
    attentions: &[Transformer2DModel<B>],
    downsamplers: &[Downsample2D<B>],
    mut hidden_states: Tensor<B, 4>,
    temb: &Tensor<B, 2>,
    encoder_hidden_states: Option<&Tensor<B, 3>>,
) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
    let mut output_states = Vec::with_capacity(resnets.len() + 1);
    for (i, resnet) in resnets.iter().enumerate() {
        hidden_states = resnet.forward(hidden_states, Some(temb.clone()));
        if let Some(attn) = attentions.get(i) {
            hidden_states = attn.forward(hidden_states, encoder_hidden_states.cloned());
        }
        output_states.push(hidden_states.clone());
    }
    for downsampler in downsamplers {
        hidden_states = downsampler.forward(hidden_states);
        output_states.push(hidden_states.clone());
    }
    (hidden_states, output_states)
}

/// Concatenates the last skip to the state before each ResNet, consuming skips from the end.
#[allow(clippy::too_many_arguments)] // diffusers' up-block signature plus the module parts
fn up_forward<B: Backend>(
    resnets: &[ResnetBlock2D<B>],
    attentions: &[Transformer2DModel<B>],
    upsamplers: &[Upsample2D<B>],
    mut hidden_states: Tensor<B, 4>,
    mut res_hidden_states: Vec<Tensor<B, 4>>,
    temb: &Tensor<B, 2>,
    encoder_hidden_states: Option<&Tensor<B, 3>>,
    upsample_size: Option<[usize; 2]>,
) -> Tensor<B, 4> {
    assert_eq!(
        res_hidden_states.len(),
        resnets.len(),
        "an up block needs one skip connection per ResNet"
    );
    for (i, resnet) in resnets.iter().enumerate() {
        let skip = res_hidden_states.pop().expect("length checked above");
        // [batch, c_prev + c_skip, h, w]
        hidden_states = Tensor::cat(vec![hidden_states, skip], 1);
        hidden_states = resnet.forward(hidden_states, Some(temb.clone()));
        if let Some(attn) = attentions.get(i) {
            hidden_states = attn.forward(hidden_states, encoder_hidden_states.cloned());
        }
    }
    for upsampler in upsamplers {
        hidden_states = upsampler.forward(hidden_states, upsample_size);
    }
    hidden_states
}

/// ResNet + spatial transformer pairs, then an optional downsampler (SD levels 1-3).
#[derive(Module, Debug)]
pub struct CrossAttnDownBlock2D<B: Backend> {
    /// The ResNets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer after each ResNet.
    pub attentions: Vec<Transformer2DModel<B>>,
    /// Empty, or one [`Downsample2D`].
    pub downsamplers: Vec<Downsample2D<B>>,
}

impl<B: Backend> CrossAttnDownBlock2D<B> {
    /// Returns the output and the skip connections (one per ResNet, plus the downsampled state).
    ///
    /// # Shapes
    /// - hidden_states: `[batch, in_channels, h, w]`
    /// - temb: `[batch, temb_channels]`
    /// - encoder_hidden_states: `[batch, seq_text, cross_attention_dim]`
    /// - output: `[batch, out_channels, h / 2, w / 2]` (or `h, w` without downsampler)
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        encoder_hidden_states: Option<&Tensor<B, 3>>,
    ) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        down_forward(
            &self.resnets,
            &self.attentions,
            &self.downsamplers,
            hidden_states,
            temb,
            encoder_hidden_states,
        )
    }
}

/// ResNets, then an optional downsampler (SD's deepest level).
#[derive(Module, Debug)]
pub struct DownBlock2D<B: Backend> {
    /// The ResNets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Empty, or one [`Downsample2D`].
    pub downsamplers: Vec<Downsample2D<B>>,
}

impl<B: Backend> DownBlock2D<B> {
    /// Returns the output and the skip connections.
    ///
    /// # Shapes
    /// - hidden_states: `[batch, in_channels, h, w]`
    /// - temb: `[batch, temb_channels]`
    /// - output: `[batch, out_channels, h / 2, w / 2]` (or `h, w` without downsampler)
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
    ) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        down_forward(
            &self.resnets,
            &[],
            &self.downsamplers,
            hidden_states,
            temb,
            None,
        )
    }
}

/// ResNet, then (transformer, ResNet) pairs, at the lowest resolution.
#[derive(Module, Debug)]
pub struct UNetMidBlock2DCrossAttn<B: Backend> {
    /// `num_layers + 1` ResNets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `num_layers` transformers.
    pub attentions: Vec<Transformer2DModel<B>>,
}

impl<B: Backend> UNetMidBlock2DCrossAttn<B> {
    /// # Shapes
    /// - hidden_states: `[batch, channels, h, w]`
    /// - temb: `[batch, temb_channels]`
    /// - encoder_hidden_states: `[batch, seq_text, cross_attention_dim]`
    /// - output: `[batch, channels, h, w]`
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        encoder_hidden_states: Option<&Tensor<B, 3>>,
    ) -> Tensor<B, 4> {
        let mut hidden_states = self.resnets[0].forward(hidden_states, Some(temb.clone()));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            hidden_states = attn.forward(hidden_states, encoder_hidden_states.cloned());
            hidden_states = resnet.forward(hidden_states, Some(temb.clone()));
        }
        hidden_states
    }
}

/// (skip concat, ResNet, transformer) triples, then an optional upsampler.
#[derive(Module, Debug)]
pub struct CrossAttnUpBlock2D<B: Backend> {
    /// The ResNets (`layers_per_block + 1`).
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer after each ResNet.
    pub attentions: Vec<Transformer2DModel<B>>,
    /// Empty, or one [`Upsample2D`].
    pub upsamplers: Vec<Upsample2D<B>>,
}

impl<B: Backend> CrossAttnUpBlock2D<B> {
    /// `res_hidden_states` are this block's skips in down-pass order (the last is used first).
    ///
    /// # Shapes
    /// - hidden_states: `[batch, prev_output_channel, h, w]`
    /// - res_hidden_states: one `[batch, c_i, h, w]` per ResNet
    /// - output: `[batch, out_channels, 2h, 2w]` (or `upsample_size`, or `h, w` without upsampler)
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 4>,
        res_hidden_states: Vec<Tensor<B, 4>>,
        temb: &Tensor<B, 2>,
        encoder_hidden_states: Option<&Tensor<B, 3>>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        up_forward(
            &self.resnets,
            &self.attentions,
            &self.upsamplers,
            hidden_states,
            res_hidden_states,
            temb,
            encoder_hidden_states,
            upsample_size,
        )
    }
}

/// (skip concat, ResNet) pairs, then an optional upsampler.
#[derive(Module, Debug)]
pub struct UpBlock2D<B: Backend> {
    /// The ResNets (`layers_per_block + 1`).
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Empty, or one [`Upsample2D`].
    pub upsamplers: Vec<Upsample2D<B>>,
}

impl<B: Backend> UpBlock2D<B> {
    /// # Shapes
    /// - hidden_states: `[batch, prev_output_channel, h, w]`
    /// - res_hidden_states: one `[batch, c_i, h, w]` per ResNet
    /// - output: `[batch, out_channels, 2h, 2w]` (or `upsample_size`, or `h, w` without upsampler)
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 4>,
        res_hidden_states: Vec<Tensor<B, 4>>,
        temb: &Tensor<B, 2>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        up_forward(
            &self.resnets,
            &[],
            &self.upsamplers,
            hidden_states,
            res_hidden_states,
            temb,
            None,
            upsample_size,
        )
    }
}

/// A UNet down block of either type (diffusers picks the class by name in `get_down_block`).
/// The variant name is not part of the weight keys (`skip_enum_variants`).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum UNetDownBlock<B: Backend> {
    /// `"CrossAttnDownBlock2D"`.
    CrossAttnDownBlock2D(CrossAttnDownBlock2D<B>),
    /// `"DownBlock2D"`.
    DownBlock2D(DownBlock2D<B>),
}

impl<B: Backend> UNetDownBlock<B> {
    /// Runs the block; see [`CrossAttnDownBlock2D::forward`].
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        encoder_hidden_states: Option<&Tensor<B, 3>>,
    ) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        match self {
            Self::CrossAttnDownBlock2D(b) => b.forward(hidden_states, temb, encoder_hidden_states),
            Self::DownBlock2D(b) => b.forward(hidden_states, temb),
        }
    }

    /// ResNets in the block: the number of skips it produces, less the downsampler's.
    pub fn num_resnets(&self) -> usize {
        match self {
            Self::CrossAttnDownBlock2D(b) => b.resnets.len(),
            Self::DownBlock2D(b) => b.resnets.len(),
        }
    }
}

/// A UNet up block of either type (diffusers' `get_up_block`).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum UNetUpBlock<B: Backend> {
    /// `"CrossAttnUpBlock2D"`.
    CrossAttnUpBlock2D(CrossAttnUpBlock2D<B>),
    /// `"UpBlock2D"`.
    UpBlock2D(UpBlock2D<B>),
}

impl<B: Backend> UNetUpBlock<B> {
    /// Runs the block; see [`CrossAttnUpBlock2D::forward`].
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 4>,
        res_hidden_states: Vec<Tensor<B, 4>>,
        temb: &Tensor<B, 2>,
        encoder_hidden_states: Option<&Tensor<B, 3>>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        match self {
            Self::CrossAttnUpBlock2D(b) => b.forward(
                hidden_states,
                res_hidden_states,
                temb,
                encoder_hidden_states,
                upsample_size,
            ),
            Self::UpBlock2D(b) => b.forward(hidden_states, res_hidden_states, temb, upsample_size),
        }
    }

    /// ResNets in the block: the number of skips it consumes.
    pub fn num_resnets(&self) -> usize {
        match self {
            Self::CrossAttnUpBlock2D(b) => b.resnets.len(),
            Self::UpBlock2D(b) => b.resnets.len(),
        }
    }
}

/// Settings of the VAE's blocks (no time embedding; epsilon 1e-6 as diffusers' VAE).
#[derive(Config, Debug, PartialEq)]
pub struct VaeBlockConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// ResNets in the block.
    #[config(default = 2)]
    pub num_layers: usize,
    /// GroupNorm groups.
    #[config(default = 32)]
    pub resnet_groups: usize,
    /// GroupNorm epsilon.
    #[config(default = 1e-6)]
    pub resnet_eps: f64,
    /// End with a resampler.
    #[config(default = true)]
    pub add_resample: bool,
    /// Mid block: include the self-attention (`mid_block_add_attention`).
    #[config(default = true)]
    pub add_attention: bool,
}

impl VaeBlockConfig {
    fn resnets<B: Backend>(&self, device: &B::Device) -> Vec<ResnetBlock2D<B>> {
        (0..self.num_layers)
            .map(|i| {
                let in_channels = if i == 0 {
                    self.in_channels
                } else {
                    self.out_channels
                };
                ResnetBlock2DConfig::new(in_channels)
                    .with_out_channels(Some(self.out_channels))
                    .with_temb_channels(None)
                    .with_groups(self.resnet_groups)
                    .with_eps(self.resnet_eps)
                    .init(device)
            })
            .collect()
    }

    /// Builds a [`DownEncoderBlock2D`] (downsampling with diffusers' `padding=0`).
    pub fn init_down_encoder<B: Backend>(&self, device: &B::Device) -> DownEncoderBlock2D<B> {
        DownEncoderBlock2D {
            resnets: self.resnets(device),
            downsamplers: self
                .add_resample
                .then(|| {
                    Downsample2DConfig::new(self.out_channels)
                        .with_padding(0)
                        .init(device)
                })
                .into_iter()
                .collect(),
        }
    }

    /// Builds an [`UpDecoderBlock2D`].
    pub fn init_up_decoder<B: Backend>(&self, device: &B::Device) -> UpDecoderBlock2D<B> {
        UpDecoderBlock2D {
            resnets: self.resnets(device),
            upsamplers: self
                .add_resample
                .then(|| Upsample2DConfig::new(self.out_channels).init(device))
                .into_iter()
                .collect(),
        }
    }

    /// Builds a [`UNetMidBlock2D`] on `in_channels`: ResNet, single-head self-attention over
    /// all channels (`attention_head_dim = in_channels`), ResNet.
    pub fn init_mid<B: Backend>(&self, device: &B::Device) -> UNetMidBlock2D<B> {
        let c = self.in_channels;
        let same = VaeBlockConfig {
            out_channels: c,
            num_layers: 2,
            ..self.clone()
        };
        UNetMidBlock2D {
            resnets: same.resnets(device),
            attentions: self
                .add_attention
                .then(|| {
                    AttentionConfig::new(c)
                        .with_heads(1)
                        .with_dim_head(c)
                        .with_bias(true)
                        .with_norm_num_groups(Some(self.resnet_groups))
                        .with_eps(self.resnet_eps)
                        .with_residual_connection(true)
                        .init(device)
                })
                .into_iter()
                .collect(),
        }
    }
}

/// VAE encoder stage: ResNets without time embedding, then an optional downsampler.
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D<B: Backend> {
    /// The ResNets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Empty, or one [`Downsample2D`] (asymmetric padding).
    pub downsamplers: Vec<Downsample2D<B>>,
}

impl<B: Backend> DownEncoderBlock2D<B> {
    /// # Shapes
    /// - hidden_states: `[batch, in_channels, h, w]`
    /// - output: `[batch, out_channels, h / 2, w / 2]` (or `h, w` without downsampler)
    pub fn forward(&self, mut hidden_states: Tensor<B, 4>) -> Tensor<B, 4> {
        for resnet in &self.resnets {
            hidden_states = resnet.forward(hidden_states, None);
        }
        for downsampler in &self.downsamplers {
            hidden_states = downsampler.forward(hidden_states);
        }
        hidden_states
    }
}

/// VAE decoder stage: ResNets without time embedding, then an optional upsampler.
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D<B: Backend> {
    /// The ResNets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Empty, or one [`Upsample2D`].
    pub upsamplers: Vec<Upsample2D<B>>,
}

impl<B: Backend> UpDecoderBlock2D<B> {
    /// # Shapes
    /// - hidden_states: `[batch, in_channels, h, w]`
    /// - output: `[batch, out_channels, 2h, 2w]` (or `h, w` without upsampler)
    pub fn forward(&self, mut hidden_states: Tensor<B, 4>) -> Tensor<B, 4> {
        for resnet in &self.resnets {
            hidden_states = resnet.forward(hidden_states, None);
        }
        for upsampler in &self.upsamplers {
            hidden_states = upsampler.forward(hidden_states, None);
        }
        hidden_states
    }
}

/// The VAE's bottleneck: ResNet, self-attention over pixels, ResNet.
#[derive(Module, Debug)]
pub struct UNetMidBlock2D<B: Backend> {
    /// Two ResNets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Empty, or one single-head [`Attention`] with `group_norm` and residual connection.
    pub attentions: Vec<Attention<B>>,
}

impl<B: Backend> UNetMidBlock2D<B> {
    /// # Shapes
    /// - hidden_states: `[batch, channels, h, w]`
    /// - output: `[batch, channels, h, w]`
    pub fn forward(&self, hidden_states: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut hidden_states = self.resnets[0].forward(hidden_states, None);
        for (i, resnet) in self.resnets[1..].iter().enumerate() {
            if let Some(attn) = self.attentions.get(i) {
                hidden_states = attn.forward_image(hidden_states);
            }
            hidden_states = resnet.forward(hidden_states, None);
        }
        hidden_states
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    type B = NdArray<f32>;

    #[test]
    fn down_and_up_blocks_hand_skips_over() {
        let device = Default::default();
        let down = UNetBlockConfig::new(8, 16, 12)
            .with_num_layers(2)
            .with_resnet_groups(4)
            .with_num_attention_heads(2)
            .with_cross_attention_dim(6)
            .init_cross_attn_down::<B>(&device);
        let x = Tensor::<B, 4>::random([1, 8, 4, 4], Distribution::Default, &device);
        let temb = Tensor::<B, 2>::random([1, 12], Distribution::Default, &device);
        let ctx = Tensor::<B, 3>::random([1, 3, 6], Distribution::Default, &device);
        let (h, skips) = down.forward(x, &temb, Some(&ctx));
        assert_eq!(h.dims(), [1, 16, 2, 2]);
        assert_eq!(skips.len(), 3);

        // Up block at the same level: prev 16 channels, skips [16, 16, 16] from the end.
        let up = UNetBlockConfig::new(16, 16, 12)
            .with_prev_output_channel(16)
            .with_num_layers(3)
            .with_resnet_groups(4)
            .with_add_resample(false)
            .init_up::<B>(&device);
        let out = up.forward(
            Tensor::random([1, 16, 2, 2], Distribution::Default, &device),
            vec![h.clone(), h.clone(), h],
            &temb,
            None,
        );
        assert_eq!(out.dims(), [1, 16, 2, 2]);
    }

    #[test]
    fn vae_mid_block_keeps_shape() {
        let device = Default::default();
        let mid = VaeBlockConfig::new(8, 8)
            .with_resnet_groups(4)
            .init_mid::<B>(&device);
        assert_eq!(mid.resnets.len(), 2);
        let x = Tensor::<B, 4>::random([2, 8, 3, 3], Distribution::Default, &device);
        assert_eq!(mid.forward(x).dims(), [2, 8, 3, 3]);
    }
}
