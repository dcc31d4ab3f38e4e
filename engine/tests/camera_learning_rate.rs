//! The camera embedding's own learning rate, in a test binary of its own: the comparison
//! needs two training runs to draw the same random numbers from burn's process-wide RNG, which
//! other tests running beside them in one binary would take from.
//!
//! Needs the engine's `train` feature (on in `cargo test --workspace`: the facade's
//! dev-dependency turns it on).
#![cfg(feature = "train")]

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use rewardsds_engine::models::unet_2d::UNet2DConditionModel;
use rewardsds_engine::tiny_world::recipe::{Phases, RecipeConfig, run_recipe};

mod pipeline_folders;
use pipeline_folders::{copy_all_but_unet, load_unet, temp_dir, train_test_pipeline};

type B = NdArray;

#[test]
fn the_camera_learning_rate_factor_scales_only_the_embeddings_step() {
    let device = Default::default();
    let out = train_test_pipeline("camera-lr");
    // One step from the plain UNet with a new, zero-initialised camera embedding; at rate 0
    // the embedding stays where it started.
    let one_step = |factor: f64, rate: f64| {
        let dir = temp_dir(&format!("camera-lr-{factor}-{rate}"));
        copy_all_but_unet(&out, &dir);
        let mut recipe = RecipeConfig::test();
        recipe.unet.init_from = Some(out.join("unet"));
        recipe.unet.camera_conditioning = true;
        recipe.unet.camera_learning_rate_factor = factor;
        recipe.unet.phase.steps = 1;
        recipe.unet.phase.learning_rate = rate;
        recipe.unet.ema_decay = 0.0;
        let phases = Phases {
            unet: true,
            ..Phases::default()
        };
        run_recipe::<Autodiff<B>>(&recipe, phases, &dir, 2, &device, &mut |_| {}).unwrap();
        let (_, model) = load_unet(&dir);
        std::fs::remove_dir_all(&dir).ok();
        model
    };
    let split = |mut model: UNet2DConditionModel<B>| {
        let embedding = model.class_embedding.take();
        (flat(&embedding), flat(&model))
    };
    let rate = RecipeConfig::test().unet.phase.learning_rate;
    let (start, _) = split(one_step(1.0, 0.0));
    // One step at factor 10 moves the embedding ten times as far as at factor 1 (AdamW's
    // step is linear in the rate) and every other weight alike.
    let (camera_1, rest_1) = split(one_step(1.0, rate));
    let (camera_10, rest_10) = split(one_step(10.0, rate));
    assert_eq!(rest_1.len(), rest_10.len());
    let rest_diff = rest_1
        .iter()
        .zip(&rest_10)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(rest_diff < 1e-7, "the other weights differ by {rest_diff}");
    // The saved weights are f16, so compare the output layer, which starts at zero where f16
    // resolves a step exactly enough; the first layer moves by weight decay alone, under f16's.
    let pairs: Vec<(f32, f32)> = (camera_1.iter().zip(&camera_10))
        .zip(&start)
        .filter(|(_, s)| **s == 0.0)
        .map(|((a, b), _)| (*a, *b))
        .collect();
    assert!(pairs.len() > 100, "{} output weights", pairs.len());
    let largest = pairs.iter().fold(0.0f32, |m, (_, d)| m.max(d.abs()));
    assert!(largest > 0.0, "the embedding did not move");
    let off = pairs
        .iter()
        .map(|(a, b)| (10.0 * a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        off < 0.01 * largest,
        "factor 10 moved it {largest}, 10x factor 1 off by {off}"
    );
    std::fs::remove_dir_all(&out).ok();
}

/// Every float parameter of `module`, flattened in visiting order.
fn flat<M: Module<B>>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0
                .extend(param.val().into_data().to_vec::<f32>().unwrap());
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}
