//! The whole Tiny World recipe: render the data, train the reward CLIP (whose text tower
//! becomes the prior's frozen text encoder, as SD freezes CLIP's), the judge CLIP, the UNet,
//! then measure the prior with the judge. Each phase writes its folder as soon as it ends, and
//! a phase left out is loaded from the folder instead, so a run can resume phase by phase.

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use super::captions::{Composition, SHIPPED_HELD_OUT_FRACTION, SHIPPED_SPLIT_SEED, Split};
use super::dataset::{Dataset, IMAGE_SIZE};
use super::evaluate::{Judge, Retrieval, spread_pairs};
use super::folder::{write_clip, write_pipeline_files, write_text_encoder, write_unet};
use super::models::{ModelScale, scheduler};
use super::sample::{SampleError, sample};
use super::train::{
    ClipTraining, LogEntry, PhaseConfig, TrainError, UnetTraining, train_clip, train_unet,
};
use crate::guidance::prompts::{CAMERA_LABELS, camera_labels};
use crate::models::clip_text::CLIPTextModel;
use crate::models::schedulers::{DDIMScheduler, DDIMSchedulerConfig, PredictionType};
use crate::models::tokenizer::CLIPTokenizer;
use crate::models::unet_2d::UNet2DConditionModel;
use crate::rgb_image::RgbImage;
use crate::weights::LoadError;

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecipeConfig {
    /// Seed of data, initialisation and batches.
    pub seed: u64,
    /// Model sizes.
    pub scale: ModelScale,
    /// Share of the two-object compositions the prior never sees.
    pub held_out_fraction: f32,
    /// Seed of the held-out choice (fixed across runs so benchmarks stay comparable).
    pub split_seed: u64,
    /// Renders per caption (3160 captions).
    pub images_per_caption: usize,
    /// The reward CLIP.
    pub reward: PhaseConfig,
    /// The judge CLIP.
    pub judge: PhaseConfig,
    /// How the judge starts and what it counts as one caption (the reward's CLIP keeps the
    /// defaults: its text tower is the prior's, trained as shipped).
    #[serde(default)]
    pub judge_training: ClipTraining,
    /// The UNet.
    pub unet: UnetTraining,
    /// Prompts per group (held-out, seen) sampled for the evaluation.
    pub eval_prompts: usize,
    /// DDIM steps of the evaluation samples.
    pub eval_steps: usize,
    /// CFG scale of the evaluation samples.
    pub eval_guidance_scale: f32,
}

fn phase(steps: usize, batch_size: usize, learning_rate: f64, max_seconds: f64) -> PhaseConfig {
    PhaseConfig {
        steps,
        batch_size,
        learning_rate,
        warmup_steps: (steps / 20).clamp(1, 500),
        max_seconds,
    }
}

impl RecipeConfig {
    /// The shipped models: about 9 minutes on an H100 (CUDA).
    pub fn gpu() -> Self {
        Self {
            seed: 0,
            scale: ModelScale::Full,
            held_out_fraction: SHIPPED_HELD_OUT_FRACTION,
            split_seed: SHIPPED_SPLIT_SEED,
            images_per_caption: 32,
            reward: phase(4000, 512, 1e-3, 60.0),
            judge: phase(4000, 512, 1e-3, 40.0),
            // Judged up to the viewpoint, as the retrieval scores (docs/tiny_world.md, judge v1).
            judge_training: ClipTraining {
                canonical_pairs: true,
                ..ClipTraining::default()
            },
            unet: UnetTraining {
                phase: phase(40_000, 64, 1e-3, 330.0),
                caption_dropout: 0.1,
                view_suffix_probability: 0.5,
                checkpoint_seconds: 60.0,
                // diffusers' default; its warm-up governs runs shorter than ~9000 steps.
                ema_decay: 0.9999,
                init_from: None,
                // v-prediction, unweighted: the shipped v2 (docs/tiny_world.md). Its MSE already
                // weighs x0 errors by SNR + 1, at least 1 where the noise dominates; min-SNR's
                // v weight, min(SNR, 5) / (SNR + 1), would all but drop those levels again.
                snr_gamma: None,
                prediction_type: PredictionType::VPrediction,
                // Off from scratch (unmeasured): the shipped v6 added it to the trained v5 as
                // a continuation, `--camera-conditioning --camera-learning-rate-factor 10`
                // (docs/tiny_world.md, "v6, shipped").
                camera_conditioning: false,
                camera_learning_rate_factor: 1.0,
            },
            eval_prompts: 64,
            eval_steps: 25,
            // Measured best for v2 (docs/tiny_world.md: 1, 1.5, 2, 3, 4, 7.5 on 8 + 8 captions).
            eval_guidance_scale: 1.5,
        }
    }

