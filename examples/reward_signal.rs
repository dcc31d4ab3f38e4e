//! Does RewardSDS's reward rank the noise samples as an independent judge would? Runs
//! RewardSDS (`fast`, Tiny World) on a seeded random sample of captions (the benchmark's
//! rule) and, every few rewarded steps, hands the N samples the reward scored to the judge (a
//! CLIP never used as reward). Prints, per caption and overall:
//! - the Spearman correlation of reward and judge score over a step's N samples (1: the reward
//!   orders them as the judge does; 0: no relation);
//! - the judge's top-1 read of the samples the weighting favours (positive weight), of all N,
//!   and of the judge's own best as many (what a perfect ranking would pick);
//! - the cosine of the weighted gradient with the plain average of the N samples' (1: the
//!   weighting changes the step's direction nowhere);
//! - the rewards' spread within a step (max - min), beside the judge's.
//!
//! `cargo run --release --example reward_signal -- --prompts 8 --every 5`

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use rewardsds::engine::backend::{BackendTask, EngineAutodiffBackend};
use rewardsds::engine::burn::tensor::{ElementConversion, Tensor, backend::Backend};
use rewardsds::engine::generate::{GenerateConfig, Generator, load_guidance};
use rewardsds::engine::guidance::ScoredSamples;
use rewardsds::engine::tiny_world::evaluate::Judge;
use rewardsds::engine::tiny_world::{Composition, Split};
use rewardsds::engine::weights::resolve_model;

#[path = "common/prompts.rs"]
mod prompts;
use prompts::random_captions;

/// Command-line options.
#[derive(Parser, Debug, Clone)]
#[command(about = "Does the reward rank RewardSDS's noise samples as the judge does?")]
struct Args {
    /// Captions of each group (seen, held-out), drawn as `benchmark --random-sample` does.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// Seed of the draw.
    #[arg(long, default_value_t = 0)]
    sample_seed: u64,
    /// Generation seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Steps per asset (the benchmark's 200).
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Judge every this many rewarded steps.
    #[arg(long, default_value_t = 5)]
    every: usize,
    /// RewardSDS samples per step.
    #[arg(long, default_value_t = 4)]
    n: usize,
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Write the table here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Sums over the judged steps.
#[derive(Default, Clone)]
struct Tally {
    steps: usize,
    spearman: f32,
    /// Steps where the Spearman correlation is defined (neither side constant).
    spearman_steps: usize,
    favoured_top1: f32,
    all_top1: f32,
    judge_best_top1: f32,
    cosine: f32,
    reward_spread: f32,
    judge_spread: f32,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.steps += other.steps;
        self.spearman += other.spearman;
        self.spearman_steps += other.spearman_steps;
        self.favoured_top1 += other.favoured_top1;
        self.all_top1 += other.all_top1;
        self.judge_best_top1 += other.judge_best_top1;
        self.cosine += other.cosine;
        self.reward_spread += other.reward_spread;
        self.judge_spread += other.judge_spread;
    }

    fn row(&self, label: &str) -> String {
        let n = self.steps.max(1) as f32;
        format!(
            "| {label} | {} | {:.2} | {:.1}% | {:.1}% | {:.1}% | {:.3} | {:.3} | {:.2} |\n",
            self.steps,
            self.spearman / self.spearman_steps.max(1) as f32,
            100.0 * self.favoured_top1 / n,
            100.0 * self.all_top1 / n,
            100.0 * self.judge_best_top1 / n,
            self.cosine / n,
            self.reward_spread / n,
            self.judge_spread / n,
        )
    }
}

