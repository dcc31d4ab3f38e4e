//! Tiny World prompts from the command line (included with
//! `#[path = "common/prompts.rs"] mod prompts;`).

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rewardsds::engine::tiny_world::{Composition, Split};

/// `n` captions of `group` drawn at random: the group shuffled with `seed`, its first `n`
/// taken (all of it when it has fewer).
#[allow(dead_code)] // not every example that includes this file samples
pub fn random_sample(group: &[Composition], n: usize, seed: u64) -> Vec<Composition> {
    let mut all = group.to_vec();
    all.shuffle(&mut StdRng::seed_from_u64(seed));
    all.truncate(n);
    all
}

/// The benchmarks' random-sample rule: `n` of the seen captions and `n` of the held-out
/// compositions, each drawn by [`random_sample`] with `seed`, labelled with their group.
#[allow(dead_code)] // not every example that includes this file samples
pub fn random_captions(split: &Split, n: usize, seed: u64) -> Vec<(Composition, &'static str)> {
    random_sample(&split.train, n, seed)
        .into_iter()
        .map(|c| (c, "seen"))
        .chain(
            random_sample(&split.held_out, n, seed)
                .into_iter()
                .map(|c| (c, "held-out")),
        )
        .collect()
}

/// Each `--prompt` as a Tiny World composition; a prompt that is not a caption of the world
/// is refused by name.
#[allow(dead_code)] // not every example that includes this file takes prompts
pub fn tiny_world_prompts(prompts: &[String]) -> Result<Vec<Composition>> {
    prompts
        .iter()
        .map(|text| {
            Composition::parse(text).with_context(|| {
                format!(
                    "--prompt {text:?}: not a Tiny World caption (e.g. \"a red cube and a blue sphere\")"
                )
            })
        })
        .collect()
}
