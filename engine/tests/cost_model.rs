//! The cost model's FLOP counts equal PyTorch's own counter on the full-size models
//! (engine/tests/fixtures/flop_counts.json, from tools/cost/torch_flop_counts.py), and its
//! memory check refuses what cannot fit, naming the field.

use std::path::Path;

use rewardsds_engine::cost::flops::{self, UNetInput};
use rewardsds_engine::cost::memory::{check_fits, step_memory};
use rewardsds_engine::cost::run::expected_ddim_passes;
use rewardsds_engine::cost::{CostModels, run_cost, steps_cost};
use rewardsds_engine::generate::GenerateConfig;
use rewardsds_engine::models::autoencoder_tiny::AutoencoderTinyConfig;
use rewardsds_engine::models::clip_vision::CLIPVisionConfig;
use rewardsds_engine::models::mv_unet::MultiViewUNetModelConfig;
use rewardsds_engine::models::unet_2d::UNet2DConditionModelConfig;
use rewardsds_engine::models::vae::AutoencoderKLConfig;
use serde_json::Value;

fn torch_counts() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flop_counts.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn count(v: &Value) -> f64 {
    v.as_u64().expect("an integer count") as f64
}

#[test]
fn unet_flops_equal_pytorchs_counter() {
    let torch = torch_counts();
    let sd21 = UNet2DConditionModelConfig::sd21_base();
    let mv = MultiViewUNetModelConfig::sd21_base_4view();
    let mv_unet = mv.to_unet_config().unwrap();
    for side in [32, 64] {
        let input = UNetInput {
            latent_side: side,
            text_tokens: 77,
            num_frames: 1,
        };
        let ours = flops::unet_forward(&sd21, input);
        let theirs = count(&torch["sd21_unet"]["forward_per_sample"][side.to_string()]);
        assert_eq!(ours, theirs, "SD 2.1-base UNet at {side}x{side}");

        let frames = UNetInput {
            num_frames: mv.num_frames,
            ..input
        };
        let ours = flops::unet_forward(&mv_unet, frames);
        let theirs = count(&torch["mvdream_unet"]["forward_per_sample"][side.to_string()]);
        assert_eq!(ours, theirs, "MVDream UNet at {side}x{side}, 4 views");
    }
}

#[test]
fn vae_and_clip_flops_equal_pytorchs_counter() {
    let torch = torch_counts();
    let vae = AutoencoderKLConfig::sd();
    for side in [256, 512] {
        let t = &torch["sd_vae"]["per_image"][side.to_string()];
        assert_eq!(flops::vae_encode(&vae, side), count(&t["encode"]), "{side}");
        assert_eq!(flops::vae_decode(&vae, side), count(&t["decode"]), "{side}");
        assert_eq!(
            flops::vae_encode_backward(&vae, side),
            count(&t["encode_with_backward"]),
            "{side}"
        );
    }
    assert_eq!(
        flops::clip_vision(&CLIPVisionConfig::clip_vit_l_14()),
        count(&torch["clip_vit_l14"]["forward_per_image"])
    );
    for side in [32, 64] {
        assert_eq!(
            flops::taesd_decode(&AutoencoderTinyConfig::default(), side),
            count(&torch["taesd"]["decode_per_latent_side"][side.to_string()]),
            "TAESD from a {side}x{side} latent"
        );
    }
}

#[test]
fn taesd_scoring_cuts_the_decode_cost_of_the_paper_setup() {
    let mut config = GenerateConfig::preset("mvdream").unwrap();
    let vae = run_cost(&config, &CostModels::for_config(&config).unwrap());
    config.score_decoder = Some("taesd".into());
    let taesd = run_cost(&config, &CostModels::for_config(&config).unwrap());
    let decode = |c: &rewardsds_engine::cost::RunCost| {
        c.components
            .iter()
            .find(|c| c.name.contains("decode"))
            .unwrap()
            .flops
    };
    // 622 GFLOP per 256 px VAE decode against TAESD's 35: 17.6x fewer.
    let ratio = decode(&vae) / decode(&taesd);
    assert!((ratio - 622.187 / 35.338).abs() < 0.01, "{ratio}");
}

