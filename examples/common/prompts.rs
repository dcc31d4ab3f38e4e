//! Tiny World prompts from the command line (included with
//! `#[path = "common/prompts.rs"] mod prompts;`).

use anyhow::{Context, Result};
use rewardsds::engine::tiny_world::Composition;

/// Each `--prompt` as a Tiny World composition; a prompt that is not a caption of the world
/// is refused by name.
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
