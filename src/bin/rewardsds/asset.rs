//! One asset: a generation from a config (or a checkpoint) to its files in a folder (.glb,
//! turntable of the mesh, the field's views, progress log), with what it measured. `generate`
//! runs one; `batch` runs many on one device, the judge loaded once.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rewardsds::engine::backend::{BackendTask, EngineAutodiffBackend};
use rewardsds::engine::burn::tensor::Tensor;
use rewardsds::engine::export::write_splat_ply;
use rewardsds::engine::generate::{GenerateConfig, GenerateEvent, Generator, Progress, slug};
use rewardsds::engine::mesh::{TriMesh, render_mesh};
use rewardsds::engine::rgb_image::RgbImage;
use rewardsds::engine::scene::camera::Camera;
use rewardsds::engine::tiny_world::evaluate::Judge;
use rewardsds::engine::tiny_world::shape_check::check_shapes;
use rewardsds::engine::tiny_world::{Composition, Split};
use rewardsds::engine::weights::resolve_model;
use serde_json::json;

/// Pixels per view of `turntable.png`, the exported mesh seen from 8 sides.
const TURNTABLE_SIZE: u32 = 256;
/// Its background: light grey, so that white props stand out.
const TURNTABLE_BACKGROUND: [f32; 3] = [0.85, 0.85, 0.88];

/// One asset: a run from a config (or a checkpoint) to its files in `out`.
pub struct Generate {
    pub config: GenerateConfig,
    pub out: PathBuf,
    /// A checkpoint folder to continue from instead of starting.
    pub resume: Option<PathBuf>,
    pub export_only: bool,
    pub report: Report,
}

/// What a finished asset run wrote and measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub glb: PathBuf,
    /// The Gaussian splat cloud, for a Gaussian scene.
    pub ply: Option<PathBuf>,
    pub turntable: PathBuf,
    pub triangles: usize,
    /// Steps done in all (a resumed run's earlier ones included).
    pub steps_done: usize,
    /// Steps this call ran.
    pub steps_run: usize,
    /// Loading the models (or the checkpoint).
    pub load_seconds: f64,
    /// The steps this call ran.
    pub optimise_seconds: f64,
    /// Everything: load, steps, export, turntable, judge.
    pub seconds: f64,
    /// Mean reward of the scored samples at the last step that scored any (RewardSDS only).
    pub reward: Option<f32>,
    /// The Tiny World judge's reading of the turntable views, when a judge applies.
    pub judge: Option<JudgeReading>,
}

/// The judge's reading of a result's views.
#[derive(Debug, Clone, Copy)]
pub struct JudgeReading {
    pub views: usize,
    /// Share of views that retrieve the prompt among all captions.
    pub top1: f32,
    pub top5: f32,
    pub clip_score: f32,
}

impl JudgeReading {
    pub fn to_json(self) -> serde_json::Value {
        json!({"views": self.views, "top1": self.top1, "top5": self.top5, "clip_score": self.clip_score})
    }
}

/// Where the run's words go: stdout for a person, or stderr beside JSON events on stdout.
#[derive(Clone, Default)]
pub struct Report {
    pub json: bool,
    /// Names the asset in every JSON event (`batch`).
    pub asset: Option<String>,
}

impl Report {
    /// A line for a person.
    pub fn say(&self, line: impl std::fmt::Display) {
        match (&self.asset, self.json) {
            (Some(asset), true) => eprintln!("[{asset}] {line}"),
            (Some(asset), false) => println!("[{asset}] {line}"),
            (None, true) => eprintln!("{line}"),
            (None, false) => println!("{line}"),
        }
    }

    /// One JSON event (only with `--json`).
    pub fn event(&self, mut event: serde_json::Value) {
        if self.json {
            if let Some(asset) = &self.asset {
                event["asset"] = asset.as_str().into();
            }
            println!("{event}");
        }
    }
}

/// `n` views of `mesh` around its vertical axis at 15 degrees of elevation, framed to fit.
fn mesh_turntable(
    mesh: &TriMesh,
    texture: Option<&rewardsds::engine::image::RgbImage>,
    n: usize,
    size: u32,
) -> Result<Vec<RgbImage>> {
    let Some(bounds) = mesh.bounds() else {
        return Ok(vec![RgbImage::filled(size, size, TURNTABLE_BACKGROUND); n]);
    };
    let fov: f32 = 30.0;
    let center = (bounds.min + bounds.max) / 2.0;
    let radius = ((bounds.max - bounds.min).length() / 2.0).max(1e-3);
    // The bounding sphere just inside the frame.
    let distance = 1.05 * radius / (fov / 2.0).to_radians().sin();
    (0..n)
        .map(|i| {
            let azimuth = 360.0 * i as f32 / n as f32;
            let camera = Camera::orbit_around(center, azimuth, 15.0, distance, fov, size, size)?;
            Ok(render_mesh(mesh, texture, &camera, TURNTABLE_BACKGROUND, 2))
        })
        .collect()
}

