//! Adam / AdamW with a learning rate per parameter group.
//!
//! SDS wants the hash-grid entries to move ten times faster than the MLPs (threestudio:
//! 0.01 vs 0.001). burn's optimisers take one learning rate per `step`, and keep their state
//! per parameter id; so one optimiser is stepped once per group with only that group's
//! gradients, which updates each parameter exactly once with its own rate.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{
    Adam, AdamConfig, AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer,
};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder, RecorderError};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam; `weight_decay` is added to the gradient (L2).
    Adam,
    /// AdamW; `weight_decay` is decoupled.
    AdamW,
}

/// Optimiser settings shared by all groups. Defaults are the paper's: AdamW, betas
/// (0.9, 0.99), eps 1e-15, no weight decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Update rule.
    pub kind: OptimizerKind,
    /// Adam's (beta1, beta2).
    pub betas: [f32; 2],
    /// Adam's epsilon.
    pub eps: f32,
    /// Weight decay (see [`OptimizerKind`]).
    pub weight_decay: f32,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::AdamW,
            betas: [0.9, 0.99],
            eps: 1e-15,
            weight_decay: 0.0,
        }
    }
}

impl OptimizerConfig {
    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (i, b) in self.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                return Err(format!("optimizer betas[{i}] = {b} must lie in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(format!("optimizer eps {} must be finite and > 0", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "optimizer weight_decay {} must be finite and >= 0",
                self.weight_decay
            ));
        }
        Ok(())
    }

    /// The optimiser for module type `M`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(&self) -> GroupedOptimizer<M, B> {
        let [beta_1, beta_2] = self.betas;
        let inner = match self.kind {
            OptimizerKind::Adam => {
                let decay =
                    (self.weight_decay > 0.0).then(|| WeightDecayConfig::new(self.weight_decay));
                Inner::Adam(
                    AdamConfig::new()
                        .with_beta_1(beta_1)
                        .with_beta_2(beta_2)
                        .with_epsilon(self.eps)
                        .with_weight_decay(decay)
                        .init(),
                )
            }
            OptimizerKind::AdamW => Inner::AdamW(
                AdamWConfig::new()
                    .with_beta_1(beta_1)
                    .with_beta_2(beta_2)
                    .with_epsilon(self.eps)
                    .with_weight_decay(self.weight_decay)
                    .init(),
            ),
        };
        GroupedOptimizer { inner }
    }
}

enum Inner<M: AutodiffModule<B>, B: AutodiffBackend> {
    Adam(OptimizerAdaptor<Adam, M, B>),
    AdamW(OptimizerAdaptor<AdamW, M, B>),
}

/// One gradient set with its learning rate.
pub struct ParamGroup {
    /// Name for logs ("encoding", "network", ...).
    pub name: &'static str,
    /// Learning rate of this group.
    pub lr: f64,
    /// Gradients of this group's parameters only.
    pub grads: GradientsParams,
}

/// Adds the groups of one backward pass to those of the passes before (`sum`, `None` at the
/// first), group by group in order; `module` holds every group's parameters.
pub fn add_groups<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    sum: Option<Vec<ParamGroup>>,
    new: Vec<ParamGroup>,
) -> Vec<ParamGroup> {
    let Some(sum) = sum else { return new };
    sum.into_iter()
        .zip(new)
        .map(|(a, b)| {
            debug_assert_eq!(a.name, b.name, "groups in the same order");
            let mut total = GradientsAccumulator::<M>::new();
            total.accumulate(module, a.grads);
            total.accumulate(module, b.grads);
            ParamGroup {
                grads: total.grads(),
                ..a
            }
        })
        .collect()
}

/// An optimiser stepped group by group.
pub struct GroupedOptimizer<M: AutodiffModule<B>, B: AutodiffBackend> {
    inner: Inner<M, B>,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> GroupedOptimizer<M, B> {
    /// Applies each group's gradients with its learning rate; parameters without gradients
    /// are left as they are.
    pub fn step(&mut self, mut module: M, groups: Vec<ParamGroup>) -> M {
        for group in groups {
            if group.grads.is_empty() || group.lr == 0.0 {
                continue;
            }
            module = match &mut self.inner {
                Inner::Adam(o) => o.step(group.lr, module, group.grads),
                Inner::AdamW(o) => o.step(group.lr, module, group.grads),
            };
        }
        module
    }

    /// The state of every parameter (Adam's moments and step count) as bytes: burn's named
    /// MessagePack record at full precision, keyed by parameter id, so a restored module must
    /// keep its ids (burn's module records do).
    pub fn state_bytes(&self) -> Result<Vec<u8>, RecorderError> {
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
        match &self.inner {
            Inner::Adam(o) => Recorder::<B>::record(&recorder, o.to_record(), ()),
            Inner::AdamW(o) => Recorder::<B>::record(&recorder, o.to_record(), ()),
        }
    }

    /// Restores the state written by [`state_bytes`](Self::state_bytes) by an optimiser of the
    /// same kind.
    pub fn load_state_bytes(
        self,
        bytes: Vec<u8>,
        device: &B::Device,
    ) -> Result<Self, RecorderError> {
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
        let inner = match self.inner {
            Inner::Adam(o) => Inner::Adam(o.load_record(recorder.load(bytes, device)?)),
            Inner::AdamW(o) => Inner::AdamW(o.load_record(recorder.load(bytes, device)?)),
        };
        Ok(Self { inner })
    }
}