    /// Smaller models for a CPU-only machine (about 2 hours on 2 cores).
    pub fn cpu() -> Self {
        Self {
            scale: ModelScale::Small,
            images_per_caption: 8,
            reward: phase(1500, 256, 1e-3, 1200.0),
            judge: phase(1500, 256, 1e-3, 900.0),
            unet: UnetTraining {
                phase: phase(6000, 32, 4e-4, 4800.0),
                ..Self::gpu().unet
            },
            eval_prompts: 32,
            eval_steps: 25,
            ..Self::gpu()
        }
    }

    /// The whole pipeline in seconds (tests).
    pub fn test() -> Self {
        Self {
            scale: ModelScale::Test,
            images_per_caption: 1,
            reward: phase(3, 16, 1e-3, 60.0),
            judge: phase(3, 16, 1e-3, 60.0),
            unet: UnetTraining {
                // burn-ndarray's convolution backward is ~40x its forward: keep this tiny.
                phase: phase(2, 2, 4e-4, 60.0),
                checkpoint_seconds: 1e9,
                ..Self::gpu().unet
            },
            eval_prompts: 2,
            eval_steps: 2,
            ..Self::gpu()
        }
    }
}

/// Which phases to run (the others are loaded from the output folder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Phases {
    /// Train the reward CLIP (and write the text encoder).
    pub reward: bool,
    /// Train the judge CLIP.
    pub judge: bool,
    /// Train the UNet.
    pub unet: bool,
    /// Sample and judge.
    pub eval: bool,
}

impl Phases {
    /// Every phase.
    pub fn all() -> Self {
        Self {
            reward: true,
            judge: true,
            unet: true,
            eval: true,
        }
    }

    /// Whether any model is trained (an evaluation alone trains none).
    pub fn trains(&self) -> bool {
        self.reward || self.judge || self.unet
    }
}

/// What the evaluation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Prior samples for held-out captions.
    pub samples_held_out: Retrieval,
    /// Prior samples for captions seen in training.
    pub samples_seen: Retrieval,
    /// Ground-truth renders of the same held-out captions (the judge's own ceiling).
    pub renders_held_out: Retrieval,
    /// Ground-truth renders of the same seen captions.
    pub renders_seen: Retrieval,
    /// Reward CLIP retrieval of the held-out samples (reward and judge should agree).
    pub reward_on_samples_held_out: Retrieval,
    /// Seconds to sample all evaluation images.
    pub sampling_seconds: f64,
}