/// The judge of a folder, kept across assets: it embeds every caption of the world when it
/// loads, seconds a batch need not spend again per asset.
pub type JudgeCache<B> = Option<(PathBuf, Judge<B>)>;

impl BackendTask for Generate {
    type Output = Result<Outcome>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<Outcome> {
        self.run_with::<B>(&device, &mut None)
    }
}

impl Generate {
    /// Runs on `device`, reusing (or filling) `judges`.
    pub fn run_with<B: EngineAutodiffBackend>(
        self,
        device: &B::Device,
        judges: &mut JudgeCache<B::InnerBackend>,
    ) -> Result<Outcome> {
        let Generate {
            config,
            out,
            resume,
            export_only,
            report,
        } = self;
        let start = Instant::now();
        let mut generator = match &resume {
            Some(dir) => Generator::<B>::resume(dir, device)
                .with_context(|| format!("resuming from {}", dir.display()))?,
            None => {
                let mut g = Generator::<B>::load(config.clone(), device)
                    .context("loading the prior and reward")?;
                g.checkpoint_to(out.join("checkpoint"));
                g
            }
        };
        let load_seconds = start.elapsed().as_secs_f64();
        report.event(json!({
            "event": "loaded",
            "prior": config.prior,
            "seconds": start.elapsed().as_secs_f64(),
            "steps_done": generator.steps_done(),
            "steps": config.total_steps(),
        }));
        report.say(format!(
            "loaded {} in {:.1}s{}",
            config.prior,
            start.elapsed().as_secs_f64(),
            match &resume {
                Some(dir) => format!(
                    "; resuming at step {} from {}",
                    generator.steps_done(),
                    dir.display()
                ),
                None => String::new(),
            }
        ));
        // No bar beside JSON events (indicatif also hides it when stderr is not a terminal).
        let bar = if report.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(config.total_steps() as u64)
        };
        bar.set_position(generator.steps_done() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
                .expect("a valid template"),
        );
        let mut log: Vec<Progress> = Vec::new();
        let mut reward = None;
        // Raised from the start, the run stops before its first step.
        let cancel = AtomicBool::new(export_only);
        if export_only {
            report.say(format!(
                "exporting the state at step {} of {} (--export-only)",
                generator.steps_done(),
                config.total_steps()
            ));
        }
        let mut snapshot_error = None;
        let optimise_start = Instant::now();
        generator.run(&cancel, &mut |event| match event {
            GenerateEvent::Progress(p) => {
                let scores = p
                    .reward_stats()
                    .map(|(lo, mean, hi)| format!(" reward {lo:.1}/{mean:.1}/{hi:.1}"))
                    .unwrap_or_default();
                bar.set_message(format!("loss {:.4} t {:>3}{scores}", p.loss, p.t));
                bar.inc(1);
                if let Some((_, mean, _)) = p.reward_stats() {
                    reward = Some(mean);
                }
                if report.json {
                    let mut event = serde_json::to_value(&p).unwrap_or_default();
                    event["event"] = "progress".into();
                    report.event(event);
                }
                log.push(p);
            }
            GenerateEvent::Snapshot { preview, .. } => {
                if let Err(e) = preview.save_png(out.join("preview.png")) {
                    snapshot_error = Some(e);
                }
            }
            GenerateEvent::Checkpoint { step, path } => {
                report.event(json!({"event": "checkpoint", "step": step, "path": path}));
                bar.println(format!("step {step}: checkpoint {}", path.display()));
            }
        })?;
        bar.finish();
        if let Some(e) = snapshot_error {
            eprintln!("warning: could not save the preview: {e}");
        }
        // The steps alone: loading the models is not a step's cost.
        let optimise = optimise_start.elapsed().as_secs_f64();

