//! FLOPs of one forward pass of each model the guidance runs, counted from its config the way
//! PyTorch's `FlopCounterMode` counts (2 per multiply-add in matrix products, convolutions and
//! attention; elementwise work, norms and biases not counted). Checked to the FLOP against
//! PyTorch's counter on the full-size models (`tools/cost/torch_flop_counts.py`).

use crate::models::autoencoder_tiny::AutoencoderTinyConfig;
use crate::models::clip_vision::CLIPVisionConfig;
use crate::models::image_reward::{ImageRewardConfig, MLP_WIDTHS};
use crate::models::unet_2d::{DownBlockType, UNet2DConditionModelConfig, UpBlockType};
use crate::models::vae::AutoencoderKLConfig;
use crate::scene::nerf::NerfConfig;

/// A convolution with a `k x k` kernel writing `out_side^2` positions per sample.
pub fn conv2d(in_channels: usize, out_channels: usize, k: usize, out_side: usize) -> f64 {
    2.0 * (in_channels * out_channels * k * k) as f64 * (out_side * out_side) as f64
}

/// A linear layer applied to `rows` vectors.
pub fn linear(rows: usize, in_features: usize, out_features: usize) -> f64 {
    2.0 * rows as f64 * in_features as f64 * out_features as f64
}

/// Scores and weighted sum of attention (all heads together: the head split does not change
/// the count): `q_tokens` queries over `kv_tokens` keys, `width` channels.
pub fn attention(q_tokens: usize, kv_tokens: usize, width: usize) -> f64 {
    4.0 * q_tokens as f64 * kv_tokens as f64 * width as f64
}

/// Per sample, what a UNet forward sees besides its config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UNetInput {
    /// Side of the latent.
    pub latent_side: usize,
    /// Text tokens of the context (77 for CLIP).
    pub text_tokens: usize,
    /// Views denoised together (MVDream's `num_frames`: self-attention over all of their
    /// tokens); 1 for an image prior.
    pub num_frames: usize,
}

/// One UNet forward, per sample.
pub fn unet_forward(config: &UNet2DConditionModelConfig, input: UNetInput) -> f64 {
    let boc = &config.block_out_channels;
    let levels = boc.len();
    let temb = config.time_embed_dim();
    let frames = input.num_frames.max(1);
    let resnet = |cin: usize, cout: usize, side: usize| {
        let shortcut = if cin != cout {
            conv2d(cin, cout, 1, side)
        } else {
            0.0
        };
        conv2d(cin, cout, 3, side) + conv2d(cout, cout, 3, side) + linear(1, temb, cout) + shortcut
    };
    let transformer = |level: usize, c: usize, side: usize| {
        let tokens = side * side;
        let context = config.cross_attention_dim.get(level);
        let text = input.text_tokens;
        let block = 4.0 * linear(tokens, c, c)
            + attention(tokens, tokens * frames, c)
            + 2.0 * linear(tokens, c, c)
            + 2.0 * linear(text, context, c)
            + attention(tokens, text, c)
            + linear(tokens, c, 8 * c)
            + linear(tokens, 4 * c, c);
        2.0 * linear(tokens, c, c) + config.transformer_layers_per_block.get(level) as f64 * block
    };

    let mut side = input.latent_side;
    let mut flops = conv2d(config.in_channels, boc[0], 3, side)
        + linear(1, boc[0], temb)
        + linear(1, temb, temb);
    if let Some(width) = config.class_labels_width() {
        flops += linear(1, width, temb) + linear(1, temb, temb);
    }
    let mut skips = vec![boc[0]];
    let mut channels = boc[0];
    for (level, &c) in boc.iter().enumerate() {
        let attn = config.down_block_types[level] == DownBlockType::CrossAttnDownBlock2D;
        for _ in 0..config.layers_per_block.get(level) {
            flops += resnet(channels, c, side);
            channels = c;
            if attn {
                flops += transformer(level, c, side);
            }
            skips.push(c);
        }
        if level + 1 < levels {
            side /= 2;
            flops += conv2d(c, c, 3, side);
            skips.push(c);
        }
    }
    flops += 2.0 * resnet(channels, channels, side) + transformer(levels - 1, channels, side);
    for (i, &up) in config.up_block_types.iter().enumerate() {
        let level = levels - 1 - i;
        let c = boc[level];
        for _ in 0..=config.layers_per_block.get(level) {
            let skip = skips.pop().unwrap_or(0);
            flops += resnet(channels + skip, c, side);
            channels = c;
            if up == UpBlockType::CrossAttnUpBlock2D {
                flops += transformer(level, c, side);
            }
        }
        if level > 0 {
            side *= 2;
            flops += conv2d(c, c, 3, side);
        }
    }
    flops + conv2d(boc[0], config.out_channels, 3, side)
}

fn vae_resnet(cin: usize, cout: usize, side: usize) -> f64 {
    let shortcut = if cin != cout {
        conv2d(cin, cout, 1, side)
    } else {
        0.0
    };
    conv2d(cin, cout, 3, side) + conv2d(cout, cout, 3, side) + shortcut
}

fn vae_mid(c: usize, side: usize) -> f64 {
    let tokens = side * side;
    2.0 * vae_resnet(c, c, side) + 4.0 * linear(tokens, c, c) + attention(tokens, tokens, c)
}

