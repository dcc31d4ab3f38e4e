//! The NeRF renderer on the wgpu backend (a real GPU, or Mesa's software Vulkan driver on a
//! CPU-only machine) matches the CPU backend: forward output and table gradients.
//!
//! Without a Vulkan device the test says so and passes, except under CI (`CI` set), where
//! .ci/run installs lavapipe and a missing device is a failure.
#![cfg(all(feature = "wgpu", feature = "cpu"))]

use burn::backend::{Autodiff, NdArray, Wgpu};
use rewardsds_engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
use rewardsds_engine::render::{VolumeRenderer, VolumeRendererConfig};
use rewardsds_engine::scene::camera::Camera;
use rewardsds_engine::scene::nerf::{HashGridConfig, NerfConfig};
use rewardsds_engine::transfer::copy_params;

struct Probe;
impl BackendTask for Probe {
    type Output = ();
    fn run<B: EngineAutodiffBackend>(self, _: B::Device) {}
}

#[test]
fn wgpu_matches_cpu_forward_and_backward() {
    if let Err(e) = run_on(BackendKind::Wgpu, Probe) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have a Vulkan device: {e}"
        );
        eprintln!("skipping: {e}");
        return;
    }
    type Cpu = Autodiff<NdArray<f32>>;
    type Gpu = Autodiff<Wgpu<f32, i32>>;
    let (cpu, gpu) = (Default::default(), Default::default());
    let config = NerfConfig::new().with_encoding(
        HashGridConfig::new()
            .with_n_levels(6)
            .with_log2_hashmap_size(12)
            .with_base_resolution(4)
            .with_max_resolution(128)
            .with_init_scale(0.3),
    );
    let nerf_cpu = config.init::<Cpu>(&cpu);
    let nerf_gpu = copy_params(&nerf_cpu, config.init::<Gpu>(&gpu), &gpu);
    let renderer = VolumeRenderer::new(VolumeRendererConfig::new().with_num_samples_per_ray(32));
    let rays = Camera::orbit(40.0, 20.0, 2.2, 45.0, 12, 12).unwrap().rays();

    let out_cpu = renderer.render(&nerf_cpu, &rays, false, &cpu);
    let out_gpu = renderer.render(&nerf_gpu, &rays, false, &gpu);
    let rgb_cpu: Vec<f32> = out_cpu.rgb.clone().into_data().to_vec().unwrap();
    let rgb_gpu: Vec<f32> = out_gpu.rgb.clone().into_data().to_vec().unwrap();
    let forward = max_abs(&rgb_cpu, &rgb_gpu);

    let g_cpu = nerf_cpu
        .encoding
        .embeddings
        .grad(&(out_cpu.rgb.sum() + out_cpu.depth.sum()).backward())
        .unwrap();
    let g_gpu = nerf_gpu
        .encoding
        .embeddings
        .grad(&(out_gpu.rgb.sum() + out_gpu.depth.sum()).backward())
        .unwrap();
    let g_cpu: Vec<f32> = g_cpu.into_data().to_vec().unwrap();
    let g_gpu: Vec<f32> = g_gpu.into_data().to_vec().unwrap();
    let scale = g_cpu.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let backward = max_abs(&g_cpu, &g_gpu) / scale;
    println!(
        "wgpu vs cpu: rgb max abs error {forward:.2e}, table gradient max error / max {backward:.2e}"
    );
    assert!(forward < 1e-4, "forward error {forward}");
    assert!(backward < 1e-3, "gradient error {backward}");
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}