        let glb = out.join(format!("{}.glb", slug(&config.prompt)));
        let (export, mesh) = generator.export_glb(&glb).context("exporting the mesh")?;
        report.event(json!({
            "event": "wrote",
            "path": glb,
            "bytes": export.bytes,
            "triangles": export.triangles,
        }));
        report.say(format!(
            "wrote {} ({} triangles, {} KiB; iso-level {:.2}, extraction {:.1}s)",
            glb.display(),
            export.triangles,
            export.bytes / 1024,
            mesh.report.iso_level,
            {
                let t = &mesh.report.timings;
                (t.sample + t.extract + t.cleanup + t.simplify + t.color).as_secs_f64()
            }
        ));
        let mut ply_path = None;
        if let Some(gaussians) = generator.gaussians() {
            let ply = out.join(format!("{}.ply", slug(&config.prompt)));
            write_splat_ply(&gaussians.to_cloud(), &ply).context("writing the splat cloud")?;
            report.event(json!({"event": "wrote", "path": ply, "gaussians": gaussians.len()}));
            report.say(format!(
                "wrote {} ({} Gaussians)",
                ply.display(),
                gaussians.len()
            ));
            ply_path = Some(ply);
        }
        // The field at the size the last steps trained at (what the judge reads), and the
        // exported mesh at a size a person can see.
        let views = generator.turntable(8, config.final_render_size())?;
        RgbImage::hstack(&views)
            .save_png(out.join("views.png"))
            .context("saving the views")?;
        let turntable = out.join("turntable.png");
        RgbImage::hstack(&mesh_turntable(
            &mesh.mesh,
            mesh.texture.as_ref(),
            8,
            TURNTABLE_SIZE,
        )?)
        .save_png(&turntable)
        .context("saving the turntable")?;
        // An export ran no step: the run's own log stays.
        if !export_only {
            std::fs::write(out.join("progress.json"), serde_json::to_string(&log)?)?;
        }
        // The built-in prior's judge, or the judge inside a folder of its layout (a retrained
        // copy).
        let judge_dir = if config.prior == "tiny-world" {
            Some(resolve_model("tiny-world-judge")?)
        } else {
            Some(std::path::Path::new(&config.prior).join("judge")).filter(|dir| dir.is_dir())
        };
        let judge = match judge_dir {
            Some(dir) if Composition::parse(&config.prompt).is_some() => {
                if judges.as_ref().is_none_or(|(cached, _)| *cached != dir) {
                    let judge = Judge::from_folder(&dir, device)
                        .with_context(|| format!("loading the judge {}", dir.display()))?;
                    *judges = Some((dir, judge));
                }
                let (_, judge) = judges.as_ref().expect("filled above");
                judge_views(&report, &config.prompt, &views, judge, device)
            }
            Some(_) => {
                report.say("judge: the prompt is not a Tiny World caption; skipped");
                None
            }
            None => None,
        };
        if let Some(target) = Composition::parse(&config.prompt) {
            // Whether the shipped prior ever saw this composition (a retrained copy may split
            // otherwise, so only the shipped one is named).
            if config.prior == "tiny-world" {
                let seen = if Split::shipped().is_held_out(&target) {
                    "held-out: the prior never saw this composition, only its parts"
                } else {
                    "seen in the prior's training captions"
                };
                report.say(format!("composition: {seen}"));
            }
            // Geometry, read without a CLIP: which shape each colour of the prompt took.
            match check_shapes(&mesh.mesh, &target) {
                Ok(check) => report.say(format!("shapes (no CLIP): {check}")),
                Err(e) => report.say(format!("shapes (no CLIP): skipped, {e}")),
            }
        }
        // Per step this call ran: a resumed run's own, none for an export.
        let per_step = match log.len() {
            0 => String::new(),
            n => format!(" ({:.2}s per step)", optimise / n as f64),
        };
        report.event(json!({
            "event": "done",
            "glb": glb,
            "seconds": start.elapsed().as_secs_f64(),
            "steps_run": log.len(),
        }));
        report.say(format!(
            "done in {:.1}s{per_step}",
            start.elapsed().as_secs_f64()
        ));
        Ok(Outcome {
            glb,
            ply: ply_path,
            turntable,
            triangles: export.triangles,
            steps_done: generator.steps_done(),
            steps_run: log.len(),
            load_seconds,
            optimise_seconds: optimise,
            seconds: start.elapsed().as_secs_f64(),
            reward,
            judge,
        })
    }
}

/// The Tiny World judge's view of the result: which caption each of the 8 renders matches.
fn judge_views<B: rewardsds::engine::burn::tensor::backend::Backend>(
    report: &Report,
    prompt: &str,
    views: &[RgbImage],
    judge: &Judge<B>,
    device: &B::Device,
) -> Option<JudgeReading> {
    let target = Composition::parse(prompt)?;
    let images: Tensor<B, 4> = RgbImage::to_tensor(views, device);
    let targets = vec![target; views.len()];
    let r = judge.retrieval(images.clone(), &targets);
    report.event(json!({
        "event": "judge",
        "views": r.images,
        "top1": r.top1,
        "top5": r.top5,
        "clip_score": r.clip_score,
    }));
    report.say(format!(
        "judge: {:.0}% of {} views retrieve the prompt among all captions (top-5 {:.0}%), judge CLIP score {:.1}",
        100.0 * r.top1,
        r.images,
        100.0 * r.top5,
        r.clip_score
    ));
    let readings: Vec<String> = judge
        .readings(images)
        .iter()
        .map(Composition::caption)
        .collect();
    report.say(format!(
        "judge reads, view by view: {}",
        readings.join("; ")
    ));
    Some(JudgeReading {
        views: r.images,
        top1: r.top1,
        top5: r.top5,
        clip_score: r.clip_score,
    })
}
