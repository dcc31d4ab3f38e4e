//! 2D mode on the shipped Tiny World prior: RewardSDS optimising an image directly raises the
//! reward model's score of that image.

use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, NdArray};
use rewardsds_engine::generate::{Image2dConfig, Image2dGenerator, StopReason};

type B = Autodiff<NdArray>;

fn mean(xs: &[f32]) -> f32 {
    xs.iter().sum::<f32>() / xs.len() as f32
}

#[test]
fn reward_sds_raises_the_reward_of_the_image() {
    let device = Default::default();
    // A RewardSDS step costs ~3 s on a 2-core CPU (UNet batch 8): a few steps must show it.
    let (steps, window) = (6, 2);
    for seed in [0, 1] {
        let config = Image2dConfig {
            prompt: "a red cube and a blue sphere".into(),
            seed,
            steps,
            ..Image2dConfig::default()
        };
        let mut generator = Image2dGenerator::<B>::load(config, &device).unwrap();
        let mut image_rewards = Vec::new();
        let reason = generator
            .run(&AtomicBool::new(false), &mut |p| {
                assert!(p.progress.loss.is_finite());
                // N = 4 samples ranked, min_max weights: two +0.45, two -0.05.
                assert_eq!(p.progress.rewards.len(), 4);
                let mut w = p.progress.weights.clone();
                w.sort_by(f32::total_cmp);
                assert_eq!(w, [-0.05, -0.05, 0.45, 0.45]);
                image_rewards.push(p.image_reward.unwrap());
            })
            .unwrap();
        assert_eq!(reason, StopReason::Finished);
        image_rewards.push(generator.image_reward().unwrap().unwrap());
        let first = mean(&image_rewards[..window]);
        let last = mean(&image_rewards[image_rewards.len() - window..]);
        eprintln!("seed {seed}: image reward {first:.2} -> {last:.2}: {image_rewards:?}");
        assert!(
            last > first + 1.0,
            "seed {seed}: the reward should rise: {first:.2} -> {last:.2}"
        );
        let image = generator.image();
        assert_eq!((image.width, image.height), (32, 32));
        assert!(image.to_rgb8().len() == 32 * 32 * 3);
    }
}
