//! Variational score distillation (ProlificDreamer, arXiv 2305.16213) and RewardVSD: the
//! LoRA that stands in for SDS's sampled noise.
//!
//! VSD compares the prior's CFG prediction with a second estimate instead of the noise that
//! made `x_t`: a LoRA of the prior's own UNet, trained every step on the current renders with
//! the standard diffusion loss, so it learns the distribution the scene renders into:
//! `g = w(t) (eps_cfg(x_t, y) - eps_lora(x_t, y, camera))`. RewardVSD scores the `N` noisy
//! samples and weighs their gradients as RewardSDS does ([`super::Guidance::step`]).
//!
//! As the official 2D code (RewardSDS `2D_experiments/guidance.py`, `vsd` mode) and
//! threestudio's `stable-diffusion-vsd-guidance`: LoRA of rank 4 on the four projections of
//! every attention layer; a camera MLP 16 -> `time_embed_dim` -> `time_embed_dim` over the
//! flattened camera-to-world matrix, added to the time embedding; AdamW at lr 3e-4 without
//! weight decay on both; one training step per guidance step on the current (detached) image
//! with `t` uniform over `[0, T)`, fresh noise and the camera dropped (zeros) with probability
//! 0.1; the estimate reads the plain prompt (no view suffix) and the camera, LoRA CFG 1.
//!
//! Where we differ, and why: the LoRA adapts the prior's own UNet (threestudio's
//! single-model option; the official 2D code loads SD 2.1 768-v beside 2.1-base: twice the
//! memory), and the camera MLP's output layer starts at zero like the LoRA's `up`, so the
//! untrained LoRA predicts exactly as the prior (then the first VSD step is SDS minus
//! `w(t) (eps_cond - eps)`, which the tests check). The camera is the view's direction on
//! the unit sphere (our views carry no distance); in 2D the fixed front view (the official
//! code feeds zeros: either is a constant).

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::prior::{DiffusionPrior, chunked};
use super::prompts::ViewAngles;
use super::sds::standard_normal;
use super::{ConfigError, GuidanceError};
use crate::host_batch::map_batch_grouped;
use crate::models::PredictionType;
use crate::models::camera_utils::{CAMERA_DIM, create_camera_to_world_matrix, flatten};
use crate::models::embeddings::{TimestepEmbedding, TimestepEmbeddingConfig};
use crate::models::unet_2d::UNet2DConditionModel;
use crate::optim::{GroupedOptimizer, OptimizerConfig, OptimizerKind, ParamGroup};

/// Xored into a step's seed for the LoRA's training draw (timesteps, noise, camera dropout).
pub const LORA_STREAM: u64 = 0xD1B5_4A32_D192_ED03;
/// Seed of the LoRA's initial `down` weights and camera MLP: every run starts alike.
const LORA_INIT_SEED: u64 = 0x5653_445F_4C4F_5241;

/// VSD's settings (`guidance.vsd`); defaults are the official 2D `vsd` mode's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VsdConfig {
    /// Rank of the LoRA adapters (4, diffusers' `LoRAAttnProcessor` default).
    pub lora_rank: usize,
    /// AdamW learning rate of the LoRA and its camera MLP (3e-4).
    pub lora_lr: f64,
    /// Probability that a LoRA training step drops the camera (0.1, `lora_cfg_training`).
    pub camera_dropout: f64,
    /// Timesteps per view the LoRA trains on each step (1, `lora_n_timestamp_samples`).
    pub lora_timestep_samples: usize,
}

impl Default for VsdConfig {
    fn default() -> Self {
        Self {
            lora_rank: 4,
            lora_lr: 3e-4,
            camera_dropout: 0.1,
            lora_timestep_samples: 1,
        }
    }
}

