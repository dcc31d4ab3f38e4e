//! A whole generation (load, optimise, extract, write the `.glb`) on its own thread, for hosts
//! that must never block: the Bevy plugin, GUIs, servers. Start it with a [`JobRequest`],
//! poll its [`JobEvent`]s, cancel it; dropping the handle cancels too. Jobs that share a
//! [`ModelCache`] load each model once between them.
//!
//! A dedicated thread rather than a shared task pool: one step is seconds of blocking
//! compute, and a generation runs for minutes, which would starve a pool's few threads.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::config::GenerateConfig;
use super::generator::{GenerateError, Generator, Progress, load_guidance, warn_unknown_words};
use super::model_cache::ModelCache;
use super::preview::Preview;
use crate::backend::{BackendError, BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use crate::export::{ExportError, write_atomic};
use crate::guidance::GuidanceError;

/// What to generate, where, and how often to send a preview.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// The generation.
    pub config: GenerateConfig,
    /// Where the compute runs (the host's choice; the config's `backend` is only a
    /// preference the host may honour, see `GenerateConfig::backend`).
    pub backend: BackendKind,
    /// The `.glb` to write; a `.json` with the config and timings goes beside it.
    pub output: PathBuf,
    /// Steps between preview meshes (0: none).
    pub preview_every: usize,
    /// Grid samples along the preview's longest side (coarse: it is redrawn often).
    pub preview_resolution: u32,
    /// Gaussian scenes send their Gaussians ([`PreviewShape::Splats`](super::preview::PreviewShape::Splats)) rather than a coarse
    /// mesh: for hosts that draw splats.
    pub preview_splats: bool,
    /// A checkpoint folder for the finished scene (what an edit of the asset starts from,
    /// [`EditConfig::source`](super::EditConfig::source)); `None`: none is written.
    pub checkpoint: Option<PathBuf>,
    /// Models shared with other jobs: the prior and reward are taken from (or loaded into)
    /// this cache. `None`: the job loads its own and drops them when it ends.
    pub models: Option<Arc<ModelCache>>,
}

impl JobRequest {
    /// A request with a preview mesh every 10 steps on a 40-sample grid.
    pub fn new(config: GenerateConfig, backend: BackendKind, output: impl Into<PathBuf>) -> Self {
        Self {
            config,
            backend,
            output: output.into(),
            preview_every: 10,
            preview_resolution: 40,
            preview_splats: false,
            checkpoint: None,
            models: None,
        }
    }
}

/// What a finished job wrote and how long it took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// The `.glb`.
    pub path: PathBuf,
    /// The `.json` beside it (prompt, seed, full config, timings).
    pub sidecar: PathBuf,
    /// The prompt.
    pub prompt: String,
    /// Steps run.
    pub steps: usize,
    /// Seconds loading models.
    pub load_seconds: f64,
    /// Seconds optimising.
    pub optimize_seconds: f64,
    /// Seconds extracting and writing the mesh.
    pub export_seconds: f64,
    /// Triangles written.
    pub triangles: usize,
    /// Vertices written.
    pub vertices: usize,
    /// File size in bytes.
    pub bytes: usize,
    /// The asset's extent in metres.
    pub size: [f32; 3],
    /// The finished scene's checkpoint folder, when the request asked for one.
    pub checkpoint: Option<PathBuf>,
}

/// What a running job reports, in order: `Started`, then `Progress`/`Preview`, then exactly
/// one of `Finished`, `Cancelled` or `Failed`.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// Models are loaded; optimisation begins.
    Started {
        /// The backend in use.
        backend: BackendKind,
        /// Seconds loading took.
        load_seconds: f64,
    },
    /// A step finished.
    Progress(Progress),
    /// A new snapshot of the result so far.
    Preview(Preview),
    /// The `.glb` is written (atomically: a watcher never sees half a file).
    Finished(JobReport),
    /// Cancelled between steps; nothing was written.
    Cancelled {
        /// Steps done.
        step: usize,
    },
    /// The job could not run or stopped on an error; nothing was written.
    Failed(JobFailure),
}

/// Why a job failed: what kind of thing went wrong (for a host to act on) and the whole
/// message (for a person), which names the thing at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct JobFailure {
    /// What kind of failure.
    pub kind: JobFailureKind,
    /// The error and its causes on one line.
    pub reason: String,
}

