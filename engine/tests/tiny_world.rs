//! Tiny World: the recipe runs end to end at test size and writes folders the SD/CLIP loaders
//! read exactly; the shipped weights load through their presets.
//!
//! Needs the engine's `train` feature (on in `cargo test --workspace`: the facade's
//! dev-dependency turns it on).
#![cfg(feature = "train")]

use std::collections::HashMap;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{DType, Distribution, Tensor};
use rewardsds_engine::guidance::{CAMERA_LABELS, ViewAngles, camera_labels};
use rewardsds_engine::models::clip::CLIPModel;
use rewardsds_engine::models::clip_text::CLIPTextModel;
use rewardsds_engine::models::reward::{ClipScore, RewardModel};
use rewardsds_engine::models::schedulers::{DDIMSchedulerConfig, PredictionType};
use rewardsds_engine::models::tokenizer::CLIPTokenizer;
use rewardsds_engine::models::unet_2d::UNet2DConditionModelConfig;
use rewardsds_engine::tiny_world::recipe::{Phases, RecipeConfig, run_recipe};
use rewardsds_engine::tiny_world::{IMAGE_SIZE, ModelScale};
use rewardsds_engine::weights::{resolve_model, save_safetensors, weight_files};

mod pipeline_folders;
use pipeline_folders::{
    copy_all_but_unet, copy_dir, load_unet, temp_dir, train_test_pipeline, walk,
};

type B = NdArray;