/// Ranks (average ranks for ties), 0-based.
fn ranks(values: &[f32]) -> Vec<f32> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        for k in i..=j {
            ranks[order[k]] = (i + j) as f32 / 2.0;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rank correlation; `None` when either side is constant.
fn spearman(a: &[f32], b: &[f32]) -> Option<f32> {
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = |r: &[f32]| r.iter().sum::<f32>() / r.len() as f32;
    let (ma, mb) = (mean(&ra), mean(&rb));
    let cov: f32 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f32 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f32 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// One judged step.
fn judge_step<B: Backend>(
    scored: &ScoredSamples<B>,
    judge: &Judge<B>,
    composition: Composition,
) -> Tally {
    let n = scored.rewards.len();
    let rows = scored.images.dims()[0];
    let views = rows / n;
    let (mut top1, mut clip) = (Vec::new(), Vec::new());
    for i in 0..n {
        let images = scored.images.clone().narrow(0, i * views, views);
        let r = judge.retrieval(images, &vec![composition; views]);
        top1.push(r.top1);
        clip.push(r.clip_score);
    }
    let favoured: Vec<usize> = (0..n).filter(|&i| scored.weights[i] > 0.0).collect();
    let k = favoured.len().max(1);
    let mut by_judge: Vec<usize> = (0..n).collect();
    by_judge.sort_by(|&a, &b| clip[b].total_cmp(&clip[a]));
    let mean_of =
        |idx: &[usize]| idx.iter().map(|&i| top1[i]).sum::<f32>() / idx.len().max(1) as f32;

    // The weighted and the plain-average gradient directions.
    let diffs = scored.diffs.clone();
    let per = |i: usize| diffs.clone().narrow(0, i * views, views);
    let mut weighted: Option<Tensor<B, 4>> = None;
    let mut average: Option<Tensor<B, 4>> = None;
    for i in 0..n {
        let w = per(i) * scored.weights[i];
        let a = per(i) / n as f32;
        weighted = Some(weighted.map_or(w.clone(), |s| s + w));
        average = Some(average.map_or(a.clone(), |s| s + a));
    }
    let (w, a) = (weighted.expect("n > 0"), average.expect("n > 0"));
    let dot: f32 = (w.clone() * a.clone()).sum().into_scalar().elem();
    let nw: f32 = (w.clone() * w).sum().into_scalar().elem();
    let na: f32 = (a.clone() * a).sum().into_scalar().elem();
    let spread = |v: &[f32]| {
        v.iter().copied().fold(f32::MIN, f32::max) - v.iter().copied().fold(f32::MAX, f32::min)
    };
    let rho = spearman(&scored.rewards, &clip);
    Tally {
        steps: 1,
        spearman: rho.unwrap_or(0.0),
        spearman_steps: usize::from(rho.is_some()),
        favoured_top1: mean_of(&favoured),
        all_top1: mean_of(&(0..n).collect::<Vec<_>>()),
        judge_best_top1: mean_of(&by_judge[..k]),
        cosine: dot / (nw * na).sqrt().max(1e-12),
        reward_spread: spread(&scored.rewards),
        judge_spread: spread(&clip),
    }
}

struct Signal {
    args: Args,
}

impl BackendTask for Signal {
    type Output = Result<String>;

    fn run<B: EngineAutodiffBackend>(self, device: B::Device) -> Result<String> {
        let args = self.args;
        let captions = random_captions(&Split::shipped(), args.prompts, args.sample_seed);
        let judge =
            Judge::<B::InnerBackend>::from_folder(&resolve_model("tiny-world-judge")?, &device)?;
        let mut table = String::from(
            "| caption | judged steps | Spearman(reward, judge) | judge top-1: favoured | all N | judge's best | cos(weighted, average) | reward spread | judge spread |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        let (mut total, mut early, mut late) =
            (Tally::default(), Tally::default(), Tally::default());
        for (composition, group) in &captions {
            let mut config = GenerateConfig::preset("fast")?;
            config.prompt = composition.caption();
            config.seed = args.seed;
            config.steps = args.steps;
            config.snapshot_every = 0;
            if let Some(r) = config.guidance.reward.as_mut() {
                r.n_samples = args.n;
            }
            let mut guidance = load_guidance::<B>(&config, &device)?;
            guidance.keep_scored_samples(true);
            let mut generator = Generator::<B>::new(config.clone(), guidance, &device)?;
            let mut caption_tally = Tally::default();
            let mut rewarded = 0;
            for _ in 0..config.total_steps() {
                generator.step()?;
                let Some(scored) = generator.guidance_mut().take_scored_samples() else {
                    continue;
                };
                rewarded += 1;
                if rewarded % args.every.max(1) != 0 {
                    continue;
                }
                let tally = judge_step(&scored, &judge, *composition);
                // High t (a coarse, noisy estimate) against low t.
                if scored.t >= 500 {
                    early.add(&tally);
                } else {
                    late.add(&tally);
                }
                caption_tally.add(&tally);
            }
            eprintln!(
                "{}",
                caption_tally
                    .row(&format!("{} ({group})", composition.caption()))
                    .trim_end()
            );
            table += &caption_tally.row(&format!("{} ({group})", composition.caption()));
            total.add(&caption_tally);
        }
        table += &total.row("**all**");
        table += &early.row("all, t >= 500");
        table += &late.row("all, t < 500");
        let seen = captions.iter().filter(|c| c.1 == "seen").count();
        Ok(format!(
            "{} captions ({} seen, {} held-out; sample seed {}), seed {}, `fast` preset with N = {}, {} steps, judged every {} rewarded steps.\n\n{table}",
            captions.len(),
            seen,
            captions.len() - seen,
            args.sample_seed,
            args.seed,
            args.n,
            args.steps,
            args.every
        ))
    }
}

#[path = "common/logging.rs"]
mod logging;
#[path = "common/table.rs"]
mod table;

fn main() -> Result<()> {
    logging::init();
    let args = Args::parse();
    let (backend, out) = (args.backend.clone(), args.out.clone());
    table::run_and_print(&backend, Signal { args }, out.as_deref())
}