/// The kinds of [`JobFailure`], from the [`GenerateError`] behind it.
#[derive(Debug, Clone, PartialEq)]
pub enum JobFailureKind {
    /// A setting is invalid ([`GenerateError::Config`], or a guidance setting).
    Config {
        /// The config field at fault (`steps`, `guidance.reward.strategy.k`).
        field: String,
    },
    /// A model could not be found or loaded ([`GenerateError::Model`], [`GenerateError::Load`]).
    Model {
        /// The config field naming the model (`prior`, `reward`, `score_decoder`), when known.
        field: Option<String>,
        /// Its value, when known.
        spec: Option<String>,
    },
    /// The requested backend is not compiled in or found no device.
    Backend,
    /// The asset to edit could not be read ([`GenerateError::Edit`]).
    Edit {
        /// Its checkpoint folder.
        folder: PathBuf,
    },
    /// The loss became NaN or infinite ([`GenerateError::NonFinite`]).
    NonFinite {
        /// The step (0-based) whose loss was not finite.
        step: usize,
        /// The last good checkpoint, if one was written.
        checkpoint: Option<PathBuf>,
    },
    /// The result could not be written or a checkpoint read or written
    /// ([`GenerateError::Export`], [`GenerateError::Checkpoint`]).
    Io,
    /// The run stopped on another error: guidance, cameras, surface extraction.
    Run,
    /// The job's thread could not start, panicked, or ended without a result.
    Thread,
}

impl JobFailure {
    /// A failure of `kind`.
    pub fn new(kind: JobFailureKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }

    fn lost_thread() -> Self {
        Self::new(
            JobFailureKind::Thread,
            "the generation thread stopped without a result",
        )
    }
}

impl From<&GenerateError> for JobFailure {
    fn from(error: &GenerateError) -> Self {
        let kind = match error {
            GenerateError::Config(e) | GenerateError::Guidance(GuidanceError::Config(e)) => {
                JobFailureKind::Config {
                    field: e.field.clone(),
                }
            }
            GenerateError::Model { field, spec, .. } => JobFailureKind::Model {
                field: Some((*field).to_string()),
                spec: Some(spec.clone()),
            },
            GenerateError::Load(_) | GenerateError::Guidance(GuidanceError::Load(_)) => {
                JobFailureKind::Model {
                    field: None,
                    spec: None,
                }
            }
            GenerateError::Edit { folder, .. } => JobFailureKind::Edit {
                folder: folder.clone(),
            },
            GenerateError::NonFinite {
                step, checkpoint, ..
            } => JobFailureKind::NonFinite {
                step: *step,
                checkpoint: checkpoint.clone(),
            },
            GenerateError::Export(_) | GenerateError::Checkpoint(_) => JobFailureKind::Io,
            GenerateError::Thread(_) => JobFailureKind::Thread,
            GenerateError::Guidance(_) | GenerateError::Camera(_) | GenerateError::Mesh(_) => {
                JobFailureKind::Run
            }
        };
        Self::new(kind, error_chain(error))
    }
}

impl From<&BackendError> for JobFailure {
    fn from(error: &BackendError) -> Self {
        Self::new(JobFailureKind::Backend, error_chain(error))
    }
}

impl JobEvent {
    /// Whether this is the last event of a job.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Finished(_) | Self::Cancelled { .. } | Self::Failed { .. }
        )
    }
}

/// A running generation. Dropping it cancels the work (the thread finishes its current step
/// and exits without writing).
#[derive(Debug)]
pub struct GenerationJob {
    events: Receiver<JobEvent>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    done: bool,
}

impl GenerationJob {
    /// Checks the config, then starts the job on a new thread. Config errors are returned
    /// here; load and run errors arrive as [`JobEvent::Failed`].
    pub fn spawn(request: JobRequest) -> Result<Self, GenerateError> {
        request.config.validate()?;
        let (sender, events) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let thread = std::thread::Builder::new()
            .name(format!(
                "rewardsds-generate-{}",
                super::slug(&request.config.prompt)
            ))
            .spawn(move || run_job(request, flag, sender))
            .map_err(GenerateError::Thread)?;
        Ok(Self {
            events,
            cancel,
            thread: Some(thread),
            done: false,
        })
    }

    /// The next event if one is waiting; never blocks. After the terminal event, or if the
    /// thread died without one, returns `None` forever (a lost thread becomes `Failed`).
    pub fn try_next(&mut self) -> Option<JobEvent> {
        if self.done {
            return None;
        }
        let event = match self.events.try_recv() {
            Ok(event) => event,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => JobEvent::Failed(JobFailure::lost_thread()),
        };
        self.done = event.is_terminal();
        Some(event)
    }

    /// The next event, waiting for it (`None` once the job is over).
    pub fn next_blocking(&mut self) -> Option<JobEvent> {
        if self.done {
            return None;
        }
        let event = self
            .events
            .recv()
            .unwrap_or_else(|_| JobEvent::Failed(JobFailure::lost_thread()));
        self.done = event.is_terminal();
        Some(event)
    }

