//! The `mvdream` preset end to end at CI size: the paper's 3D setup (MVDream prior with its
//! cameras and reconstruction loss, RewardSDS with ImageReward, min_max over N samples, DDIM
//! scoring) on the tiny random MVDream and ImageReward fixtures, a few steps on the CPU, to a
//! Khronos-valid .glb. The models' numbers are checked against the reference elsewhere
//! (mvdream_parity, image_reward_parity); this checks that the pieces run together.

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use rewardsds_engine::generate::{GenerateConfig, Generator};

mod pipeline_folders;
use pipeline_folders::{
    ci_sized, export_valid_glb, fixtures, mvdream_folder, run_collecting_rewards,
};

type B = Autodiff<NdArray>;

/// The preset with the tiny models and CI-sized scene, schedule and mesh; everything that
/// makes it the paper's setup (cameras in groups of 4, recon loss, RewardSDS) kept.
fn tiny_mvdream(prior: &Path, steps: usize) -> GenerateConfig {
    let mut config = GenerateConfig::preset("mvdream").unwrap();
    config.prompt = "a red cube".into();
    config.prior = prior.display().to_string();
    config.reward = Some(fixtures().join("image_reward_tiny").display().to_string());
    config.steps = steps;
    config.guidance.anneal_steps = steps;
    config.guidance.reward.as_mut().unwrap().n_samples = 4;
    config.views_per_step = 4;
    config.resolution_milestones.clear();
    ci_sized(&mut config);
    config
}

#[test]
fn the_mvdream_preset_runs_to_a_valid_glb() {
    let dir = std::env::temp_dir().join(format!("rewardsds-mvdream-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let prior = dir.join("prior");
    mvdream_folder(&prior);

    let (generator, rewards) = run_collecting_rewards(tiny_mvdream(&prior, 3));
    // reward_duration 0.7 of 3 steps: steps 0 and 1, each 4 noise samples scored by
    // ImageReward (its score of the 4 views' mean).
    assert_eq!(rewards.len(), 2);
    for step in &rewards {
        assert_eq!(step.len(), 4);
        assert!(step.iter().all(|r| r.is_finite()));
    }
    export_valid_glb(&generator, &dir.join("a-red-cube.glb"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn views_that_are_not_whole_groups_are_refused_before_running() {
    let dir = std::env::temp_dir().join(format!("rewardsds-mvdream-bad-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let prior = dir.join("prior");
    mvdream_folder(&prior);
    let device = Default::default();

    let mut config = tiny_mvdream(&prior, 2);
    config.views_per_step = 6;
    let err = Generator::<B>::load(config, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("views_per_step") && err.contains("views_per_group"),
        "{err}"
    );

    // Independent cameras for a prior that denoises 4 views of one object together.
    let mut config = tiny_mvdream(&prior, 2);
    config.camera.views_per_group = 1;
    let err = Generator::<B>::load(config, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("views_per_group") && err.contains("num_frames"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
