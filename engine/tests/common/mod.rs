//! Helpers shared by the integration tests (each test file includes it with `mod common;`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rewardsds_engine::render::splat::{PACK, RasterSize};

/// Random screen-space Gaussians packed for the rasteriser, `[views, n, PACK]`: ~10% behind
/// the camera, ~20% nearly opaque (alpha capped), elongated rotated ellipses of `1..max_px`
/// pixels, some straddling the border; `culled` puts every one behind the camera.
#[allow(dead_code)] // not every test file that includes this module rasterises
pub fn random_packed(n: usize, size: RasterSize, seed: u64, max_px: f32, culled: bool) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(size.views * n * PACK);
    for _ in 0..size.views * n {
        let (sx, sy) = (rng.random_range(1.0..max_px), rng.random_range(1.0..max_px));
        let theta = rng.random_range(0.0..std::f32::consts::PI);
        let (c, s) = (theta.cos(), theta.sin());
        let (a, b, cc) = (
            c * c * sx * sx + s * s * sy * sy,
            c * s * (sx * sx - sy * sy),
            s * s * sx * sx + c * c * sy * sy,
        );
        let det = a * cc - b * b;
        let depth = if culled || rng.random::<f32>() < 0.1 {
            -1.0
        } else {
            rng.random_range(0.5..5.0f32)
        };
        let opacity = if rng.random::<f32>() < 0.2 {
            0.995
        } else {
            rng.random_range(0.05..0.9f32)
        };
        data.extend_from_slice(&[
            rng.random_range(-4.0..size.width as f32 + 4.0),
            rng.random_range(-4.0..size.height as f32 + 4.0),
            cc / det,
            -b / det,
            a / det,
            rng.random(),
            rng.random(),
            rng.random(),
            opacity,
            depth,
        ]);
    }
    data
}

/// Whether a Vulkan device is there for the wgpu backend (a GPU, or lavapipe); panics under CI
/// (`CI` set), where .ci/run installs lavapipe and a missing device is a failure.
#[cfg(feature = "wgpu")]
#[allow(dead_code)] // not every test file that includes this module runs on wgpu
pub fn have_vulkan_device() -> bool {
    use rewardsds_engine::backend::{BackendKind, BackendTask, EngineAutodiffBackend, run_on};
    struct Probe;
    impl BackendTask for Probe {
        type Output = ();
        fn run<B: EngineAutodiffBackend>(self, _: B::Device) {}
    }
    match run_on(BackendKind::Wgpu, Probe) {
        Ok(()) => true,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have a Vulkan device: {e}"
            );
            eprintln!("skipping: {e}");
            false
        }
    }
}

/// Prints how the wgpu device's kernels accumulate gradients.
#[cfg(feature = "wgpu")]
#[allow(dead_code)] // not every test file that includes this module runs on wgpu
pub fn print_atomics() {
    use burn::backend::wgpu::WgpuRuntime;
    use rewardsds_engine::render::splat::cube::native_float_atomics;
    let native = native_float_atomics::<WgpuRuntime>(&Default::default());
    println!(
        "backward accumulates with {}",
        if native {
            "native float atomics"
        } else {
            "compare-and-swap (no float atomics)"
        }
    );
}