    /// Asks the job to stop after its current step.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Whether the terminal event has been received.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the job's thread has ended (after a cancel, it finishes its current step
    /// first): a host that runs one job per device waits for this before starting the next.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for GenerationJob {
    fn drop(&mut self) {
        self.cancel();
        // Not joined: the owner may be a frame that must not wait for a step to finish.
        drop(self.thread.take());
    }
}

fn run_job(request: JobRequest, cancel: Arc<AtomicBool>, sender: Sender<JobEvent>) {
    let backend = request.backend;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_on(
            backend,
            Job {
                request,
                cancel,
                sender: sender.clone(),
            },
        )
    }));
    let last = match outcome {
        Ok(Ok(Ok(event))) => event,
        Ok(Ok(Err(error))) => JobEvent::Failed(JobFailure::from(&error)),
        Ok(Err(error)) => JobEvent::Failed(JobFailure::from(&error)),
        Err(panic) => JobEvent::Failed(JobFailure::new(
            JobFailureKind::Thread,
            format!("the generation panicked: {}", panic_message(&panic)),
        )),
    };
    // The receiver may be gone (the host dropped the job): nothing left to tell.
    let _ = sender.send(last);
}

struct Job {
    request: JobRequest,
    cancel: Arc<AtomicBool>,
    sender: Sender<JobEvent>,
}

impl BackendTask for Job {
    type Output = Result<JobEvent, GenerateError>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let Job {
            request,
            cancel,
            sender,
        } = self;
        let start = Instant::now();
        let guidance = match &request.models {
            Some(cache) => cache.guidance::<B>(&request.config, &device)?,
            None => load_guidance::<B>(&request.config, &device)?,
        };
        warn_unknown_words(&request.config, guidance.prior().tokenizer());
        let mut generator = Generator::new(request.config.clone(), guidance, &device)?;
        let load_seconds = start.elapsed().as_secs_f64();
        let _ = sender.send(JobEvent::Started {
            backend: request.backend,
            load_seconds,
        });

        let start = Instant::now();
        let total = generator.config().total_steps();
        while generator.steps_done() < total {
            if cancel.load(Ordering::Relaxed) {
                return Ok(JobEvent::Cancelled {
                    step: generator.steps_done(),
                });
            }
            let progress = generator.step()?;
            let step = progress.step;
            let _ = sender.send(JobEvent::Progress(progress));
            let every = request.preview_every;
            if every > 0 && (step % every == 0 || step == total) {
                let preview = if request.preview_splats && generator.gaussians().is_some() {
                    Ok(Preview::splats(&generator))
                } else {
                    Preview::mesh(&generator, request.preview_resolution)
                };
                match preview {
                    Ok(Some(preview)) => {
                        let _ = sender.send(JobEvent::Preview(preview));
                    }
                    // Early on there is often nothing above the level yet.
                    Ok(None) => {}
                    // A preview is a courtesy: the run goes on without it.
                    Err(e) => log::warn!("preview at step {step} failed: {e}"),
                }
            }
        }
        let optimize_seconds = start.elapsed().as_secs_f64();

        let start = Instant::now();
        if let Some(dir) = request
            .output
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| ExportError::Io {
                action: "create the folder",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let checkpoint = match &request.checkpoint {
            Some(dir) => {
                generator.save_checkpoint(dir)?;
                Some(dir.clone())
            }
            None => None,
        };
        let (export, mesh) = generator.export_glb(&request.output)?;
        let export_seconds = start.elapsed().as_secs_f64();
        let report = JobReport {
            path: export.path.clone(),
            sidecar: request.output.with_extension("json"),
            prompt: request.config.prompt.clone(),
            steps: generator.steps_done(),
            load_seconds,
            optimize_seconds,
            export_seconds,
            triangles: export.triangles,
            vertices: export.vertices,
            bytes: export.bytes,
            size: export.size,
            checkpoint,
        };
        // The sidecar records the backend that ran, whoever chose it.
        let config = GenerateConfig {
            backend: Some(request.backend),
            ..request.config
        };
        write_sidecar(&report, &config, mesh.report.iso_level)?;
        Ok(JobEvent::Finished(report))
    }
}

/// `<asset>.json`: what made the asset (prompt, seed, the exact config) and the timings.
fn write_sidecar(
    report: &JobReport,
    config: &GenerateConfig,
    iso_level: f32,
) -> Result<(), GenerateError> {
    let json = serde_json::json!({
        "generator": concat!("rewardsds ", env!("CARGO_PKG_VERSION")),
        "prompt": config.prompt,
        "seed": config.seed,
        "report": report,
        "iso_level": iso_level,
        "config": config,
    });
    let text = serde_json::to_string_pretty(&json).expect("JSON values serialise");
    Ok(write_atomic(&report.sidecar, text.as_bytes())?)
}

/// An error and its causes, one after another: the host shows one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
