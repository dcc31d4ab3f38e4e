//! The texture stage (issue 41 item 3): its renderer samples the texture as the exported
//! sampler does and its texel gradient matches finite differences; on Tiny World it follows
//! stage 1, changes only the texture, exports a textured asset, and a run checkpointed inside
//! it resumes bit for bit; its bad settings are named.

use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use glam::Vec2;
use rewardsds_engine::generate::{
    GenerateConfig, GenerateEvent, Generator, TexelLookup, TextureStageConfig,
};
use rewardsds_engine::mesh::{
    BakeConfig, Fragments, TriMesh, rasterize, sample_bilinear, unwrap_uvs,
};
use rewardsds_engine::scene::Camera;

type B = Autodiff<NdArray>;
type I = NdArray;

/// The CPU backend's random generator is process-wide: generations take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A unit cube with an atlas of a 64-texel texture.
fn unwrapped_cube() -> TriMesh {
    let positions = (0..8)
        .map(|i| [i & 1, (i >> 1) & 1, (i >> 2) & 1].map(|b| b as f32 - 0.5))
        .collect();
    let quads = [
        [0, 4, 6, 2],
        [1, 3, 7, 5],
        [0, 1, 5, 4],
        [2, 6, 7, 3],
        [0, 2, 3, 1],
        [4, 5, 7, 6],
    ];
    let cube = TriMesh {
        positions,
        indices: quads
            .iter()
            .flat_map(|q: &[u32; 4]| [q[0], q[1], q[2], q[0], q[2], q[3]])
            .collect(),
        ..Default::default()
    };
    let config = BakeConfig {
        texture_size: 64,
        ..Default::default()
    };
    unwrap_uvs(&cube, &config).unwrap().mesh
}

/// Deterministic texels in [0, 1].
fn texels(size: usize) -> Vec<f32> {
    (0..size * size * 3)
        .map(|i| (i as f32 * 0.618_034).fract() * 0.8 + 0.1)
        .collect()
}

#[test]
fn the_renderer_samples_as_the_exported_sampler_and_its_gradient_is_exact() {
    let mesh = unwrapped_cube();
    let size = 64usize;
    let camera = Camera::orbit(30.0, 25.0, 2.5, 40.0, 24, 24).unwrap();
    let lookup = TexelLookup::new(&mesh, size as u32, std::slice::from_ref(&camera));
    let values = texels(size);
    let device = Default::default();
    let tensor =
        Tensor::<I, 2>::from_data(TensorData::new(values.clone(), [size * size, 3]), &device);
    let background = [0.2, 0.3, 0.4];
    let image: Vec<f32> = lookup
        .render(tensor, background, [1, 24, 24])
        .into_data()
        .to_vec()
        .unwrap();

    // Each covered pixel is the bilinear sample at its UV, as `render_mesh` and engines read
    // the exported texture; the rest is the background.
    let texture = image::RgbImage::from_raw(
        size as u32,
        size as u32,
        values.iter().map(|v| (v * 255.0).round() as u8).collect(),
    )
    .unwrap();
    let frags = rasterize(&mesh, &camera);
    let (mut covered, mut worst) = (0, 0.0f32);
    for (p, (&id, b)) in frags.triangle.iter().zip(&frags.barycentric).enumerate() {
        let got = [0, 1, 2].map(|c| image[c * 24 * 24 + p]);
        if id == Fragments::BACKGROUND {
            assert_eq!(got, background);
            continue;
        }
        covered += 1;
        let t = &mesh.indices[3 * id as usize..][..3];
        let uv = (0..3).fold(Vec2::ZERO, |a, k| {
            a + Vec2::from(mesh.uvs[t[k] as usize]) * b[k]
        });
        let want = sample_bilinear(&texture, uv);
        for c in 0..3 {
            worst = worst.max((got[c] - want[c]).abs());
        }
    }
    assert!(covered > 100, "{covered} pixels covered");
    // The reference reads the texture rounded to 8 bits.
    assert!(
        worst < 0.5 / 255.0 + 1e-5,
        "render vs bilinear sampler: {worst}"
    );

    // d(sum(render * probe)) / d(texel) by autodiff and by central differences.
    let probe: Vec<f32> = (0..3 * 24 * 24).map(|i| (i as f32 * 0.377).sin()).collect();
    let loss_of = |values: &[f32]| -> f32 {
        let t =
            Tensor::<I, 2>::from_data(TensorData::new(values.to_vec(), [size * size, 3]), &device);
        let img: Vec<f32> = lookup
            .render(t, background, [1, 24, 24])
            .into_data()
            .to_vec()
            .unwrap();
        img.iter().zip(&probe).map(|(a, b)| a * b).sum()
    };
    let leaf =
        Tensor::<B, 2>::from_data(TensorData::new(values.clone(), [size * size, 3]), &device)
            .require_grad();
    let probe_t =
        Tensor::<B, 4>::from_data(TensorData::new(probe.clone(), [1, 3, 24, 24]), &device);
    let loss = (lookup.render(leaf.clone(), background, [1, 24, 24]) * probe_t).sum();
    let grads = loss.backward();
    let grad: Vec<f32> = leaf.grad(&grads).unwrap().into_data().to_vec().unwrap();
    let touched: Vec<usize> = (0..grad.len()).filter(|&i| grad[i] != 0.0).collect();
    assert!(
        touched.len() > 50,
        "{} texels get a gradient",
        touched.len()
    );
    let eps = 1e-2;
    let mut checked = 0;
    for &i in touched
        .iter()
        .step_by(touched.len() / 25)
        .chain([0, grad.len() - 1].iter())
    {
        let (mut up, mut down) = (values.clone(), values.clone());
        up[i] += eps;
        down[i] -= eps;
        let fd = (loss_of(&up) - loss_of(&down)) / (2.0 * eps);
        assert!(
            (fd - grad[i]).abs() < 1e-3 * (1.0 + fd.abs()),
            "texel value {i}: autodiff {} vs finite differences {fd}",
            grad[i]
        );
        checked += 1;
    }
    assert!(checked >= 25);
}

