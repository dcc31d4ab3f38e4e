//! Exponential moving average of a model's weights, as diffusers' `EMAModel` keeps for every
//! diffusion model it trains: samples from the averaged weights are far less noisy than from
//! the last step's, which still carry the optimiser's step-to-step jitter.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The averaged copy of a model: `ema = d ema + (1 - d) live` after each optimiser step.
#[derive(Debug, Clone)]
pub struct Ema<M> {
    model: M,
    decay: f32,
    updates: usize,
}

impl<M> Ema<M> {
    /// Starts the average at `model`. `decay` 0 keeps the live weights (no averaging).
    pub fn new(model: M, decay: f32) -> Self {
        Self {
            model,
            decay: decay.clamp(0.0, 1.0),
            updates: 0,
        }
    }

    /// The decay of the next update: diffusers' warm-up `(1 + u) / (10 + u)` after `u`
    /// updates, capped at the configured decay, so the first updates follow the live weights
    /// instead of averaging in the random initialisation.
    pub fn current_decay(&self) -> f32 {
        let u = self.updates as f32;
        ((1.0 + u) / (10.0 + u)).min(self.decay)
    }

    /// The averaged model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The averaged model, by value.
    pub fn into_model(self) -> M {
        self.model
    }

    /// Updates the average towards `live` (same module structure: the parameters are paired
    /// in visiting order).
    pub fn update<B: Backend>(&mut self, live: &M)
    where
        M: Module<B> + Clone,
    {
        let decay = self.current_decay();
        self.updates += 1;
        let mut collect = Collect::<B>(Vec::new());
        live.visit(&mut collect);
        let mut blend = Blend {
            live: collect.0.into_iter(),
            decay,
        };
        self.model = self.model.clone().map(&mut blend);
        assert!(
            blend.live.next().is_none(),
            "Ema::update: the live model has more parameters than the average"
        );
    }
}

/// Every float parameter, flattened, in visiting order.
struct Collect<B: Backend>(Vec<Tensor<B, 1>>);

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().reshape([-1]));
    }
}

/// Blends each parameter with the next collected live one.
struct Blend<B: Backend> {
    live: std::vec::IntoIter<Tensor<B, 1>>,
    decay: f32,
}

impl<B: Backend> ModuleMapper<B> for Blend<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, average, mapper) = param.consume();
        let live = self
            .live
            .next()
            .expect("Ema::update: the live model has fewer parameters than the average")
            .reshape(average.dims());
        let blended = average.mul_scalar(self.decay) + live.mul_scalar(1.0 - self.decay);
        Param::from_mapped_value(id, blended, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::nn::{Linear, LinearConfig};

    type B = NdArray<f32>;

    fn weights(m: &Linear<B>) -> Vec<f32> {
        let mut all: Vec<f32> = m.weight.val().into_data().to_vec().unwrap();
        all.extend(
            m.bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        );
        all
    }

    #[test]
    fn warms_up_then_caps_at_the_decay() {
        let device = Default::default();
        let model = LinearConfig::new(2, 2).init::<B>(&device);
        let mut ema = Ema::new(model.clone(), 0.5);
        assert!((ema.current_decay() - 0.1).abs() < 1e-7);
        ema.update::<B>(&model);
        assert!((ema.current_decay() - 2.0 / 11.0).abs() < 1e-7);
        for _ in 0..20 {
            ema.update::<B>(&model);
        }
        assert_eq!(ema.current_decay(), 0.5);
        assert_eq!(Ema::new(model, 0.0).current_decay(), 0.0);
    }

    #[test]
    fn blends_every_parameter_towards_the_live_model() {
        let device = Default::default();
        let start = LinearConfig::new(3, 2).init::<B>(&device);
        let live = LinearConfig::new(3, 2).init::<B>(&device);
        let (a, b) = (weights(&start), weights(&live));
        assert_ne!(a, b);
        let mut ema = Ema::new(start, 0.9);
        let d = ema.current_decay();
        ema.update::<B>(&live);
        let got = weights(ema.model());
        for ((g, a), b) in got.iter().zip(&a).zip(&b) {
            assert!(
                (g - (d * a + (1.0 - d) * b)).abs() < 1e-6,
                "{g} vs {a}, {b}"
            );
        }
        // Decay 0: the average is the live model.
        let mut none = Ema::new(LinearConfig::new(3, 2).init::<B>(&device), 0.0);
        none.update::<B>(&live);
        assert_eq!(weights(none.model()), b);
    }
}