/// The VAE's encoder (to the posterior mean), per image of `image_side` pixels.
pub fn vae_encode(config: &AutoencoderKLConfig, image_side: usize) -> f64 {
    let boc = &config.block_out_channels;
    let mut side = image_side;
    let mut flops = conv2d(config.in_channels, boc[0], 3, side);
    let mut channels = boc[0];
    for (level, &c) in boc.iter().enumerate() {
        for _ in 0..config.layers_per_block {
            flops += vae_resnet(channels, c, side);
            channels = c;
        }
        if level + 1 < boc.len() {
            side /= 2;
            flops += conv2d(c, c, 3, side);
        }
    }
    let moments = 2 * config.latent_channels;
    flops
        + vae_mid(channels, side)
        + conv2d(channels, moments, 3, side)
        + conv2d(moments, moments, 1, side)
}

/// The VAE's encoder forward and its backward to the image (not to the weights), per image:
/// each convolution and linear layer once more, the mid attention twice more.
pub fn vae_encode_backward(config: &AutoencoderKLConfig, image_side: usize) -> f64 {
    let mid = config.block_out_channels.len() - 1;
    let side = image_side >> mid;
    let tokens = side * side;
    2.0 * vae_encode(config, image_side) + attention(tokens, tokens, config.block_out_channels[mid])
}

/// The VAE's decoder, per image of `image_side` pixels.
pub fn vae_decode(config: &AutoencoderKLConfig, image_side: usize) -> f64 {
    let boc = &config.block_out_channels;
    let latent = config.latent_channels;
    let mut side = image_side >> (boc.len() - 1);
    let mut channels = boc[boc.len() - 1];
    let mut flops = conv2d(latent, latent, 1, side)
        + conv2d(latent, channels, 3, side)
        + vae_mid(channels, side);
    for (i, &c) in boc.iter().rev().enumerate() {
        for _ in 0..=config.layers_per_block {
            flops += vae_resnet(channels, c, side);
            channels = c;
        }
        if i + 1 < boc.len() {
            side *= 2;
            flops += conv2d(c, c, 3, side);
        }
    }
    flops + conv2d(channels, config.out_channels, 3, side)
}

/// TAESD's decoder (diffusers' `AutoencoderTiny`) from a latent of `latent_side`, per image:
/// an input convolution, then per stage its blocks (3 convolutions each), an upsampling and
/// a convolution.
pub fn taesd_decode(config: &AutoencoderTinyConfig, latent_side: usize) -> f64 {
    let width = config.decoder_block_out_channels[0];
    let mut side = latent_side;
    let mut flops = conv2d(config.latent_channels, width, 3, side);
    let last = config.num_decoder_blocks.len() - 1;
    for (i, &blocks) in config.num_decoder_blocks.iter().enumerate() {
        flops += 3.0 * blocks as f64 * conv2d(width, width, 3, side);
        if i < last {
            side *= config.upsampling_scaling_factor;
            flops += conv2d(width, width, 3, side);
        } else {
            flops += conv2d(width, config.out_channels, 3, side);
        }
    }
    flops
}

/// A pre-norm ViT over `tokens` tokens: `layers` blocks of attention and an MLP.
fn vit_blocks(tokens: usize, width: usize, mlp: usize, layers: usize) -> f64 {
    layers as f64
        * (4.0 * linear(tokens, width, width)
            + attention(tokens, tokens, width)
            + linear(tokens, width, mlp)
            + linear(tokens, mlp, width))
}

/// CLIP's image tower with its projection, per image.
pub fn clip_vision(config: &CLIPVisionConfig) -> f64 {
    let patches = (config.image_size / config.patch_size).pow(2);
    let width = config.hidden_size;
    conv2d(config.num_channels, width, config.patch_size, 1) * patches as f64
        + vit_blocks(
            patches + 1,
            width,
            config.intermediate_size,
            config.num_hidden_layers,
        )
        + linear(1, width, config.projection_dim)
}

/// ImageReward per image: BLIP's ViT, the BERT text tower cross-attending to the image tokens
/// over `text_tokens` (upstream pads to 35) and the MLP head.
pub fn image_reward(config: &ImageRewardConfig, text_tokens: usize) -> f64 {
    let v = &config.vision;
    let patches = (v.img_size / v.patch_size).pow(2);
    let image_tokens = patches + 1;
    let mlp = (v.embed_dim as f64 * v.mlp_ratio) as usize;
    let vision = conv2d(v.in_chans, v.embed_dim, v.patch_size, 1) * patches as f64
        + vit_blocks(image_tokens, v.embed_dim, mlp, v.depth);
    let t = config.text_config();
    let (n, h) = (text_tokens, t.hidden_size);
    let layer = 4.0 * linear(n, h, h)
        + attention(n, n, h)
        + 2.0 * linear(n, h, h)
        + 2.0 * linear(image_tokens, t.encoder_width, h)
        + attention(n, image_tokens, h)
        + linear(n, h, t.intermediate_size)
        + linear(n, t.intermediate_size, h);
    let mut head = 0.0;
    let mut width = h;
    for &out in &MLP_WIDTHS {
        head += linear(1, width, out);
        width = out;
    }
    vision + t.num_hidden_layers as f64 * layer + head
}

/// The NeRF per sample point, forward: the hash grid's interpolation (8 corners per level and
/// feature) and the density and colour MLPs. Counted the same way (multiply-adds x 2).
pub fn nerf_sample(config: &NerfConfig) -> f64 {
    let input = config.encoding.output_dim();
    let h = config.hidden;
    let mlp = |out: usize| {
        linear(1, input, h)
            + config.n_hidden_layers.saturating_sub(1) as f64 * linear(1, h, h)
            + linear(1, h, out)
    };
    2.0 * 8.0 * input as f64 + mlp(1) + mlp(3)
}