/// Failures of the recipe.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// Loading or writing a folder failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Sampling failed.
    #[error(transparent)]
    Sample(#[from] SampleError),
    /// The scheduler config is invalid.
    #[error(transparent)]
    Scheduler(#[from] crate::models::schedulers::SchedulerError),
    /// The output folder's scheduler config cannot be read.
    #[error(transparent)]
    Config(#[from] crate::models::unet_2d::DiffusersConfigError),
}

/// Progress of the recipe, for the caller to print or store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecipeEvent {
    /// A phase began.
    Phase {
        /// Its name.
        name: String,
    },
    /// The data is rendered.
    Data {
        /// Images.
        images: usize,
        /// Seconds it took.
        seconds: f64,
    },
    /// A training step.
    Step(LogEntry),
    /// A folder was written.
    Saved {
        /// Which.
        path: String,
    },
    /// The evaluation finished.
    Evaluated(Box<EvalReport>),
}

/// Run `phases` of `config`, writing into `out` (the folder layout of [`super::folder`]).
/// Returns the evaluation report when `phases.eval`.
pub fn run_recipe<B: AutodiffBackend>(
    config: &RecipeConfig,
    phases: Phases,
    out: &Path,
    threads: usize,
    device: &B::Device,
    on_event: &mut dyn FnMut(&RecipeEvent),
) -> Result<Option<EvalReport>, RecipeError> {
    let scale = config.scale;
    let existing = out.join("scheduler").join("scheduler_config.json");
    let scheduler_config = if !phases.unet && existing.is_file() {
        // Evaluating (or retraining the CLIPs of) a trained prior: its own objective.
        DDIMSchedulerConfig::from_file(&existing)?
    } else {
        DDIMSchedulerConfig {
            prediction_type: config.unet.prediction_type,
            ..scheduler()
        }
    };
    write_pipeline_files(out, &scheduler_config)?;
    let tokenizer = CLIPTokenizer::from_folder(&out.join("tokenizer"))?;
    let split = Split::new(config.held_out_fraction, config.split_seed);
    let all = Composition::all();
    let needs_data = phases.reward || phases.judge || phases.unet;
    let data = if needs_data {
        let start = Instant::now();
        let data = Dataset::render(&all, config.images_per_caption, config.seed, threads);
        on_event(&RecipeEvent::Data {
            images: data.len(),
            seconds: start.elapsed().as_secs_f64(),
        });
        Some(data)
    } else {
        None
    };
    let mut log = |e: &LogEntry| on_event(&RecipeEvent::Step(e.clone()));
    let inner = device.clone();

    if let Some(data) = data.as_ref().filter(|_| phases.reward) {
        let cfg = scale.reward_clip();
        let clip = train_clip::<B>(
            "reward",
            &cfg,
            data,
            &tokenizer,
            &config.reward,
            &ClipTraining::default(),
            config.seed + 1,
            device,
            &mut log,
        )?;
        write_clip(&out.join("reward"), &clip, &cfg)?;
        write_text_encoder(&out.join("text_encoder"), &clip, &cfg)?;
    }
    if let Some(data) = data.as_ref().filter(|_| phases.judge) {
        let cfg = scale.judge_clip();
        let clip = train_clip::<B>(
            "judge",
            &cfg,
            data,
            &tokenizer,
            &config.judge,
            &config.judge_training,
            config.seed + 2,
            device,
            &mut log,
        )?;
        write_clip(&out.join("judge"), &clip, &cfg)?;
    }
    let scheduler = DDIMScheduler::new(scheduler_config)?;
    if let Some(data) = data.as_ref().filter(|_| phases.unet) {
        // The encoder as shipped (f16 weights), so the UNet learns the embeddings users get.
        let (text_encoder, _) =
            CLIPTextModel::<B::InnerBackend>::from_folder(&out.join("text_encoder"), &inner)?;
        let allowed: Vec<bool> = data
            .compositions
            .iter()
            .map(|c| !split.is_held_out(c))
            .collect();
        let mut unet_config = scale.unet();
        if config.unet.camera_conditioning {
            unet_config.class_embed_type = Some("projection".into());
            unet_config.projection_class_embeddings_input_dim = Some(CAMERA_LABELS);
        }
        let unet_dir = out.join("unet");
        let mut saved = Ok(());
        let mut checkpoint = |unet: &UNet2DConditionModel<B::InnerBackend>, _step: usize| {
            if saved.is_ok() {
                saved = write_unet(&unet_dir, unet, &unet_config);
            }
        };
        let unet = train_unet::<B>(
            &unet_config,
            &text_encoder,
            &scheduler,
            data,
            &allowed,
            &tokenizer,
            &config.unet,
            config.seed + 3,
            device,
            &mut log,
            &mut checkpoint,
        )?;
        saved?;
        write_unet(&unet_dir, &unet, &unet_config)?;
        on_event(&RecipeEvent::Saved {
            path: unet_dir.display().to_string(),
        });
    }
    if !phases.eval {
        return Ok(None);
    }
    let report = evaluate::<B::InnerBackend>(config, out, &split, &tokenizer, &scheduler, &inner)?;
    on_event(&RecipeEvent::Evaluated(Box::new(report.clone())));
    Ok(Some(report))
}

/// Sample the prior for held-out and seen captions and judge the samples; also save
/// `samples.png` (held-out samples over their ground truth, then the same for seen captions).
pub fn evaluate<B: Backend>(
    config: &RecipeConfig,
    out: &Path,
    split: &Split,
    tokenizer: &CLIPTokenizer,
    scheduler: &DDIMScheduler,
    device: &B::Device,
) -> Result<EvalReport, RecipeError> {
    let (text_encoder, _) = CLIPTextModel::<B>::from_folder(&out.join("text_encoder"), device)?;
    let unet_config =
        crate::models::unet_2d::UNet2DConditionModelConfig::from_file(out.join("unet/config.json"))
            .map_err(|e| LoadError::BadConfig {
                path: out.join("unet/config.json"),
                reason: e.to_string(),
            })?;
    let unet = unet_config
        .init::<B>(device)
        .load_weights(&crate::weights::weight_files(&out.join("unet"))?, device)?
        .0;
    let judge = Judge::<B>::from_folder(&out.join("judge"), device)?;
    let reward = Judge::<B>::from_folder(&out.join("reward"), device)?;
    let held = spread_pairs(&split.held_out, config.eval_prompts);
    let seen = spread_pairs(&split.train, config.eval_prompts);
    let size = IMAGE_SIZE as usize;
    let start = Instant::now();
    let run = |group: &[Composition], seed: u64| -> Result<_, RecipeError> {
        let prompts: Vec<String> = group.iter().map(Composition::caption).collect();
        let truth = Dataset::render(
            group,
            1,
            seed,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
        // A camera-conditioned prior samples each caption from its true render's camera.
        let views = truth.views(&(0..group.len()).collect::<Vec<_>>());
        let mut images = Vec::new();
        for (i, chunk) in prompts.chunks(64).enumerate() {
            let labels = unet
                .class_labels_width()
                .map(|_| camera_labels::<B>(&views[i * 64..i * 64 + chunk.len()], device));
            images.push(sample(
                &unet,
                &text_encoder,
                tokenizer,
                scheduler,
                chunk,
                labels,
                config.eval_guidance_scale,
                config.eval_steps,
                size,
                seed + i as u64,
                device,
            )?);
        }
        let samples = burn::tensor::Tensor::cat(images, 0);
        let indices: Vec<usize> = (0..group.len()).collect();
        Ok((samples, truth.images::<B>(&indices, device)))
    };
    let (held_samples, held_truth) = run(&held, config.seed + 100)?;
    let (seen_samples, seen_truth) = run(&seen, config.seed + 200)?;
    let sampling_seconds = start.elapsed().as_secs_f64();
    let strip = |samples: &burn::tensor::Tensor<B, 4>, truth: &burn::tensor::Tensor<B, 4>| {
        let n = samples.dims()[0].min(16);
        let top = RgbImage::hstack(&RgbImage::from_tensor(samples.clone().slice(0..n)));
        let bottom = RgbImage::hstack(&RgbImage::from_tensor(truth.clone().slice(0..n)));
        [top, bottom]
    };
    let mut rows = strip(&held_samples, &held_truth).to_vec();
    rows.extend(strip(&seen_samples, &seen_truth));
    RgbImage::vstack(&rows)
        .save_png(out.join("samples.png"))
        .ok();
    Ok(EvalReport {
        samples_held_out: judge.retrieval(held_samples.clone(), &held),
        samples_seen: judge.retrieval(seen_samples, &seen),
        renders_held_out: judge.retrieval(held_truth, &held),
        renders_seen: judge.retrieval(seen_truth, &seen),
        reward_on_samples_held_out: reward.retrieval(held_samples, &held),
        sampling_seconds,
    })
}