/// Stage 1 of `steps` steps at a check size, then a texture stage of `refine` steps.
fn two_stage(steps: usize, refine: usize) -> GenerateConfig {
    let mut config = GenerateConfig::preset("fast-sds").unwrap();
    config.prompt = "a red cube".into();
    config.steps = steps;
    config.shrink_scene_for_checks();
    config.mesh.bake.texture_size = 128;
    config.texture_stage = Some(TextureStageConfig {
        steps: refine,
        render_size: Some(24),
        ..Default::default()
    });
    config
}

fn texels_of(generator: &Generator<B>) -> Vec<u8> {
    generator.textured().unwrap().texture_image().into_raw()
}

#[test]
fn the_texture_stage_follows_stage_one_and_exports_a_textured_asset() {
    let _turn = serial();
    let device = Default::default();
    let mut generator = Generator::<B>::load(two_stage(3, 3), &device).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let p = generator.step().unwrap();
        assert_eq!(p.total, 6);
        seen.push(p.render_size);
    }
    assert!(generator.textured().is_none() && generator.nerf().is_some());
    let p = generator.step().unwrap();
    seen.push(p.render_size);
    assert!(p.loss.is_finite());
    let stage = generator.textured().expect("stage 2 began after step 3");
    let mesh = stage.mesh().clone();
    assert!(mesh.triangle_count() > 0 && mesh.uvs.len() == mesh.vertex_count());
    let after_first = texels_of(&generator);
    let mut snapshots = 0;
    generator
        .run(&AtomicBool::new(false), &mut |e| {
            if let GenerateEvent::Snapshot { .. } = e {
                snapshots += 1
            }
        })
        .unwrap();
    assert_eq!(generator.steps_done(), 6);
    assert_eq!(seen, [16, 16, 16, 24]);
    // Only the texture moves in stage 2.
    assert_eq!(generator.textured().unwrap().mesh(), &mesh);
    let last = texels_of(&generator);
    let changed = after_first
        .iter()
        .zip(&last)
        .filter(|(a, b)| a != b)
        .count();
    assert!(changed > 100, "{changed} texel values changed in stage 2");
    let views = generator.turntable(4, 32).unwrap();
    assert_eq!(views.len(), 4);

    let dir = std::env::temp_dir().join(format!("rewardsds-texture-stage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a-red-cube.glb");
    let (_, extracted) = generator.export_glb(&path).unwrap();
    assert_eq!(extracted.mesh, mesh);
    assert_eq!(extracted.texture.as_ref().unwrap().as_raw(), &last);
    let summary = rewardsds_engine::export::inspect_glb(&path).unwrap();
    println!("{summary:?}");
    match rewardsds_engine::export::khronos_validate(&path) {
        Ok(v) => assert_eq!(v.errors, 0, "{}", v.messages),
        Err(rewardsds_engine::export::ValidatorError::Missing(why)) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs the validator: {why}"
            );
        }
        Err(e) => panic!("{e}"),
    }
    let gltf = gltf::Gltf::open(&path).unwrap();
    assert_eq!(gltf.images().count(), 1, "the texture is embedded");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_run_checkpointed_in_the_texture_stage_resumes_bit_for_bit() {
    let _turn = serial();
    let device = Default::default();
    let config = two_stage(2, 3);
    let mut whole = Generator::<B>::load(config.clone(), &device).unwrap();
    whole.run(&AtomicBool::new(false), &mut |_| {}).unwrap();
    let want = texels_of(&whole);

    // Stopped at the stage boundary and inside stage 2.
    for stop in [2, 3] {
        let dir = std::env::temp_dir().join(format!(
            "rewardsds-texture-resume-{stop}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut first = Generator::<B>::load(config.clone(), &device).unwrap();
        for _ in 0..stop {
            first.step().unwrap();
        }
        first.save_checkpoint(&dir).unwrap();
        drop(first);
        let mut resumed = Generator::<B>::resume(&dir, &device).unwrap();
        assert_eq!(resumed.steps_done(), stop);
        resumed.run(&AtomicBool::new(false), &mut |_| {}).unwrap();
        assert_eq!(texels_of(&resumed), want, "resumed after step {stop}");
        assert_eq!(
            resumed.textured().unwrap().mesh(),
            whole.textured().unwrap().mesh()
        );

        if stop == 3 {
            // A stage-2 checkpoint without its mesh is refused, naming the file.
            let folder = rewardsds_engine::generate::latest_checkpoint(&dir).unwrap();
            std::fs::remove_file(folder.join("texture_mesh.safetensors")).unwrap();
            let err = Generator::<B>::resume(&dir, &device)
                .unwrap_err()
                .to_string();
            assert!(err.contains("texture_mesh.safetensors"), "{err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn bad_texture_stage_settings_are_named() {
    let check = |edit: &dyn Fn(&mut GenerateConfig), field: &str| {
        let mut config = two_stage(2, 2);
        edit(&mut config);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{field}: {err}");
    };
    check(
        &|c| c.texture_stage.as_mut().unwrap().steps = 0,
        "texture_stage.steps",
    );
    check(
        &|c| c.texture_stage.as_mut().unwrap().lr = f64::NAN,
        "texture_stage.lr",
    );
    check(
        &|c| c.texture_stage.as_mut().unwrap().render_size = Some(100_000),
        "texture_stage.render_size",
    );
    check(
        &|c| {
            c.texture_stage.as_mut().unwrap().t_max =
                rewardsds_engine::guidance::AnnealedFraction::constant(1.5)
        },
        "texture_stage.t_max",
    );
    check(&|c| c.mesh.bake.texture_size = 0, "bake.texture_size");
    check(&|c| c.mesh.bake.texture_size = 1000, "bake.texture_size");
    // A TOML key the stage does not know.
    let mut config = two_stage(2, 2);
    config.prompt = "a red cube".into();
    let text = config
        .to_toml()
        .replace("[texture_stage]", "[texture_stage]\nstepz = 3");
    let err = GenerateConfig::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("stepz"), "{err}");
}
