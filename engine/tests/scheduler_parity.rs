//! DDIMScheduler against diffusers (fixture from `tools/fixtures/make_unet_fixtures.py`):
//! both beta schedules, inference timesteps, five DDIM steps for epsilon and v-prediction, and
//! the `add_noise` / `get_velocity` / x0 / eps conversions.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use burn_store::{ModuleStore, SafetensorsStore};
use rewardsds_engine::models::schedulers::{DDIMScheduler, DDIMSchedulerConfig, PredictionType};

type B = NdArray<f32>;

/// f32 parity target of the issue.
const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scheduler_ddim")
        .join(name)
}

struct Reference(SafetensorsStore);

impl Reference {
    fn open() -> Self {
        Self(SafetensorsStore::from_file(fixture(
            "reference.safetensors",
        )))
    }

    fn data(&mut self, name: &str) -> TensorData {
        self.0
            .get_snapshot(name)
            .unwrap()
            .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
            .to_data()
            .unwrap()
    }

    fn tensor<const D: usize>(&mut self, name: &str) -> Tensor<B, D> {
        Tensor::from_data(self.data(name), &Default::default())
    }

    fn floats(&mut self, name: &str) -> Vec<f32> {
        self.data(name).to_vec().unwrap()
    }

    fn usizes(&mut self, name: &str) -> Vec<usize> {
        let v: Vec<i64> = self.data(name).to_vec().unwrap();
        v.into_iter().map(|t| t as usize).collect()
    }
}

fn max_abs_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar()
}

fn max_abs_diff_slices(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn alphas_cumprod_match_both_beta_schedules() {
    let mut r = Reference::open();
    let sd = DDIMScheduler::new(
        DDIMSchedulerConfig::from_file(fixture("scheduler_config.json")).unwrap(),
    )
    .unwrap();
    let err = max_abs_diff_slices(
        &sd.alphas_cumprod,
        &r.floats("alphas_cumprod_scaled_linear"),
    );
    println!("alphas_cumprod scaled_linear: max abs error {err:.2e}");
    assert!(err < 1e-6, "{err}");
    let linear = DDIMScheduler::new(DDIMSchedulerConfig::default()).unwrap();
    let err = max_abs_diff_slices(&linear.alphas_cumprod, &r.floats("alphas_cumprod_linear"));
    println!("alphas_cumprod linear: max abs error {err:.2e}");
    assert!(err < 1e-6, "{err}");
    // The fixture's scheduler is SD's: the preset must agree with the file.
    let file = DDIMSchedulerConfig::from_file(fixture("scheduler_config.json")).unwrap();
    let preset = DDIMSchedulerConfig::sd21_base();
    assert_eq!(
        (file.beta_schedule, file.beta_start, file.beta_end),
        (preset.beta_schedule, preset.beta_start, preset.beta_end)
    );
    assert_eq!(
        (file.set_alpha_to_one, file.steps_offset, file.clip_sample),
        (
            preset.set_alpha_to_one,
            preset.steps_offset,
            preset.clip_sample
        )
    );
}

#[test]
fn ddim_steps_match_for_epsilon_and_v_prediction() {
    let mut r = Reference::open();
    let sample: Tensor<B, 4> = r.tensor("step_sample");
    let outputs: Tensor<B, 5> = r.tensor("step_model_outputs");
    for (tag, file) in [
        ("eps", "scheduler_config.json"),
        ("v", "scheduler_config_v.json"),
    ] {
        let config = DDIMSchedulerConfig::from_file(fixture(file)).unwrap();
        let expected_type = if tag == "v" {
            PredictionType::VPrediction
        } else {
            PredictionType::Epsilon
        };
        assert_eq!(config.prediction_type, expected_type);
        let mut scheduler = DDIMScheduler::new(config).unwrap();
        scheduler.set_timesteps(5).unwrap();
        assert_eq!(scheduler.timesteps, r.usizes(&format!("timesteps_{tag}")));

        let prev: Tensor<B, 5> = r.tensor(&format!("prev_samples_{tag}"));
        let x0: Tensor<B, 5> = r.tensor(&format!("pred_original_{tag}"));
        let mut x = sample.clone();
        let mut worst = 0.0f32;
        for (i, &t) in scheduler.timesteps.clone().iter().enumerate() {
            let pick = |t5: &Tensor<B, 5>| t5.clone().narrow(0, i, 1).squeeze_dim::<4>(0);
            let out = scheduler.step(pick(&outputs), t, x).unwrap();
            worst = worst.max(max_abs_diff(out.pred_original_sample, pick(&x0)));
            worst = worst.max(max_abs_diff(out.prev_sample.clone(), pick(&prev)));
            x = out.prev_sample;
        }
        println!("DDIM {tag}: 5 steps, max abs error {worst:.2e}");
        assert!(worst < TOLERANCE, "{tag}: {worst}");
    }
}

#[test]
fn noise_and_velocity_conversions_match() {
    let mut r = Reference::open();
    let scheduler = DDIMScheduler::new(
        DDIMSchedulerConfig::from_file(fixture("scheduler_config.json")).unwrap(),
    )
    .unwrap();
    let x0: Tensor<B, 4> = r.tensor("conv_x0");
    let noise: Tensor<B, 4> = r.tensor("conv_noise");
    let t = r.usizes("conv_timesteps");
    let noisy = scheduler.add_noise(x0.clone(), noise.clone(), &t).unwrap();
    let velocity = scheduler
        .get_velocity(x0.clone(), noise.clone(), &t)
        .unwrap();
    let err_noisy = max_abs_diff(noisy.clone(), r.tensor("conv_noisy"));
    let err_v = max_abs_diff(velocity.clone(), r.tensor("conv_velocity"));
    // eps -> x0 and v -> (x0, eps) invert the forward process.
    let x0_from_eps = scheduler
        .pred_original_sample(noise.clone(), noisy.clone(), &t)
        .unwrap();
    let mut v_config = scheduler.config.clone();
    v_config.prediction_type = PredictionType::VPrediction;
    let v_scheduler = DDIMScheduler::new(v_config).unwrap();
    let x0_from_v = v_scheduler
        .pred_original_sample(velocity.clone(), noisy.clone(), &t)
        .unwrap();
    let eps_from_v = v_scheduler.pred_epsilon(velocity, noisy, &t).unwrap();
    let err_inv = max_abs_diff(x0_from_eps, x0.clone())
        .max(max_abs_diff(x0_from_v, x0))
        .max(max_abs_diff(eps_from_v, noise));
    println!(
        "add_noise {err_noisy:.2e}, get_velocity {err_v:.2e}, eps/v -> x0/eps round trip {err_inv:.2e}"
    );
    assert!(
        err_noisy < TOLERANCE && err_v < TOLERANCE,
        "{err_noisy} {err_v}"
    );
    // x0 = (x_t - sqrt(1-a) eps) / sqrt(a) amplifies rounding by 1/sqrt(a) (~5 at t = 730).
    assert!(err_inv < 1e-4, "{err_inv}");
}
