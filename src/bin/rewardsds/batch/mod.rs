//! `rewardsds batch <manifest>`: many assets into one library folder, resumable, and spread
//! over workers that share nothing but that folder (`--shard I/N`, see tools/slurm and
//! tools/kubernetes).
//!
//! Each entry becomes `<library>/<name>/` (the entry's `name`, else `<prompt slug>-seed<seed>`)
//! with what `generate` writes there, then `result.json`, its record. An entry is skipped when
//! its record says done with the same config hash; a killed one resumes from its checkpoint;
//! a failed one, or one whose config changed, starts over. `index.json` lists every record and
//! `contact_sheet.png` shows every finished turntable, one row each.

mod library;
mod lock;
mod manifest;
mod plan;
mod shard;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rewardsds::engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds::engine::export::{ValidatorError, inspect_glb, khronos_validate};
use rewardsds::engine::generate::checkpoint_config;
use serde_json::{Value, json};

use crate::asset::{Generate, JudgeCache, Outcome, Report};
use crate::overrides::Overrides;
use crate::{EXIT_FAILED, EXIT_INVALID, Failure};
use library::{CONTACT_SHEET, INDEX, Library};
use lock::{Taken, Worker, now_seconds};
use manifest::Manifest;
use plan::{Planned, config_hash, plan};
pub use shard::Shard;

/// `rewardsds batch` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The manifest: .toml (`[[asset]]` tables), .jsonl (one entry object per line), or any
    /// other file of prompts, one per line. docs/batch.md shows each.
    manifest: PathBuf,
    /// The library folder.
    #[arg(long, default_value = "out/library")]
    out: PathBuf,
    /// Preset of the entries that name none (the manifest's `preset` wins).
    #[arg(long, default_value = "fast")]
    preset: String,
    /// Applied to every entry; the manifest's own values win over them.
    #[command(flatten)]
    overrides: Overrides,
    /// Backend: cpu, wgpu or cuda [default: cpu].
    #[arg(long)]
    backend: Option<String>,
    /// Make only worker I's share of N workers, counted from 0 (`--shard 0/4`): entry k of
    /// the manifest goes to worker k mod N.
    #[arg(long)]
    shard: Option<Shard>,
    /// This worker's name in lock files and records; a worker that comes back under the same
    /// name (a requeued Slurm task) takes its own locks back [default: host:pid].
    #[arg(long)]
    worker_id: Option<String>,
    /// Seconds without a heartbeat after which another worker's lock counts as abandoned.
    #[arg(long, default_value_t = 600)]
    stale_after: u64,
    /// Make nothing: check that every entry of the manifest is finished with its config, its
    /// .glb valid and listed once in index.json (exit 3 when not).
    #[arg(long)]
    verify: bool,
    /// Pixels per view in the contact sheet's rows.
    #[arg(long, default_value_t = 128)]
    sheet_view_size: u32,
    /// One JSON event per line on stdout (each generation's, with its `asset`, and the
    /// batch's own `asset` and `batch_done` events).
    #[arg(long)]
    json: bool,
}

/// What became of one entry.
enum Made {
    /// Finished before, with the same config.
    Finished,
    /// Another worker holds it.
    Busy(String),
    Done,
    Failed(String),
}

/// Runs `rewardsds batch`: 0 when no entry failed, 1 when one did.
pub fn run(args: Args) -> Result<u8, Failure> {
    let report = Report {
        json: args.json,
        asset: None,
    };
    let kind: BackendKind = match &args.backend {
        Some(b) => b.parse().context("--backend").map_err(Failure::bad_input)?,
        None => BackendKind::default(),
    };
    if args.sheet_view_size == 0 || args.sheet_view_size > 1024 {
        return Err(Failure::bad_input(anyhow::anyhow!(
            "--sheet-view-size {}: use 1 to 1024 px",
            args.sheet_view_size
        )));
    }
    // Everything is read and checked before the library folder is touched.
    let manifest = Manifest::read(&args.manifest).map_err(Failure::bad_input)?;
    let planned = plan(&manifest, &args.preset, &args.overrides).map_err(Failure::bad_input)?;
    if args.verify {
        return verify(&args.out, &planned);
    }
    let shard = args.shard.unwrap_or(Shard::ALL);
    let library = Library::create(&args.out).map_err(Failure::bad_input)?;
    let me = Worker::this_process(args.worker_id.clone());
    let stale_after = Duration::from_secs(args.stale_after.max(1));
    let mine: Vec<&Planned> = planned
        .iter()
        .enumerate()
        .filter(|(k, _)| shard.owns(*k))
        .map(|(_, p)| p)
        .collect();
    report.say(format!(
        "batch: {} of {} entries (shard {shard}) into {}, worker {}",
        mine.len(),
        planned.len(),
        args.out.display(),
        me.worker
    ));
    let worklist = Worklist {
        library: &library,
        mine,
        me: &me,
        stale_after,
        kind,
        report: &report,
    };
    let made = run_on(kind, worklist).map_err(Failure::bad_input)?;
    let count = |f: fn(&Made) -> bool| made.iter().filter(|m| f(m)).count();
    let done = count(|m| matches!(m, Made::Done));
    let finished = count(|m| matches!(m, Made::Finished));
    let busy = count(|m| matches!(m, Made::Busy(_)));
    let failed = count(|m| matches!(m, Made::Failed(_)));
    let listed = library.rebuild_index(&me)?;
    let rows = library.write_contact_sheet(&me, args.sheet_view_size)?;
    report.event(json!({
        "event": "batch_done",
        "done": done, "finished_before": finished, "busy": busy, "failed": failed,
        "index": args.out.join(INDEX), "listed": listed, "contact_sheet_rows": rows,
    }));
    report.say(format!(
        "batch: {done} made, {finished} already finished, {busy} held by other workers, \
         {failed} failed; {} lists {listed} assets",
        args.out.join(INDEX).display()
    ));
    Ok(if failed > 0 { EXIT_FAILED } else { 0 })
}