impl VsdConfig {
    /// Checks every field; errors name it (`lora_rank`, ...).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1024).contains(&self.lora_rank) {
            return Err(ConfigError::new(
                "lora_rank",
                format!("{} is not in 1..=1024", self.lora_rank),
            ));
        }
        if !(self.lora_lr.is_finite() && self.lora_lr > 0.0) {
            return Err(ConfigError::new(
                "lora_lr",
                format!("{} is not a finite number > 0", self.lora_lr),
            ));
        }
        if !(0.0..=1.0).contains(&self.camera_dropout) {
            return Err(ConfigError::new(
                "camera_dropout",
                format!("{} is not a probability in [0, 1]", self.camera_dropout),
            ));
        }
        if !(1..=64).contains(&self.lora_timestep_samples) {
            return Err(ConfigError::new(
                "lora_timestep_samples",
                format!("{} is not in 1..=64", self.lora_timestep_samples),
            ));
        }
        Ok(())
    }

    /// The LoRA's optimiser: PyTorch's AdamW defaults without weight decay, as the official
    /// code builds it.
    fn optimizer(&self) -> OptimizerConfig {
        OptimizerConfig {
            kind: OptimizerKind::AdamW,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The prior's UNet with LoRA adapters and the camera MLP: what VSD trains.
#[derive(Module, Debug)]
pub struct LoRAUNet<B: Backend> {
    /// The prior's UNet (frozen) with an adapter on every attention projection.
    pub unet: UNet2DConditionModel<B>,
    /// Flattened camera-to-world matrix to a time-embedding offset; output layer zero at first.
    pub camera_embedding: TimestepEmbedding<B>,
}

impl<B: Backend> LoRAUNet<B> {
    /// The raw model output (epsilon, `v` or `x0`, as the prior predicts) for samples at
    /// timesteps `t`.
    ///
    /// # Shapes
    /// - x_t: `[n, channels, h, w]`; timesteps: `[n]` or `[1]`; context: `[n, seq, hidden]`
    /// - class_labels: the prior's own, `[n, width]`; cameras: `[n, 16]`
    pub fn forward(
        &self,
        x_t: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        context: Tensor<B, 3>,
        class_labels: Option<Tensor<B, 2>>,
        cameras: Tensor<B, 2>,
    ) -> Tensor<B, 4> {
        let camera = self.camera_embedding.forward(cameras);
        self.unet
            .forward_with_embedding(x_t, timesteps, context, class_labels, Some(camera))
    }
}

/// VSD's LoRA and its optimiser, built from a prior.
pub struct VsdLoRA<B: AutodiffBackend> {
    config: VsdConfig,
    model: LoRAUNet<B>,
    optimizer: GroupedOptimizer<LoRAUNet<B>, B>,
}

impl<B: AutodiffBackend> std::fmt::Debug for VsdLoRA<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsdLoRA")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The camera features of `batch` views: each view's camera-to-world matrix on the unit
/// sphere, flattened row-major (`[batch, 16]`); the front view (15 degrees up) for views not
/// given.
pub fn vsd_cameras<B: Backend>(
    views: &[ViewAngles],
    batch: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let front = ViewAngles::new(0.0, 15.0);
    let rows: Vec<f32> = (0..batch)
        .flat_map(|i| {
            let v = views.get(i).copied().unwrap_or(front);
            flatten(create_camera_to_world_matrix(
                v.elevation_deg as f64,
                v.azimuth_deg as f64,
            ))
        })
        .collect();
    Tensor::from_data(TensorData::new(rows, [batch, CAMERA_DIM]), device)
}

impl<B: AutodiffBackend> VsdLoRA<B> {
    /// A zero-started LoRA of `prior`'s UNet: it predicts exactly as the prior until trained.
    pub fn new(prior: &DiffusionPrior<B::InnerBackend>, config: VsdConfig) -> Self {
        let device = prior.device();
        let mut rng = StdRng::seed_from_u64(LORA_INIT_SEED);
        // The prior's weights are shared, not copied, and frozen; only what is added trains.
        let unet = UNet2DConditionModel::<B>::from_inner(prior.unet().clone())
            .no_grad()
            .with_lora(config.lora_rank, &mut rng, &device);
        let temb = unet.time_embedding.linear_2.weight.dims()[1];
        let camera_embedding = zero_output_mlp(CAMERA_DIM, temb, &mut rng, &device);
        Self {
            optimizer: config.optimizer().init::<B, LoRAUNet<B>>(),
            config,
            model: LoRAUNet {
                unet,
                camera_embedding,
            },
        }
    }

    /// The settings.
    pub fn config(&self) -> &VsdConfig {
        &self.config
    }

    /// The trained model (autodiff backend).
    pub fn model(&self) -> &LoRAUNet<B> {
        &self.model
    }

    /// Parameters the LoRA trains (adapters and camera MLP).
    pub fn num_trainable(&self) -> usize {
        let mut count = CountTrainable(0);
        self.model.visit(&mut count);
        count.0
    }

    /// The LoRA's noise estimate at `x_t` (no CFG: the text and camera branch), converted to
    /// epsilon as the prior's predictions are; on the inner backend, in passes of at most
    /// `max_batch` samples split per core as the prior's.
    ///
    /// # Shapes
    /// - x_t: `[n, channels, h, w]`; context: `[n, seq, hidden]`; class_labels: `[n, width]`;
    ///   cameras: `[n, 16]`; output: `[n, channels, h, w]`
    #[allow(clippy::too_many_arguments)]
    pub fn predict_noise(
        &self,
        prior: &DiffusionPrior<B::InnerBackend>,
        x_t: Tensor<B::InnerBackend, 4>,
        t: usize,
        context: Tensor<B::InnerBackend, 3>,
        class_labels: Option<Tensor<B::InnerBackend, 2>>,
        cameras: Tensor<B::InnerBackend, 2>,
        max_batch: usize,
    ) -> Result<Tensor<B::InnerBackend, 4>, GuidanceError> {
        prior.scheduler().alpha_prod(t)?;
        let model = self.model.valid();
        let frames = prior.num_frames();
        // The camera's embedding rides beside the prior's own labels through the per-core
        // split, and is taken apart again inside.
        let camera = model.camera_embedding.forward(cameras);
        let own = class_labels.as_ref().map_or(0, |l| l.dims()[1]);
        let labels = match class_labels {
            Some(l) => Tensor::cat(vec![l, camera], 1),
            None => camera,
        };
        let device = x_t.device();
        let parts = chunked(
            x_t.clone(),
            context,
            Some(labels),
            prior.whole_groups(max_batch),
            |x, context, labels| {
                Ok(map_batch_grouped(
                    x,
                    context,
                    labels,
                    frames,
                    |x, context, labels| {
                        let labels = labels.expect("labels are always given");
                        let width = labels.dims()[1];
                        let own_labels = (own > 0).then(|| labels.clone().narrow(1, 0, own));
                        let camera = labels.narrow(1, own, width - own);
                        let t = Tensor::from_data([t as f32], (&device, x.dtype()));
                        model
                            .unet
                            .forward_with_embedding(x, t, context, own_labels, Some(camera))
                    },
                ))
            },
        )?;
        let out = Tensor::cat(parts, 0);
        Ok(prior.scheduler().pred_epsilon(out, x_t, &[t])?)
    }

    /// One training step of the LoRA on the current images as the prior sees them (`z`,
    /// detached): the standard diffusion loss (MSE to the noise, or to `v` / `x0` for priors
    /// that predict those) at timesteps drawn uniformly from `[0, T)`, each view
    /// `lora_timestep_samples` times, the camera dropped with probability `camera_dropout`.
    /// Draws from `seed ^ LORA_STREAM`. Returns the loss before the update.
    ///
    /// # Shapes
    /// - z: `[B, channels, h, w]`; context: `[B, seq, hidden]`; class_labels: `[B, width]`;
    ///   cameras: `[B, 16]`
    pub fn train(
        &mut self,
        prior: &DiffusionPrior<B::InnerBackend>,
        z: Tensor<B::InnerBackend, 4>,
        context: Tensor<B::InnerBackend, 3>,
        class_labels: Option<Tensor<B::InnerBackend, 2>>,
        cameras: Tensor<B::InnerBackend, 2>,
        seed: u64,
    ) -> Result<f32, GuidanceError> {
        let mut rng = StdRng::seed_from_u64(seed ^ LORA_STREAM);
        let k = self.config.lora_timestep_samples;
        let [batch, channels, h, w] = z.dims();
        let n = k * batch;
        let total = prior.num_train_timesteps();
        let timesteps: Vec<usize> = (0..n).map(|_| rng.random_range(0..total)).collect();
        let noise = standard_normal(&mut rng, n * channels * h * w);
        let drop_camera = rng.random::<f64>() < self.config.camera_dropout;

        let device = z.device();
        let z = z.repeat_dim(0, k);
        let noise = Tensor::<B::InnerBackend, 4>::from_data(
            TensorData::new(noise, [n, channels, h, w]),
            (&device, z.dtype()),
        );
        let scheduler = prior.scheduler();
        let x_t = scheduler.add_noise(z.clone(), noise.clone(), &timesteps)?;
        let target = match scheduler.config.prediction_type {
            PredictionType::Epsilon => noise,
            PredictionType::VPrediction => scheduler.get_velocity(z, noise, &timesteps)?,
            PredictionType::Sample => z,
        };
        let cameras = if drop_camera {
            cameras.zeros_like()
        } else {
            cameras
        };
        let t = Tensor::<B::InnerBackend, 1>::from_data(
            TensorData::new(timesteps.iter().map(|&t| t as f32).collect(), [n]),
            (&device, x_t.dtype()),
        );
        let out = self.model.forward(
            Tensor::from_inner(x_t),
            Tensor::from_inner(t),
            Tensor::from_inner(context.repeat_dim(0, k)),
            class_labels.map(|l| Tensor::from_inner(l.repeat_dim(0, k))),
            Tensor::from_inner(cameras.repeat_dim(0, k)),
        );
        let loss = (out - Tensor::from_inner(target)).powi_scalar(2).mean();
        let value: f32 = loss.clone().into_scalar().elem();
        if !value.is_finite() {
            return Err(GuidanceError::BadInput(format!(
                "the VSD LoRA's training loss is {value}: not updating it"
            )));
        }
        let mut grads = loss.backward();
        let groups = vec![ParamGroup {
            name: "lora",
            lr: self.config.lora_lr,
            grads: GradientsParams::from_module(&mut grads, &self.model),
        }];
        self.model = self.optimizer.step(self.model.clone(), groups);
        Ok(value)
    }

    /// The trained parameters (with their ids) and the optimiser's state, as two burn records
    /// (named MessagePack, full precision): `(lora, optimizer)`. The frozen UNet is not saved.
    pub fn state_bytes(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut collect = CollectTrainable(Vec::new());
        self.model.visit(&mut collect);
        let params = TrainedParams { params: collect.0 };
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
        let lora = Recorder::<B>::record(&recorder, params.into_record(), ())
            .map_err(|e| e.to_string())?;
        let optimizer = self.optimizer.state_bytes().map_err(|e| e.to_string())?;
        Ok((lora, optimizer))
    }

    /// Restores what [`state_bytes`](Self::state_bytes) wrote, into a LoRA built with the same
    /// settings from the same prior.
    pub fn load_state_bytes(&mut self, lora: Vec<u8>, optimizer: Vec<u8>) -> Result<(), String> {
        let device = self.model.camera_embedding.linear_1.weight.device();
        let mut collect = CollectTrainable(Vec::new());
        self.model.visit(&mut collect);
        let shapes: Vec<usize> = collect.0.iter().map(|p| p.dims()[0]).collect();
        let template = TrainedParams { params: collect.0 };
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
        let record = Recorder::<B>::load(&recorder, lora, &device).map_err(|e| e.to_string())?;
        let loaded = template.load_record(record);
        let got: Vec<usize> = loaded.params.iter().map(|p| p.dims()[0]).collect();
        if got != shapes {
            return Err(format!(
                "holds {} trained tensors of sizes {got:?}, the LoRA has {} of {shapes:?} \
                 (another lora_rank or prior?)",
                got.len(),
                shapes.len()
            ));
        }
        let mut restore = RestoreTrainable {
            params: loaded.params.into_iter(),
        };
        self.model = self.model.clone().map(&mut restore);
        let fresh = self.config.optimizer().init::<B, LoRAUNet<B>>();
        let old = std::mem::replace(&mut self.optimizer, fresh);
        self.optimizer = old
            .load_state_bytes(optimizer, &device)
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// `linear_2(silu(linear_1(x)))` with `linear_1` PyTorch's default uniform
/// `(-1/sqrt(in), 1/sqrt(in))` drawn from `rng` and `linear_2` zero.
fn zero_output_mlp<B: Backend>(
    d_in: usize,
    d_out: usize,
    rng: &mut impl Rng,
    device: &B::Device,
) -> TimestepEmbedding<B> {
    let mut mlp = TimestepEmbeddingConfig::new(d_in, d_out).init::<B>(device);
    let bound = 1.0 / (d_in as f32).sqrt();
    let mut uniform = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| rng.random_range(-bound..bound))
            .collect::<Vec<_>>()
    };
    mlp.linear_1.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(uniform(d_in * d_out), [d_in, d_out]),
        device,
    ));
    mlp.linear_1.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(uniform(d_out), [d_out]),
        device,
    )));
    mlp.linear_2.weight = Param::from_tensor(Tensor::zeros([d_out, d_out], device));
    mlp.linear_2.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
    mlp
}