#[test]
fn ddim_scoring_passes_follow_the_grid() {
    // The 15-point grid from 999 to 0 (0, 71, 142, ...): below t = 999 lie 14 points, below
    // t = 20 only 0; t uniform on [20, 999] averages in between.
    assert_eq!(expected_ddim_passes(999, 999), 14.0);
    assert_eq!(expected_ddim_passes(20, 20), 1.0);
    let mean = expected_ddim_passes(20, 999);
    assert!(mean > 1.0 && mean < 14.0, "{mean}");
}

#[test]
fn the_steps_of_a_run_add_up_to_the_run_and_follow_its_schedule() {
    let models = CostModels::resolve("mvdream", Some("image-reward")).unwrap();
    let config = GenerateConfig::preset("mvdream").unwrap();
    let whole = run_cost(&config, &models);
    // Three spans that tile the run: 64 px renders, rewarded; 256 px after the milestone,
    // still rewarded; 256 px after reward_duration (0.7 of the steps).
    let rewarded_until = (config.steps as f64 * 0.7) as usize;
    let milestone = config.resolution_milestones[0].step;
    assert!(milestone < rewarded_until, "{milestone} {rewarded_until}");
    let spans = [
        0..milestone,
        milestone..rewarded_until,
        rewarded_until..config.steps,
    ];
    let parts: Vec<_> = spans
        .iter()
        .map(|s| steps_cost(&config, &models, s.clone()))
        .collect();
    let sum: f64 = parts.iter().map(|p| p.seconds()).sum();
    assert!(
        (sum - whole.seconds()).abs() < 1e-6 * whole.seconds(),
        "{sum} {}",
        whole.seconds()
    );
    assert_eq!(parts.iter().map(|p| p.steps).sum::<usize>(), config.steps);
    // At the same render size, the last rewarded step (N = 7 samples, DDIM-scored) costs
    // more than twice the first unrewarded one (one sample, no scoring).
    let one = |step: usize| steps_cost(&config, &models, step..step + 1).seconds();
    let (scored, plain) = (one(rewarded_until - 1), one(rewarded_until));
    assert!(scored > 2.0 * plain, "{scored} {plain}");
    // Past the end is nothing.
    assert_eq!(
        steps_cost(&config, &models, config.steps..config.steps + 5).seconds(),
        0.0
    );
}

#[test]
fn the_paper_setup_costs_more_than_plain_sds_and_scoring_is_its_bulk() {
    let models = CostModels::resolve("mvdream", Some("image-reward")).unwrap();
    let reward = run_cost(&GenerateConfig::preset("mvdream").unwrap(), &models);
    let sds = run_cost(&GenerateConfig::preset("mvdream-sds").unwrap(), &models);
    assert!(reward.seconds() > 2.0 * sds.seconds());
    let scoring: f64 = reward
        .components
        .iter()
        .filter(|c| c.name.contains("scoring") || c.name == "reward")
        .map(|c| c.seconds)
        .sum();
    assert!(scoring > 0.5 * reward.seconds(), "{reward:#?}");
    // Plain SDS never scores.
    assert!(
        sds.components
            .iter()
            .filter(|c| c.name.contains("scoring") || c.name == "reward")
            .all(|c| c.flops == 0.0)
    );
}

#[test]
fn a_render_that_cannot_fit_is_refused_naming_render_size() {
    let mut config = GenerateConfig::preset("fast").unwrap();
    config.prompt = "a red cube".into();
    let models = CostModels::for_config(&config).unwrap();
    let fits = step_memory(&config, &models, 0, 4);
    check_fits(&fits, 4e9, "test limit").unwrap();

    config.render_size = 100_000;
    let huge = step_memory(&config, &models, 0, 4);
    let err = check_fits(&huge, 4e9, "test limit").unwrap_err();
    assert_eq!(err.field, "render_size");
    assert!(err.to_string().contains("GB"), "{err}");
}