/// Whether the asset's record says it is finished with this config, its file there.
fn is_finished(library: &Library, p: &Planned) -> bool {
    library.result(&p.name).is_some_and(|r| {
        r["status"] == "done"
            && r["config_hash"] == p.hash.as_str()
            && r["files"]["glb"]
                .as_str()
                .is_some_and(|f| library.root.join(f).is_file())
    })
}

/// A worker's entries, made one after the other on one device (the judge loaded once).
struct Worklist<'a> {
    library: &'a Library,
    mine: Vec<&'a Planned>,
    me: &'a Worker,
    stale_after: Duration,
    kind: BackendKind,
    report: &'a Report,
}

impl BackendTask for Worklist<'_> {
    type Output = Vec<Made>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Vec<Made> {
        let mut judges = None;
        let report = self.report;
        let mut all = Vec::with_capacity(self.mine.len());
        for p in &self.mine {
            let made = make::<B>(&self, p, &device, &mut judges).unwrap_or_else(|e| {
                // The library itself failed (a record could not be written).
                Made::Failed(format!("{e:#}"))
            });
            let (status, detail) = match &made {
                Made::Finished => ("finished", "already made with this config".to_string()),
                Made::Busy(worker) => ("busy", format!("being made by {worker}")),
                Made::Done => ("done", String::new()),
                Made::Failed(why) => ("failed", why.clone()),
            };
            report.event(
                json!({"event": "asset", "asset": p.name, "status": status, "detail": detail}),
            );
            report.say(format!("{}: {status} {detail}", p.name));
            all.push(made);
        }
        all
    }
}