/// The trained parameters, flattened, in visiting order, with their ids (the optimiser's
/// state is keyed by them).
#[derive(Module, Debug)]
struct TrainedParams<B: Backend> {
    params: Vec<Param<Tensor<B, 1>>>,
}

struct CountTrainable(usize);

impl<B: AutodiffBackend> ModuleVisitor<B> for CountTrainable {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        if value.is_require_grad() {
            self.0 += value.shape().num_elements();
        }
    }
}

struct CollectTrainable<B: Backend>(Vec<Param<Tensor<B, 1>>>);

impl<B: AutodiffBackend> ModuleVisitor<B> for CollectTrainable<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        if value.is_require_grad() {
            let flat = value.inner().flatten::<1>(0, D - 1);
            self.0
                .push(Param::initialized(param.id, Tensor::from_inner(flat)));
        }
    }
}

struct RestoreTrainable<B: Backend> {
    params: std::vec::IntoIter<Param<Tensor<B, 1>>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for RestoreTrainable<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let value = param.val();
        if !value.is_require_grad() {
            return param;
        }
        let shape = value.shape();
        let saved = self
            .params
            .next()
            .expect("the count was checked against the template");
        let value = saved.val().inner().reshape(shape);
        Param::initialized(saved.id, Tensor::from_inner(value).require_grad())
    }
}