#[test]
fn saved_clip_reloads_exactly_in_f32() {
    let device = Default::default();
    let config = ModelScale::Test.reward_clip();
    let model = config.init::<B>(&device);
    let dir = temp_dir("clip-save");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    save_safetensors(
        &model,
        &dir.join("model.safetensors"),
        DType::F32,
        HashMap::new(),
    )
    .unwrap();
    let (loaded, report) = CLIPModel::<B>::from_folder(&dir, &device).unwrap();
    assert!(report.is_exact(), "{report:?}");
    let pixels = Tensor::<B, 4>::ones([2, 3, 32, 32], &device) * 0.3;
    let a = model.get_image_features(pixels.clone()).into_data();
    let b = loaded.get_image_features(pixels).into_data();
    a.assert_eq(&b, true);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn recipe_runs_end_to_end_and_its_folders_load() {
    let device = Default::default();
    let out = temp_dir("tiny-world-recipe");
    let mut steps = 0;
    let report = run_recipe::<Autodiff<B>>(
        &RecipeConfig::test(),
        Phases::all(),
        &out,
        2,
        &device,
        &mut |e| {
            if matches!(
                e,
                rewardsds_engine::tiny_world::recipe::RecipeEvent::Step(_)
            ) {
                steps += 1;
            }
        },
    )
    .unwrap()
    .expect("eval ran");
    assert_eq!(steps, 3 + 3 + 2, "the test preset's steps of the 3 phases");
    assert_eq!(report.samples_held_out.images, 2);
    assert!(report.renders_seen.chance > 0.0 && report.renders_seen.chance < 1e-3);

    // Every folder loads through the same loaders as SD and CLIP, with no key left over.
    let (_, r) = CLIPTextModel::<B>::from_folder(&out.join("text_encoder"), &device).unwrap();
    assert!(r.is_exact(), "{r:?}");
    for clip in ["reward", "judge"] {
        let (_, r) = CLIPModel::<B>::from_folder(&out.join(clip), &device).unwrap();
        assert!(r.is_exact(), "{clip}: {r:?}");
    }
    let config = UNet2DConditionModelConfig::from_file(out.join("unet/config.json")).unwrap();
    assert_eq!(config, ModelScale::Test.unet());
    let (_, r) = config
        .init::<B>(&device)
        .load_weights(&weight_files(&out.join("unet")).unwrap(), &device)
        .unwrap();
    assert!(r.is_exact(), "{r:?}");
    let tokenizer = CLIPTokenizer::from_folder(&out.join("tokenizer")).unwrap();
    assert_eq!(tokenizer.max_length(), 16);
    assert!(out.join("samples.png").is_file());

    // The UNet phase again, started from the folder just written, at learning rate 0: the
    // weights it writes are the ones it started from (a random start would differ).
    let unet_weights = |dir: &std::path::Path| -> Vec<f32> {
        let (model, _) = config
            .init::<B>(&device)
            .load_weights(&weight_files(&dir.join("unet")).unwrap(), &device)
            .unwrap();
        model
            .conv_out
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let before = unet_weights(&out);
    let again = temp_dir("tiny-world-continue");
    std::fs::create_dir_all(&again).unwrap();
    for folder in ["text_encoder", "tokenizer", "scheduler"] {
        copy_dir(&out.join(folder), &again.join(folder));
    }
    let mut recipe = RecipeConfig::test();
    recipe.unet.init_from = Some(out.join("unet"));
    recipe.unet.phase.learning_rate = 0.0;
    let phases = Phases {
        unet: true,
        ..Phases::default()
    };
    run_recipe::<Autodiff<B>>(&recipe, phases, &again, 2, &device, &mut |_| {}).unwrap();
    let after = unet_weights(&again);
    let worst = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "continued UNet moved by {worst}");

    // The judge continued the same way (canonical pairs, the preset's) keeps its weights at
    // learning rate 0; a folder of another CLIP configuration is refused by name.
    let judge_weights = |dir: &std::path::Path| -> Vec<f32> {
        let (model, _) = CLIPModel::<B>::from_folder(&dir.join("judge"), &device).unwrap();
        model
            .visual_projection
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let mut recipe_judge = RecipeConfig::test();
    assert!(recipe_judge.judge_training.canonical_pairs);
    recipe_judge.judge_training.init_from = Some(out.join("judge"));
    recipe_judge.judge.learning_rate = 0.0;
    let judge_phase = Phases {
        judge: true,
        ..Phases::default()
    };
    run_recipe::<Autodiff<B>>(&recipe_judge, judge_phase, &again, 2, &device, &mut |_| {}).unwrap();
    let (before, after) = (judge_weights(&out), judge_weights(&again));
    let worst = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "continued judge moved by {worst}");
    let other_clip = temp_dir("tiny-world-other-clip");
    copy_dir(&out.join("judge"), &other_clip);
    let config_path = other_clip.join("config.json");
    let mut config_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config_json["projection_dim"] = serde_json::json!(8);
    std::fs::write(&config_path, config_json.to_string()).unwrap();
    recipe_judge.judge_training.init_from = Some(other_clip.clone());
    let err =
        run_recipe::<Autodiff<B>>(&recipe_judge, judge_phase, &again, 2, &device, &mut |_| {})
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("judge") && err.contains("config.json"),
        "{err}"
    );
    std::fs::remove_dir_all(&other_clip).ok();

    // Continuing with another objective writes it into the prior's scheduler config (which
    // sampling and SDS convert by), and a later evaluation-only run keeps the folder's.
    let preset = RecipeConfig::test().unet.prediction_type;
    let other = match preset {
        PredictionType::Epsilon => PredictionType::VPrediction,
        _ => PredictionType::Epsilon,
    };
    recipe.unet.prediction_type = other;
    run_recipe::<Autodiff<B>>(&recipe, phases, &again, 2, &device, &mut |_| {}).unwrap();
    let objective = |dir: &std::path::Path| {
        DDIMSchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))
            .unwrap()
            .prediction_type
    };
    assert_eq!(objective(&again), other);
    for folder in ["reward", "judge"] {
        copy_dir(&out.join(folder), &again.join(folder));
    }
    let eval = Phases {
        eval: true,
        ..Phases::default()
    };
    run_recipe::<Autodiff<B>>(&RecipeConfig::test(), eval, &again, 2, &device, &mut |_| {})
        .unwrap()
        .expect("eval ran");
    assert_eq!(
        objective(&again),
        other,
        "the preset's {preset:?} replaced the folder's"
    );
    std::fs::remove_dir_all(&again).ok();
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn camera_conditioning_continues_a_unet_without_it() {
    let device = Default::default();
    let out = train_test_pipeline("tiny-world-camera");
    let again = temp_dir("tiny-world-camera-continue");
    copy_all_but_unet(&out, &again);
    let mut recipe = RecipeConfig::test();
    recipe.unet.init_from = Some(out.join("unet"));
    recipe.unet.camera_conditioning = true;
    recipe.unet.phase.learning_rate = 0.0;
    let phases = Phases {
        unet: true,
        eval: true,
        ..Phases::default()
    };
    // The evaluation samples through the camera embedding (it panics without labels).
    run_recipe::<Autodiff<B>>(&recipe, phases, &again, 2, &device, &mut |_| {})
        .unwrap()
        .expect("eval ran");

    let (config, camera) = load_unet(&again);
    assert_eq!(config.class_embed_type.as_deref(), Some("projection"));
    assert_eq!(camera.class_labels_width(), Some(CAMERA_LABELS));
    let (_, plain) = load_unet(&out);
    assert_eq!(plain.class_labels_width(), None);

    // At learning rate 0 the zero-initialised embedding leaves every prediction as it was,
    // from any camera: the continuation starts where the old prior stood.
    let sample = Tensor::<B, 4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<B, 1>::from_floats([700.0, 40.0], &device);
    let context = Tensor::<B, 3>::random(
        [2, 16, config.cross_attention_dim.get(0)],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let before = plain.forward(sample.clone(), t.clone(), context.clone());
    for views in [[0.0, 0.0], [45.0, 180.0]] {
        let labels = camera_labels::<B>(
            &[
                ViewAngles::new(views[0], 15.0),
                ViewAngles::new(views[1], 5.0),
            ],
            &device,
        );
        let after = camera.forward_with_class_labels(
            sample.clone(),
            t.clone(),
            context.clone(),
            Some(labels),
        );
        let diff: f32 = (after - before.clone()).abs().max().into_scalar();
        assert!(diff < 1e-6, "camera {views:?}: {diff}");
    }

    std::fs::remove_dir_all(&again).ok();
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn shipped_models_load_through_their_presets() {
    let device = Default::default();
    let root = resolve_model("tiny-world").expect("assets/models/tiny-world is shipped");
    let (_, r) = CLIPTextModel::<B>::from_folder(&root.join("text_encoder"), &device).unwrap();
    assert!(r.is_exact(), "{r:?}");
    let config = UNet2DConditionModelConfig::from_file(root.join("unet/config.json")).unwrap();
    let (_, r) = config
        .init::<B>(&device)
        .load_weights(&weight_files(&root.join("unet")).unwrap(), &device)
        .unwrap();
    assert!(r.is_exact(), "{r:?}");
    for preset in ["tiny-world-reward", "tiny-world-judge"] {
        let dir = resolve_model(preset).unwrap();
        let (score, r) = ClipScore::<B>::from_folder(&dir, &device).unwrap();
        assert!(r.is_exact(), "{preset}: {r:?}");
        let s = IMAGE_SIZE as usize;
        let images = Tensor::<B, 4>::ones([1, 3, s, s], &device) * 0.9;
        let v = score
            .score(images, "a red cube")
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(v[0].is_finite());
    }
    // Every shipped tokenizer reads plain English's "an" as the "a" the captions were
    // trained with (the "an" embedding is untrained).
    for dir in [
        root.join("tokenizer"),
        resolve_model("tiny-world-reward").unwrap(),
        resolve_model("tiny-world-judge").unwrap(),
    ] {
        let tokenizer = CLIPTokenizer::from_folder(&dir).unwrap();
        let plain = tokenizer
            .encode("an orange cone on top of a blue cube")
            .unwrap();
        let caption = tokenizer
            .encode("a orange cone on top of a blue cube")
            .unwrap();
        assert_eq!(plain.input_ids, caption.input_ids, "{}", dir.display());
    }
    // Under the 40 MB the design allows for the whole folder.
    let total: u64 = walk(&root)
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(total < 40_000_000, "{total} bytes");
}

/// The shipped prior removes noise from true renders: its clean-image estimate is closer to the
/// render than the rescaled noisy input, at a low and a middle noise level.
#[test]
fn shipped_prior_denoises_true_renders() {
    use rewardsds_engine::guidance::DiffusionPrior;
    use rewardsds_engine::tiny_world::evaluate::{Judge, spread_pairs};
    use rewardsds_engine::tiny_world::probe::{ProbeError, denoise_probe};
    use rewardsds_engine::tiny_world::{Dataset, Split};

    let device = Default::default();
    let root = resolve_model("tiny-world").unwrap();
    let prior = DiffusionPrior::<B>::from_folder(&root, &device).unwrap();
    let judge = Judge::<B>::from_folder(&root.join("judge"), &device).unwrap();
    let captions = spread_pairs(&Split::new(0.1, 2503).held_out, 4);
    let data = Dataset::render(&captions, 1, 7, 2);
    let images = data.images::<B>(&[0, 1, 2, 3], &device);
    let rows = denoise_probe(
        &prior,
        &judge,
        images.clone(),
        &captions,
        &data.views(&[0, 1, 2, 3]),
        &[50, 300],
        1.0,
        0,
    )
    .unwrap();
    for (row, x0_hat) in &rows {
        assert_eq!(x0_hat.dims(), images.dims());
        assert!(
            row.x0_mse < 0.5 * row.input_mse,
            "t = {}: x0_hat {} vs input {}",
            row.timestep,
            row.x0_mse,
            row.input_mse
        );
        // Predicting no noise at all would score 1.
        assert!(row.eps_mse < 0.5, "t = {}: {}", row.timestep, row.eps_mse);
        assert_eq!(row.judge.images, 4);
    }
    // More noise, more to remove.
    assert!(rows[0].1.dims() == rows[1].1.dims() && rows[0].0.input_mse < rows[1].0.input_mse);
    let views = data.views(&[0, 1, 2, 3]);
    let err = denoise_probe(
        &prior,
        &judge,
        images,
        &captions[..3],
        &views,
        &[50],
        1.0,
        0,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ProbeError::Mismatch {
                images: 4,
                captions: 3
            }
        ),
        "{err}"
    );
}

/// The judge's readings of true renders are their own captions most of the time, and agree
/// with its retrieval's top-1 (the same best caption, counted two ways).
#[test]
fn shipped_judge_reads_true_renders() {
    use rewardsds_engine::tiny_world::evaluate::{Judge, spread_pairs};
    use rewardsds_engine::tiny_world::{Dataset, Split};

    let device = Default::default();
    let root = resolve_model("tiny-world").unwrap();
    let judge = Judge::<B>::from_folder(&root.join("judge"), &device).unwrap();
    let captions = spread_pairs(&Split::new(0.1, 2503).train, 8);
    let data = Dataset::render(&captions, 1, 11, 2);
    let indices: Vec<usize> = (0..captions.len()).collect();
    let images = data.images::<B>(&indices, &device);
    let readings = judge.readings(images.clone());
    assert_eq!(readings.len(), captions.len());
    let right = readings
        .iter()
        .zip(&captions)
        .filter(|(r, c)| **r == c.canonical())
        .count();
    let retrieval = judge.retrieval(images, &captions);
    assert_eq!(right as f32 / captions.len() as f32, retrieval.top1);
    assert!(
        right * 2 > captions.len(),
        "{right} of {}: {readings:?}",
        captions.len()
    );
    // Readings are canonical: an "and" pair in item order.
    assert!(readings.iter().all(|r| *r == r.canonical()));

    // Binding swaps: renders of each caption's swap, scored against the caption, are read as
    // the swap (the judge reads them right), and the share is the readings' own count.
    let (originals, swaps): (Vec<_>, Vec<_>) = captions
        .iter()
        .filter_map(|c| Some((*c, c.binding_swap()?)))
        .unzip();
    assert!(originals.len() >= 4, "{captions:?}");
    let swapped = Dataset::render(&swaps, 1, 11, 2);
    let indices: Vec<usize> = (0..swaps.len()).collect();
    let images = swapped.images::<B>(&indices, &device);
    let read_as_swap = judge
        .readings(images.clone())
        .iter()
        .zip(&swaps)
        .filter(|(r, s)| **r == s.canonical())
        .count();
    let retrieval = judge.retrieval(images, &originals);
    assert_eq!(
        retrieval.binding_swaps,
        read_as_swap as f32 / swaps.len() as f32
    );
    assert!(
        read_as_swap * 2 > swaps.len(),
        "{read_as_swap} of {}",
        swaps.len()
    );
}

/// Every UNet parameter gets its gradient when the training batch is split across threads
/// (each part builds its own parameter leaves; the first version lost every gradient of this
/// UNet there, and training silently did nothing).
#[test]
fn split_training_batches_reach_every_unet_parameter() {
    use burn::tensor::Distribution;
    use rewardsds_engine::host_batch::batch_gradients;
    use rewardsds_engine::models::unet_2d::UNet2DConditionModel;
    type AD = Autodiff<NdArray>;
    let device = Default::default();
    let config = ModelScale::Test.unet();
    let fresh: UNet2DConditionModel<AD> = config.init::<AD>(&device);
    let s = IMAGE_SIZE as usize;
    let x = Tensor::<B, 4>::random([2, 3, s, s], Distribution::Default, &device);
    let width = ModelScale::Test.reward_clip().text_config.hidden_size;
    let c = Tensor::<B, 3>::random([2, 4, width], Distribution::Default, &device);
    let loss = |m: &UNet2DConditionModel<AD>, r: std::ops::Range<usize>| {
        let xs = Tensor::<AD, 4>::from_inner(x.clone().narrow(0, r.start, r.len()));
        let cs = Tensor::<AD, 3>::from_inner(c.clone().narrow(0, r.start, r.len()));
        let t = Tensor::<AD, 1>::from_floats([300.0], &device);
        m.forward(xs, t, cs).powi_scalar(2).mean()
    };
    let (whole, all) = batch_gradients(&fresh, 2, 1, loss);
    assert!(all.len() > 10, "{} gradients", all.len());
    let (value, split) = batch_gradients(&fresh, 2, 2, loss);
    assert_eq!(split.len(), all.len(), "every parameter, split in two");
    assert!(
        (value - whole).abs() < 1e-5 * whole.abs().max(1.0),
        "{value} vs {whole}"
    );
}

/// CLIP's contrastive training split across threads gives the whole batch's loss and
/// gradients: the towers run per part, the loss (every image against every caption) once on
/// the gathered embeddings, and each part backpropagates its slice of the embeddings'
/// gradient. The learned temperature, used only by the loss, gets its gradient too.
#[test]
fn split_contrastive_gradients_are_the_whole_batchs() {
    use burn::tensor::{Distribution, Int, Tolerance};
    use rewardsds_engine::tiny_world::train::clip_batch_gradients;
    type AD = Autodiff<NdArray>;
    let device = Default::default();
    let config = ModelScale::Test.judge_clip();
    let model: CLIPModel<AD> = config.init::<AD>(&device);
    let s = config.vision_config.image_size;
    let pixels = Tensor::<B, 4>::random([5, 3, s, s], Distribution::Default, &device);
    let tokenizer =
        CLIPTokenizer::from_folder(&resolve_model("tiny-world-judge").unwrap()).unwrap();
    let captions = [
        "a red cube",
        "a blue sphere and a red cone",
        "a green torus on top of a black cube",
        "a white cylinder",
        "a purple cone and a yellow sphere",
    ];
    let ids: Tensor<B, 2, Int> = tokenizer.input_ids(&captions, &device).unwrap();
    let (whole, all) = clip_batch_gradients(&model, pixels.clone(), ids.clone(), 1);
    assert!(all.len() > 10, "{} gradients", all.len());
    let tolerance = Tolerance::<f32>::absolute(1e-5);
    for chunks in [2, 3, 5] {
        let (value, split) = clip_batch_gradients(&model, pixels.clone(), ids.clone(), chunks);
        assert_eq!(split.len(), all.len(), "{chunks} parts: every parameter");
        assert!((value - whole).abs() < 1e-5, "{chunks}: {value} vs {whole}");
        let id = model.logit_scale.id;
        all.get::<B, 1>(id)
            .expect("the temperature's gradient")
            .into_data()
            .assert_approx_eq::<f32>(&split.get::<B, 1>(id).unwrap().into_data(), tolerance);
        for id in [
            model.visual_projection.weight.id,
            model.text_projection.weight.id,
        ] {
            all.get::<B, 2>(id)
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&split.get::<B, 2>(id).unwrap().into_data(), tolerance);
        }
        let id = model.vision_model.embeddings.patch_embedding.weight.id;
        all.get::<B, 4>(id)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&split.get::<B, 4>(id).unwrap().into_data(), tolerance);
    }
}
