//! Low-rank adapters (diffusers `models/lora.py` `LoRALinearLayer`, and the old
//! `LoRAAttnProcessor`'s four adapters of one attention layer), for VSD's LoRA of the prior's
//! UNet (ProlificDreamer, arXiv 2305.16213).
//!
//! An adapter adds `scale * up(down(x))` to a frozen linear layer's output. `up` starts at
//! zero, so an adapted model predicts exactly as the frozen one until trained; `down` starts
//! normal with standard deviation `1 / rank`, as diffusers initialises it.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::Rng;

use super::matmul::linear;

/// Settings of [`LoRALinearLayer`].
#[derive(Config, Debug, PartialEq)]
pub struct LoRALinearLayerConfig {
    /// Input features of the adapted layer.
    pub in_features: usize,
    /// Output features of the adapted layer.
    pub out_features: usize,
    /// Rank of the update (diffusers' default: 4).
    #[config(default = 4)]
    pub rank: usize,
    /// `network_alpha`: the update is scaled by `alpha / rank`; `None` scales by 1.
    #[config(default = "None")]
    pub network_alpha: Option<f64>,
}

impl LoRALinearLayerConfig {
    /// `down` normal with std `1 / rank`, drawn from `rng` (so a run is reproducible), `up`
    /// zero (the adapter starts as a no-op).
    pub fn init<B: Backend>(&self, rng: &mut impl Rng, device: &B::Device) -> LoRALinearLayer<B> {
        let std = 1.0 / self.rank as f32;
        let values: Vec<f32> = crate::guidance::standard_normal(rng, self.in_features * self.rank)
            .into_iter()
            .map(|v| v * std)
            .collect();
        let mut down = LinearConfig::new(self.in_features, self.rank)
            .with_bias(false)
            .init(device);
        down.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(values, [self.in_features, self.rank]),
            device,
        ));
        let mut up = LinearConfig::new(self.rank, self.out_features)
            .with_bias(false)
            .init(device);
        up.weight = Param::from_tensor(Tensor::zeros([self.rank, self.out_features], device));
        LoRALinearLayer {
            down,
            up,
            scale: self.network_alpha.map_or(1.0, |a| a / self.rank as f64),
        }
    }
}

/// `scale * up(down(x))`: the low-rank update of one linear layer.
#[derive(Module, Debug)]
pub struct LoRALinearLayer<B: Backend> {
    /// `in_features -> rank`, no bias.
    pub down: Linear<B>,
    /// `rank -> out_features`, no bias; zero at the start.
    pub up: Linear<B>,
    /// `network_alpha / rank` (1 without an alpha).
    pub scale: f64,
}

impl<B: Backend> LoRALinearLayer<B> {
    /// The update to add to the adapted layer's output.
    ///
    /// # Shapes
    /// - x: `[..., in_features]` -> `[..., out_features]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let out = linear(&self.up, linear(&self.down, x));
        if self.scale == 1.0 {
            out
        } else {
            out * self.scale
        }
    }

    /// Trainable parameters.
    pub fn num_trainable(&self) -> usize {
        self.down.weight.dims().iter().product::<usize>()
            + self.up.weight.dims().iter().product::<usize>()
    }
}

/// The adapters of one attention layer's four projections (diffusers' `LoRAAttnProcessor`
/// names: `to_q_lora`, `to_k_lora`, `to_v_lora`, `to_out_lora`).
#[derive(Module, Debug)]
pub struct AttentionLoRA<B: Backend> {
    /// Adapter of `to_q`.
    pub to_q_lora: LoRALinearLayer<B>,
    /// Adapter of `to_k`.
    pub to_k_lora: LoRALinearLayer<B>,
    /// Adapter of `to_v`.
    pub to_v_lora: LoRALinearLayer<B>,
    /// Adapter of `to_out.0`.
    pub to_out_lora: LoRALinearLayer<B>,
}

impl<B: Backend> AttentionLoRA<B> {
    /// Adapters of rank `rank` for an attention layer with these projections, `down` drawn
    /// from `rng`.
    pub fn new(
        [to_q, to_k, to_v, to_out]: [&Linear<B>; 4],
        rank: usize,
        rng: &mut impl Rng,
        device: &B::Device,
    ) -> Self {
        let mut adapter = |layer: &Linear<B>| {
            // burn's Linear weight is `[in, out]`.
            let [d_in, d_out] = layer.weight.dims();
            LoRALinearLayerConfig::new(d_in, d_out)
                .with_rank(rank)
                .init(rng, device)
        };
        Self {
            to_q_lora: adapter(to_q),
            to_k_lora: adapter(to_k),
            to_v_lora: adapter(to_v),
            to_out_lora: adapter(to_out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    type B = NdArray<f32>;

    #[test]
    fn starts_as_a_no_op_and_is_low_rank() {
        let device = Default::default();
        let mut rng = StdRng::seed_from_u64(0);
        let lora = LoRALinearLayerConfig::new(12, 7)
            .with_rank(3)
            .init::<B>(&mut rng, &device);
        assert_eq!(lora.down.weight.dims(), [12, 3]);
        assert_eq!(lora.up.weight.dims(), [3, 7]);
        assert_eq!(lora.num_trainable(), 12 * 3 + 3 * 7);
        let x = Tensor::<B, 3>::random([2, 5, 12], Distribution::Normal(0.0, 1.0), &device);
        let out = lora.forward(x.clone());
        assert_eq!(out.dims(), [2, 5, 7]);
        assert_eq!(out.abs().max().into_scalar(), 0.0);
        // down's spread follows 1 / rank (36 draws: a loose bound); the same seed, the same
        // adapter
        let again = LoRALinearLayerConfig::new(12, 7)
            .with_rank(3)
            .init::<B>(&mut StdRng::seed_from_u64(0), &device);
        assert_eq!(
            again.down.weight.val().into_data(),
            lora.down.weight.val().into_data()
        );
        let std = lora.down.weight.val().var(0).mean().sqrt().into_scalar();
        assert!((0.15..0.6).contains(&std), "std {std}");
        // Once up moves, the update is rank 3 and scaled by alpha / rank.
        let mut scaled = LoRALinearLayerConfig::new(12, 7)
            .with_rank(3)
            .with_network_alpha(Some(6.0))
            .init::<B>(&mut rng, &device);
        scaled.up.weight = Param::from_tensor(Tensor::ones([3, 7], &device));
        let mut plain = scaled.clone();
        plain.scale = 1.0;
        let a = scaled.forward(x.clone());
        let b = plain.forward(x) * 2.0;
        assert!(a.sub(b).abs().max().into_scalar() < 1e-5);
    }
}
