//! The hash-grid encoding's CubeCL kernels on the wgpu backend (a real GPU, or Mesa's software
//! Vulkan driver on a CPU-only machine) against the host loops: forward features and table
//! gradients, on layouts with dense and hashed levels and many hash collisions.
//!
//! Without a Vulkan device the test says so and passes, except under CI (`CI` set), where
//! .ci/run installs lavapipe and a missing device is a failure.
#![cfg(all(feature = "wgpu", feature = "cpu"))]

mod common;

use burn::backend::Wgpu;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rewardsds_engine::scene::nerf::HashGridConfig;
use rewardsds_engine::scene::nerf::hash_grid_op::{
    GridLayout, HashGridBackend, encode_backward_host, encode_host,
};

type Gpu = Wgpu<f32, i32>;

fn device_tensor(values: Vec<f32>, shape: [usize; 2]) -> burn::tensor::ops::FloatTensor<Gpu> {
    Tensor::<Gpu, 2>::from_data(TensorData::new(values, shape), &Default::default())
        .into_primitive()
        .tensor()
}

fn to_host(t: burn::tensor::ops::FloatTensor<Gpu>) -> Vec<f32> {
    Tensor::<Gpu, 2>::from_primitive(TensorPrimitive::Float(t))
        .into_data()
        .to_vec()
        .unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn cube_kernels_match_host_loops() {
    if !common::have_vulkan_device() {
        return;
    }
    common::print_atomics();
    // Resolutions 4..128 with a 4096-row table: 2 dense levels, then hashed ones where 50k
    // points hit far more vertices than rows. A second layout has 3 features and 3 levels.
    let configs = [
        HashGridConfig::new()
            .with_n_levels(6)
            .with_log2_hashmap_size(12)
            .with_base_resolution(4)
            .with_max_resolution(128),
        HashGridConfig::new()
            .with_n_levels(3)
            .with_n_features_per_level(3)
            .with_log2_hashmap_size(10)
            .with_base_resolution(5)
            .with_max_resolution(40),
    ];
    let mut rng = StdRng::seed_from_u64(38);
    for config in configs {
        let levels = config.layout();
        let features = config.n_features_per_level;
        let rows = levels.iter().map(|l| l.size).sum();
        assert!(levels.iter().any(|l| l.dense) && levels.iter().any(|l| !l.dense));
        let layout = GridLayout {
            levels,
            features,
            rows,
        };
        let n = 50_000;
        let width = layout.levels.len() * features;
        let table: Vec<f32> = (0..rows * features)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        // A little outside [0, 1] too (clamped), and the corners of the cube exactly.
        let mut x: Vec<f32> = (0..n * 3).map(|_| rng.random_range(-0.05..1.05)).collect();
        x[..6].copy_from_slice(&[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let grad: Vec<f32> = (0..n * width)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();

        let forward_host = encode_host(&table, &x, &layout);
        let forward_gpu = to_host(Gpu::hash_grid_encode(
            device_tensor(table.clone(), [rows, features]),
            device_tensor(x.clone(), [n, 3]),
            &layout,
        ));
        let forward = max_abs(&forward_host, &forward_gpu);

        let backward_host = encode_backward_host(&grad, &x, &layout);
        let backward_gpu = to_host(Gpu::hash_grid_encode_backward(
            device_tensor(grad, [n, width]),
            device_tensor(x, [n, 3]),
            &layout,
        ));
        let scale = backward_host.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let backward = max_abs(&backward_host, &backward_gpu) / scale;
        println!(
            "{} levels x {features} features, {rows} rows, {n} points: forward max abs error \
             {forward:.2e}, table gradient max error / max {backward:.2e} (max {scale:.1})",
            layout.levels.len()
        );
        assert!(forward < 1e-5, "forward error {forward}");
        assert!(backward < 1e-4, "gradient error {backward}");
    }
}

#[test]
fn no_points_give_empty_features_and_a_zero_gradient() {
    if !common::have_vulkan_device() {
        return;
    }
    let config = HashGridConfig::new()
        .with_n_levels(2)
        .with_log2_hashmap_size(8)
        .with_max_resolution(32);
    let levels = config.layout();
    let rows = levels.iter().map(|l| l.size).sum();
    let layout = GridLayout {
        levels,
        features: 2,
        rows,
    };
    let table = device_tensor(vec![1.0; rows * 2], [rows, 2]);
    let x = || device_tensor(Vec::new(), [0, 3]);
    let out = Tensor::<Gpu, 2>::from_primitive(TensorPrimitive::Float(Gpu::hash_grid_encode(
        table,
        x(),
        &layout,
    )));
    assert_eq!(out.dims(), [0, 4]);
    let grad = to_host(Gpu::hash_grid_encode_backward(
        device_tensor(Vec::new(), [0, 4]),
        x(),
        &layout,
    ));
    assert_eq!(grad.len(), rows * 2);
    assert!(grad.iter().all(|&g| g == 0.0));
}
