//! Finite-difference checks of the NeRF volume renderer's gradients with respect to hash-table
//! entries, MLP weights and the background network, in f32 on the CPU (the precision we train
//! in). The error left is f32 round-off in the finite differences (seen: 2e-4 to 7e-3).

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, ElementConversion, Tensor, TensorData};
use rewardsds_engine::backend::EngineAutodiffBackend;
use rewardsds_engine::render::{VolumeRenderer, VolumeRendererConfig};
use rewardsds_engine::scene::camera::{Camera, Rays};
use rewardsds_engine::scene::nerf::{
    BackgroundConfig, BackgroundKind, HashGridConfig, Nerf, NerfConfig,
};

struct Setup<B: Backend> {
    rays: Rays,
    renderer: VolumeRenderer,
    weights: [Tensor<B, 2>; 3],
    /// Outputs at the unperturbed parameters: subtracting them keeps the loss near zero, so
    /// f32 round-off in the finite differences is relative to the change, not to the outputs.
    reference: Option<[Tensor<B, 2>; 3]>,
}

impl<B: EngineAutodiffBackend> Setup<B> {
    fn new() -> Self {
        let device = Default::default();
        let camera = Camera::orbit(30.0, 20.0, 2.5, 50.0, 6, 6).unwrap();
        let n = camera.num_pixels();
        let w = |c| Tensor::<B, 2>::random([n, c], Distribution::Uniform(-1.0, 1.0), &device);
        Self {
            rays: camera.rays(),
            renderer: VolumeRenderer::new(VolumeRendererConfig::new().with_num_samples_per_ray(24)),
            weights: [w(3), w(1), w(1)],
            reference: None,
        }
    }

    fn outputs(&self, nerf: &Nerf<B>) -> [Tensor<B, 2>; 3] {
        let out = self
            .renderer
            .render(nerf, &self.rays, false, &Default::default());
        [out.rgb, out.opacity, out.depth]
    }

    /// A scalar touching every output: random projections of rgb, opacity and depth.
    fn loss(&self, nerf: &Nerf<B>) -> Tensor<B, 1> {
        let mut out = self.outputs(nerf);
        if let Some(reference) = &self.reference {
            for (o, r) in out.iter_mut().zip(reference) {
                *o = o.clone() - r.clone();
            }
        }
        let [wr, wo, wd] = self.weights.clone();
        let [rgb, opacity, depth] = out;
        (rgb * wr).sum() + (opacity * wo).sum() + (depth * wd).sum()
    }
}

fn nerf<B: Backend>() -> Nerf<B> {
    let config = NerfConfig::new()
        .with_encoding(
            HashGridConfig::new()
                .with_n_levels(4)
                .with_log2_hashmap_size(10)
                .with_base_resolution(4)
                .with_max_resolution(32)
                // Large entries so the encoding visibly shapes the field.
                .with_init_scale(0.5),
        )
        .with_hidden(16)
        .with_density_blob_scale(3.0)
        .with_background(
            BackgroundConfig::new()
                .with_kind(BackgroundKind::Mlp)
                .with_hidden(8),
        );
    config.init::<B>(&Default::default())
}

fn to_vec<B: Backend>(t: Tensor<B, 2>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec().unwrap()
}

/// Adds `delta` at flat index `i` of a parameter.
fn nudge<B: Backend>(p: Param<Tensor<B, 2>>, i: usize, delta: f64) -> Param<Tensor<B, 2>> {
    p.map(|t| {
        let dims = t.dims();
        let mut d = vec![0.0f64; dims[0] * dims[1]];
        d[i] = delta;
        t.clone() + Tensor::from_data(TensorData::new(d, dims), &t.device())
    })
}

type Getter<B> = fn(&mut Nerf<B>) -> &mut Param<Tensor<B, 2>>;

/// Compares autodiff and central differences on the `k` entries of largest gradient of the
/// parameter that `get` selects. Returns the relative error of the gradient vector over those
/// entries, `|g_autodiff - g_fd| / |g_fd|`; single entries must stay within 3e-2 (one ReLU kink
/// crossed by the finite difference costs about that).
fn check<B: EngineAutodiffBackend>(name: &str, k: usize, eps: f64, get: Getter<B>) -> f64 {
    B::seed(&Default::default(), 7);
    let mut setup = Setup::<B>::new();
    let mut model = nerf::<B>();
    let grads = setup.loss(&model).backward();
    setup.reference = Some(setup.outputs(&model).map(|t| t.detach()));
    let analytic = to_vec(
        get(&mut model)
            .grad(&grads)
            .expect("parameter has a gradient"),
    );
    let mut order: Vec<usize> = (0..analytic.len()).collect();
    order.sort_by(|&a, &b| analytic[b].abs().total_cmp(&analytic[a].abs()));
    let mut worst = 0.0f64;
    let (mut diff2, mut norm2) = (0.0f64, 0.0f64);
    for &i in order.iter().take(k) {
        let eval = |delta: f64| {
            // The same parameters, detached from the first graph, with one entry moved.
            let mut m = Nerf::<B>::from_inner(model.valid());
            let p = get(&mut m).clone();
            *get(&mut m) = nudge(p, i, delta);
            setup.loss(&m).into_scalar().elem::<f64>()
        };
        let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
        let rel = (numeric - analytic[i]).abs() / analytic[i].abs().max(numeric.abs()).max(1e-9);
        println!(
            "  {name}[{i}]: autodiff {:+.5e} finite-diff {numeric:+.5e} rel {rel:.1e}",
            analytic[i]
        );
        worst = worst.max(rel);
        diff2 += (numeric - analytic[i]).powi(2);
        norm2 += numeric.powi(2);
    }
    let vector = (diff2 / norm2).sqrt();
    assert!(analytic[order[0]].abs() > 1e-4, "{name}: gradients vanish");
    println!(
        "{name} ({}): relative error over the top {k} entries {vector:.2e} (worst single {worst:.2e})",
        std::any::type_name::<B::FloatElem>()
    );
    assert!(worst < 3e-2, "{name}: single-entry relative error {worst}");
    vector
}

fn all_groups<B: EngineAutodiffBackend>(eps_table: f64, eps_mlp: f64) -> f64 {
    let checks: [(&str, f64, Getter<B>); 4] = [
        ("encoding.embeddings", eps_table, |m| {
            &mut m.encoding.embeddings
        }),
        ("density_network.layers[0].weight", eps_mlp, |m| {
            &mut m.density_network.layers[0].weight
        }),
        ("feature_network.layers[1].weight", eps_mlp, |m| {
            &mut m.feature_network.layers[1].weight
        }),
        ("background.mlp.fc2.weight", eps_mlp, |m| {
            &mut m.background.mlp.as_mut().unwrap().fc2.weight
        }),
    ];
    checks
        .into_iter()
        .map(|(name, eps, get)| check::<B>(name, 8, eps, get))
        .fold(0.0, f64::max)
}

#[test]
fn renderer_gradients_match_finite_differences_f32() {
    let worst = all_groups::<Autodiff<NdArray<f32>>>(1e-3, 1e-2);
    assert!(worst < 1e-2, "f32 relative error {worst}");
}