#[test]
fn an_edit_costs_a_second_unet_branch_and_more_memory() {
    use rewardsds_engine::generate::EditConfig;
    let models = CostModels::resolve("sd21-base", Some("clip-vit-l-14")).unwrap();
    let generate = GenerateConfig::preset("sd21-sds").unwrap();
    let mut edit = generate.clone();
    edit.edit = Some(EditConfig {
        source: "unused: the cost model reads no files".into(),
        source_prompt: "a barrel".into(),
    });
    let unet = |c: &GenerateConfig| {
        run_cost(c, &models)
            .components
            .iter()
            .find(|c| c.name.starts_with("UNet, SDS"))
            .map(|c| c.flops)
            .unwrap()
    };
    let ratio = unet(&edit) / unet(&generate);
    assert!((ratio - 2.0).abs() < 1e-9, "{ratio}");
    let (a, b) = (
        step_memory(&generate, &models, 0, 1),
        step_memory(&edit, &models, 0, 1),
    );
    assert!(b.unet > a.unet, "{a:?} {b:?}");
    assert!(run_cost(&edit, &models).seconds() > run_cost(&generate, &models).seconds());
}

#[test]
fn vsd_costs_its_lora_estimate_and_training_and_the_activations_they_keep() {
    use rewardsds_engine::guidance::VsdConfig;
    let models = CostModels::resolve("sd21-base", Some("clip-vit-l-14")).unwrap();
    let sds = GenerateConfig::preset("sd21-sds").unwrap();
    let mut vsd = sds.clone();
    vsd.guidance.vsd = Some(VsdConfig::default());
    let flops_of = |c: &GenerateConfig, name: &str| {
        run_cost(c, &models)
            .components
            .iter()
            .find(|c| c.name.starts_with(name))
            .map(|c| c.flops)
            .unwrap()
    };
    assert_eq!(flops_of(&sds, "UNet, VSD"), 0.0);
    // Per step: the SDS pass is two UNet rows per view (CFG), the LoRA one more for its
    // estimate and about three for its training step: VSD's part is twice the SDS pass's.
    let ratio = flops_of(&vsd, "UNet, VSD") / flops_of(&vsd, "UNet, SDS");
    assert!((ratio - 2.0).abs() < 1e-9, "{ratio}");
    let (a, b) = (
        step_memory(&sds, &models, 0, 1),
        step_memory(&vsd, &models, 0, 1),
    );
    assert_eq!(a.lora_train, 0.0);
    // Training keeps every level's activations: more than the SDS pass's transient peak.
    assert!(b.lora_train > b.unet, "{b:?}");
    assert!(b.total() > a.total());
}

#[test]
fn the_texture_stage_costs_guidance_steps_without_a_field_render() {
    let models = CostModels::resolve("sd21-base", Some("image-reward")).unwrap();
    let mut config = GenerateConfig::preset("sd21").unwrap();
    config.texture_stage = None;
    let one_stage = run_cost(&config, &models);
    let stage = rewardsds_engine::generate::TextureStageConfig {
        steps: 100,
        ..Default::default()
    };
    config.texture_stage = Some(stage);
    let two_stages = run_cost(&config, &models);
    assert_eq!(two_stages.steps, config.steps + 100);
    let part = |cost: &rewardsds_engine::cost::RunCost, name: &str| {
        cost.components
            .iter()
            .find(|c| c.name.starts_with(name))
            .unwrap()
            .seconds
    };
    // No NeRF render in stage 2; its UNet passes are stage 1's, per step on average: the
    // same views and size, N samples for the same 70% of the stage's steps, one after.
    assert_eq!(part(&two_stages, "render"), part(&one_stage, "render"));
    let stage_two = steps_cost(&config, &models, config.steps..config.steps + 100);
    assert_eq!(stage_two.steps, 100);
    assert_eq!(part(&stage_two, "render"), 0.0);
    let sds = part(&stage_two, "UNet, SDS");
    let per_step_stage_one = part(&one_stage, "UNet, SDS") / config.steps as f64;
    let want = per_step_stage_one * 100.0;
    assert!((sds - want).abs() < 1e-6 * want, "{sds} vs {want}");
    assert!(
        part(&stage_two, "UNet, DDIM") > 0.0,
        "scored inside its window"
    );
}