/// Makes one entry (or finds it made, or held by another worker).
fn make<B: EngineAutodiffBackend>(
    work: &Worklist<'_>,
    p: &Planned,
    device: &B::Device,
    judges: &mut JudgeCache<B::InnerBackend>,
) -> Result<Made> {
    let Worklist {
        library,
        me,
        stale_after,
        kind,
        report,
        ..
    } = *work;
    if is_finished(library, p) {
        return Ok(Made::Finished);
    }
    let _lock = match library.lock_asset(&p.name, me, stale_after)? {
        Taken::Busy(holder) => return Ok(Made::Busy(holder.worker)),
        Taken::Held(lock) => lock,
    };
    // Another worker may have finished it between the look and the lock.
    if is_finished(library, p) {
        return Ok(Made::Finished);
    }
    let dir = library.asset_dir(&p.name);
    let checkpoint = dir.join("checkpoint");
    let resume = match checkpoint_config(&checkpoint) {
        Ok(c) if config_hash(&c) == p.hash => Some(checkpoint),
        _ => None,
    };
    if resume.is_none() && dir.exists() {
        // Failed, changed, or killed before its first checkpoint: start over.
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut config = p.config.clone();
    config.backend = Some(kind);
    if resume.is_none() {
        let toml = dir.join("config.toml");
        std::fs::write(&toml, config.to_toml())
            .with_context(|| format!("writing {}", toml.display()))?;
    }
    let asset_report = Report {
        json: report.json,
        asset: Some(p.name.clone()),
    };
    report.event(json!({
        "event": "asset", "asset": p.name, "status": "started", "resumed": resume.is_some()
    }));
    let task = Generate {
        config,
        out: dir.clone(),
        resume,
        export_only: false,
        report: asset_report,
    };
    let outcome = task.run_with::<B>(device, judges);
    let (record, made) = match outcome {
        Ok(o) => (record(library, p, me, Ok(&o)), Made::Done),
        Err(e) => {
            let why = format!("{e:#}");
            (record(library, p, me, Err(&why)), Made::Failed(why))
        }
    };
    library.write_result(&p.name, &record)?;
    library.rebuild_index(me)?;
    Ok(made)
}

/// The asset's `result.json`: what was asked, what was written and measured, who made it.
fn record(library: &Library, p: &Planned, me: &Worker, outcome: Result<&Outcome, &str>) -> Value {
    let rel = |path: &Path| {
        path.strip_prefix(&library.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    };
    let mut r = json!({
        "name": p.name,
        "prompt": p.config.prompt,
        "seed": p.config.seed,
        "preset": p.preset,
        "scene": format!("{:?}", p.config.scene).to_lowercase(),
        "steps": p.config.steps,
        "config_hash": p.hash,
        "worker": me.worker,
        "host": me.host,
        "finished": now_seconds(),
    });
    match outcome {
        Ok(o) => {
            r["status"] = "done".into();
            r["files"] = json!({
                "glb": rel(&o.glb),
                "turntable": rel(&o.turntable),
                "config": rel(&library.asset_dir(&p.name).join("config.toml")),
                "ply": o.ply.as_deref().map(rel),
            });
            r["triangles"] = o.triangles.into();
            r["timings"] = json!({
                "seconds": o.seconds,
                "load_seconds": o.load_seconds,
                "optimise_seconds": o.optimise_seconds,
                "steps_run": o.steps_run,
                "resumed_at_step": o.steps_done - o.steps_run,
            });
            r["reward"] = o.reward.into();
            r["judge"] = o.judge.map(|j| j.to_json()).unwrap_or(Value::Null);
        }
        Err(why) => {
            r["status"] = "failed".into();
            r["error"] = why.into();
        }
    }
    r
}

/// `--verify`: every planned asset finished with its config, a valid .glb, once in the index,
/// and a contact sheet; exit 3 otherwise.
fn verify(root: &Path, planned: &[Planned]) -> Result<u8, Failure> {
    let library = Library::open(root);
    let mut problems: Vec<String> = Vec::new();
    let index: Option<Value> = std::fs::read_to_string(root.join(INDEX))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let listed: Vec<&str> = index
        .as_ref()
        .and_then(|i| i["assets"].as_array())
        .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    if index.is_none() {
        problems.push(format!(
            "{} is missing or unreadable",
            root.join(INDEX).display()
        ));
    }
    if !root.join(CONTACT_SHEET).is_file() {
        problems.push(format!("{} is missing", root.join(CONTACT_SHEET).display()));
    }
    let mut khronos = true;
    let mut ok = 0;
    for p in planned {
        let times = listed.iter().filter(|n| **n == p.name).count();
        if index.is_some() && times != 1 {
            problems.push(format!("{}: listed {times} times in the index", p.name));
        }
        let Some(r) = library.result(&p.name) else {
            problems.push(format!("{}: not made (no result.json)", p.name));
            continue;
        };
        if r["status"] != "done" {
            problems.push(format!("{}: {} ({})", p.name, r["status"], r["error"]));
            continue;
        }
        if r["config_hash"] != p.hash.as_str() {
            problems.push(format!("{}: made with another config", p.name));
            continue;
        }
        let glb = root.join(r["files"]["glb"].as_str().unwrap_or_default());
        match check_glb(&glb, &mut khronos) {
            Ok(how) => {
                ok += 1;
                println!("{}: ok ({how})", p.name);
            }
            Err(why) => problems.push(format!("{}: {} {why}", p.name, glb.display())),
        }
    }
    for problem in &problems {
        println!("problem: {problem}");
    }
    println!(
        "{ok} of {} entries finished and valid in {}",
        planned.len(),
        root.display()
    );
    Ok(if problems.is_empty() { 0 } else { EXIT_INVALID })
}

/// A .glb's validity: the Khronos validator while it is installed, else the structural check.
fn check_glb(glb: &Path, khronos: &mut bool) -> Result<&'static str, String> {
    inspect_glb(glb).map_err(|e| e.to_string())?;
    if *khronos {
        match khronos_validate(glb) {
            Ok(v) if v.errors > 0 => return Err(format!("{} validator errors", v.errors)),
            Ok(_) => return Ok("Khronos validator"),
            Err(ValidatorError::Missing(_)) => *khronos = false,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok("structural check")
}
