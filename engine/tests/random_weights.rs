//! The benchmarks' random-weights switch (`weights::set_random_init_for_benchmarks`): a
//! folder holding only config files loads under it and a generation steps with finite losses;
//! without it the same folder is refused, naming the folder that has no weights. The switch is
//! process-wide, so this file is its own test binary with one test.

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use rewardsds_engine::generate::{GenerateConfig, GenerateError, Generator};
use rewardsds_engine::weights::{LoadError, random_init, set_random_init_for_benchmarks};

mod pipeline_folders;
use pipeline_folders::{ci_sized, copy_dir, fixtures, mvdream_folder, temp_dir, walk};

type B = Autodiff<NdArray>;

/// Deletes every weight file under `dir`, keeping configs and tokenizers.
fn keep_configs_only(dir: &Path) {
    for file in walk(dir) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") || name.ends_with(".pt") {
            std::fs::remove_file(file).unwrap();
        }
    }
}

#[test]
fn config_only_folders_load_only_under_the_benchmark_switch() {
    let dir = temp_dir("random-weights");
    let prior = dir.join("mvdream");
    mvdream_folder(&prior);
    let reward = dir.join("image-reward");
    copy_dir(&fixtures().join("image_reward_tiny"), &reward);
    keep_configs_only(&dir);

    let mut config = GenerateConfig::preset("mvdream").unwrap();
    config.prompt = "a red cube".into();
    config.prior = prior.display().to_string();
    config.reward = Some(reward.display().to_string());
    config.steps = 2;
    config.guidance.anneal_steps = 2;
    config.guidance.reward.as_mut().unwrap().n_samples = 4;
    config.views_per_step = 4;
    config.resolution_milestones.clear();
    ci_sized(&mut config);
    let device = Default::default();

    // Off (the default): the text encoder's folder has no weights, and the error says so.
    assert!(!random_init());
    match Generator::<B>::load(config.clone(), &device) {
        Err(GenerateError::Model {
            field: "prior",
            source: LoadError::NoWeights { path, .. },
            ..
        }) => assert_eq!(path, prior.join("text_encoder")),
        other => panic!("expected NoWeights for the text encoder, got {other:?}"),
    }

    // On: every model is built from its config and keeps its random initial weights.
    set_random_init_for_benchmarks(true);
    let mut generator = Generator::<B>::load(config, &device).unwrap();
    let steps: Vec<_> = (0..2).map(|_| generator.step().unwrap()).collect();
    assert!(steps.iter().all(|p| p.loss.is_finite()), "{steps:?}");
    // The reward window is the first 0.7 of 2 steps: step 1's 4 samples were scored by the
    // random ImageReward.
    assert_eq!(steps[0].rewards.len(), 4, "{steps:?}");
    assert!(steps[0].rewards.iter().all(|r| r.is_finite()));
    assert!(steps[1].rewards.is_empty());
    set_random_init_for_benchmarks(false);
    std::fs::remove_dir_all(&dir).ok();
}
