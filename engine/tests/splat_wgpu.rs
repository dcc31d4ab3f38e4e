//! The splat rasteriser's CubeCL kernels on the wgpu backend (a real GPU, or Mesa's software
//! Vulkan driver on a CPU-only machine) against the host kernels on NdArray: forward output
//! and input gradients on random scenes, an empty scene, a fully culled scene. Timings: `bench_splat --backend wgpu`.
//!
//! Without a Vulkan device the tests say so and pass, except under CI (`CI` set), where
//! .ci/run installs lavapipe and a missing device is a failure.
#![cfg(all(feature = "wgpu", feature = "cpu"))]

use burn::backend::{Autodiff, NdArray, Wgpu};
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rewardsds_engine::render::splat::{OUT, PACK, RasterSize, SplatBackend, rasterize};

mod common;
use common::random_packed;

type Cpu = Autodiff<NdArray<f32>>;
type Gpu = Autodiff<Wgpu<f32, i32>>;

/// Output and input gradient of `sum(rasterize(packed) * weights)` on backend `B`.
fn run<B: SplatBackend + burn::tensor::backend::AutodiffBackend>(
    packed: &[f32],
    weights: &[f32],
    n: usize,
    size: RasterSize,
) -> (Vec<f32>, Vec<f32>) {
    let device = Default::default();
    let input = Tensor::<B, 3>::from_data(
        TensorData::new(packed.to_vec(), [size.views, n, PACK]),
        &device,
    )
    .require_grad();
    let rows = size.views * size.pixels();
    let w = Tensor::<B, 2>::from_data(TensorData::new(weights.to_vec(), [rows, OUT]), &device);
    let out = rasterize(input.clone(), size);
    let grads = (out.clone() * w).sum().backward();
    let grad = input.grad(&grads).unwrap();
    (
        out.into_data().to_vec().unwrap(),
        grad.into_data().to_vec().unwrap(),
    )
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

fn max_of(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Compares the two backends on one scene; returns (forward error, gradient error / max).
fn compare(name: &str, packed: &[f32], n: usize, size: RasterSize, seed: u64) -> (f32, f32) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let weights: Vec<f32> = (0..size.views * size.pixels() * OUT)
        .map(|_| rng.random_range(-1.0..1.0f32))
        .collect();
    let (out_cpu, grad_cpu) = run::<Cpu>(packed, &weights, n, size);
    let (out_gpu, grad_gpu) = run::<Gpu>(packed, &weights, n, size);
    let forward = max_abs(&out_cpu, &out_gpu);
    let scale = max_of(&grad_cpu).max(1e-6);
    let backward = max_abs(&grad_cpu, &grad_gpu);
    let alpha = out_cpu.chunks(OUT).fold(0.0f32, |m, p| m.max(p[4]));
    println!(
        "{name}: forward max abs error {forward:.2e}; gradient max abs error {backward:.2e} \
         ({:.2e} of the largest, {scale:.2e}); max alpha {alpha:.3}",
        backward / scale
    );
    (forward, backward / scale)
}

#[test]
fn cube_kernels_match_host_kernels() {
    if !common::have_vulkan_device() {
        return;
    }
    common::print_atomics();
    // Not multiples of the tile size, several views, deep overlap, big Gaussians crossing
    // many tiles, culled and alpha-capped ones (random_packed).
    let scenes = [
        ("3 views 37x29, 120", 120, 3, 37, 29, 8.0, 7),
        ("2 views 50x70, 600", 600, 2, 50, 70, 8.0, 11),
        ("4 views 33x17, 80 large", 80, 4, 33, 17, 20.0, 13),
        ("1 view 16x16, 3000 dense", 3000, 1, 16, 16, 6.0, 17),
    ];
    for (name, n, views, width, height, max_px, seed) in scenes {
        let size = RasterSize {
            views,
            width,
            height,
        };
        let packed = random_packed(n, size, seed, max_px, false);
        let (forward, backward) = compare(name, &packed, n, size, seed);
        assert!(forward < 1e-4, "{name}: forward differs by {forward}");
        assert!(
            backward < 1e-4,
            "{name}: gradients differ by {backward} (relative)"
        );
    }
}

#[test]
fn cube_kernels_empty_and_culled_scenes() {
    if !common::have_vulkan_device() {
        return;
    }
    let size = RasterSize {
        views: 2,
        width: 20,
        height: 12,
    };
    // No Gaussians at all.
    let (out, grad) = run::<Gpu>(&[], &vec![1.0; 2 * 240 * OUT], 0, size);
    assert_eq!(out.len(), 2 * 240 * OUT);
    assert!(out.iter().all(|&v| v == 0.0), "empty scene drew something");
    assert!(grad.is_empty());
    // Everything behind the camera.
    let n = 50;
    let packed = random_packed(n, size, 3, 8.0, true);
    let (forward, _) = compare("all culled", &packed, n, size, 3);
    assert_eq!(forward, 0.0);
    let (out, grad) = run::<Gpu>(&packed, &vec![1.0; 2 * 240 * OUT], n, size);
    assert!(out.iter().all(|&v| v == 0.0), "culled scene drew something");
    assert!(
        grad.iter().all(|&v| v == 0.0),
        "culled scene has a gradient"
    );
}
