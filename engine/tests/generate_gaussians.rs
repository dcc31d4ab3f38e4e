//! Generation with 3D Gaussians as the scene: RewardSDS on the shipped Tiny World prior
//! drives the splat renderer's gradients, densification runs inside the loop, and the
//! Gaussians' surface exports as a valid .glb; a run checkpointed before a densification and
//! resumed equals an uninterrupted one; damaged checkpoints are refused naming the file.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use rewardsds_engine::generate::{
    CheckpointError, GenerateConfig, GenerateError, GenerateEvent, Generator, ResolutionMilestone,
    SceneKind, StopReason,
};

mod pipeline_folders;
use pipeline_folders::assert_khronos_valid;

type B = Autodiff<NdArray>;

fn config(steps: usize) -> GenerateConfig {
    let mut config = GenerateConfig::preset("fast").unwrap();
    config.prompt = "a red cube".into();
    config.scene = SceneKind::Gaussians;
    config.steps = steps;
    config.render_size = 32;
    config.snapshot_every = 10;
    config.gaussians.init.num_points = 1000;
    if let Some(d) = config.gaussians.densify.as_mut() {
        d.start = 10;
        d.interval = 10;
    }
    config.mesh.resolution = 48;
    config.mesh.coarse_resolution = 24;
    config
}

#[test]
fn gaussian_generation_densifies_and_exports_a_valid_glb() {
    let device = Default::default();
    let mut generator = Generator::<B>::load(config(30), &device).unwrap();
    assert!(generator.nerf().is_none());
    let start = generator.gaussians().unwrap().to_cloud();
    let (mut losses, mut snapshots) = (Vec::new(), 0);
    let reason = generator
        .run(&AtomicBool::new(false), &mut |e| match e {
            GenerateEvent::Progress(p) => losses.push(p.loss),
            GenerateEvent::Snapshot { preview, .. } => {
                snapshots += 1;
                assert_eq!((preview.width, preview.height), (4 * 32, 32));
            }
            GenerateEvent::Checkpoint { .. } => panic!("no checkpoint folder was given"),
        })
        .unwrap();
    assert_eq!(reason, StopReason::Finished);
    assert_eq!((losses.len(), snapshots), (30, 3));
    assert!(losses.iter().all(|l| l.is_finite()));

    // The guidance moved the Gaussians (positions and colours), and they are all finite.
    let end = generator.gaussians().unwrap();
    end.check_finite().unwrap();
    let end = end.to_cloud();
    println!("{} -> {} Gaussians", start.len(), end.len());
    let moved = start
        .colors
        .iter()
        .zip(&end.colors)
        .map(|(a, b)| (0..3).map(|c| (a[c] - b[c]).abs()).fold(0.0f32, f32::max))
        .fold(0.0f32, f32::max);
    assert!(
        moved > 1e-3 || start.len() != end.len(),
        "the Gaussians did not change"
    );

    let dir = std::env::temp_dir().join(format!("rewardsds-gs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a-red-cube.glb");
    let (export, _) = generator.export_glb(&path).unwrap();
    assert!(export.triangles > 0);
    let gltf = gltf::Gltf::open(&path).unwrap();
    let extras = gltf.document.as_json().asset.extras.as_ref().unwrap().get();
    assert!(extras.contains("\"scene\":\"gaussians\""), "{extras}");
    assert_khronos_valid(&path);
    std::fs::remove_dir_all(&dir).ok();
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rewardsds-gs-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

/// Every parameter tensor of the Gaussians, as bits (exact, -0.0 included).
fn parameters(generator: &Generator<B>) -> Vec<Vec<u32>> {
    let g = generator.gaussians().expect("a Gaussian scene");
    let bits = |t: Tensor<NdArray, 2>| -> Vec<u32> {
        let values = t.into_data().to_vec::<f32>().unwrap();
        values.iter().map(|v| v.to_bits()).collect()
    };
    let mut tensors = vec![
        bits(g.means.clone()),
        bits(g.log_scales.clone()),
        bits(g.rotations.clone()),
        bits(g.opacity_logits.clone()),
        bits(g.sh_dc.clone()),
    ];
    if let Some(rest) = &g.sh_rest {
        tensors.push(bits(rest.clone().flatten(1, 2)));
    }
    tensors
}

#[test]
fn resuming_across_a_densification_repeats_the_uninterrupted_run_bit_for_bit() {
    let device = Default::default();
    // Densification at step 4 (from the gradients of steps 1-4) lies between the checkpoint
    // and the end: it needs the saved statistics, the steps after it Adam's moments remapped
    // to the new Gaussians. Plain SDS keeps it quick (the guidance holds no state to save).
    let (total, split) = (5, 3);
    let mut config = config(total);
    config.guidance.reward = None;
    config.snapshot_every = 0;
    config.render_size = 16;
    // The last step renders larger: a resumed run takes the size from the step alone.
    config.resolution_milestones = vec![ResolutionMilestone {
        step: 4,
        size: 24,
        views: None,
    }];
    config.gaussians.init.num_points = 300;
    config.gaussians.init.sh_degree = 1;
    let densify = config.gaussians.densify.as_mut().unwrap();
    (densify.start, densify.interval) = (4, 4);
    // About the median Gaussian's gradient: which ones densify depends on the statistics.
    densify.grad_threshold = 0.5;

    let mut whole = Generator::<B>::load(config.clone(), &device).unwrap();
    whole.run(&AtomicBool::new(false), &mut |_| {}).unwrap();
    let n = whole.gaussians().unwrap().len();
    assert_ne!(n, 300, "the densification changed the count");

    let dir = temp_dir("resume");
    let mut first = Generator::<B>::load(config.clone(), &device).unwrap();
    for _ in 0..split {
        first.step().unwrap();
    }
    let saved = first.save_checkpoint(&dir).unwrap();
    assert_eq!(saved, dir.join("step-0000003"));
    assert!(saved.join("gaussians.safetensors").is_file());
    drop(first);

    let mut resumed = Generator::<B>::resume(&dir, &device).unwrap();
    assert_eq!(resumed.steps_done(), split);
    assert_eq!(resumed.config(), &config, "the config comes back exactly");
    resumed.run(&AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(resumed.gaussians().unwrap().len(), n);
    assert!(
        parameters(&resumed) == parameters(&whole),
        "the parameters differ"
    );
    assert_eq!(
        resumed.turntable(2, 16).unwrap(),
        whole.turntable(2, 16).unwrap()
    );
    // The run checkpointed its last step into the folder it resumed from.
    assert_eq!(resumed.last_checkpoint(), Some(&*dir.join("step-0000005")));
    std::fs::remove_dir_all(&dir).ok();
}

/// The `Invalid` error resuming `dir` gives; it must name `file`.
fn refused(dir: &Path, file: &str) -> String {
    let err = Generator::<B>::resume(dir, &Default::default()).unwrap_err();
    match &err {
        GenerateError::Checkpoint(CheckpointError::Invalid { path, .. })
            if path.file_name().is_some_and(|f| f == file) => {}
        _ => panic!("expected {file} to be named invalid, got {err}"),
    }
    err.to_string()
}

#[test]
fn damaged_gaussian_checkpoints_are_refused_naming_the_file() {
    let device = Default::default();
    let dir = temp_dir("damaged");
    let mut generator = Generator::<B>::load(config(2), &device).unwrap();
    let folder = generator.save_checkpoint(&dir).unwrap();
    let file = folder.join("gaussians.safetensors");
    let good = std::fs::read(&file).unwrap();

    // Truncated, as by a crash mid-copy.
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    refused(&dir, "gaussians.safetensors");

    // One Gaussian fewer in `means` than in the other tensors.
    let tensors = safetensors::SafeTensors::deserialize(&good).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&good).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            if name != "means" {
                return (name, view);
            }
            let mut shape = view.shape().to_vec();
            shape[0] -= 1;
            let len = shape.iter().product::<usize>() * 4;
            let short =
                safetensors::tensor::TensorView::new(view.dtype(), shape, &view.data()[..len]);
            (name, short.unwrap())
        })
        .collect();
    let bytes = safetensors::serialize(views, header.metadata().clone()).unwrap();
    std::fs::write(&file, bytes).unwrap();
    let message = refused(&dir, "gaussians.safetensors");
    assert!(message.contains("has shape"), "{message}");

    // The config says NeRF, the files are Gaussian.
    std::fs::write(&file, &good).unwrap();
    let config = folder.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("scene = \"gaussians\"", "scene = \"nerf\""),
    )
    .unwrap();
    let message = refused(&dir, "gaussians.safetensors");
    assert!(message.contains("nerf"), "{message}");

    // Restored, it resumes.
    std::fs::write(&config, text).unwrap();
    assert_eq!(
        Generator::<B>::resume(&dir, &device).unwrap().steps_done(),
        0
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_gaussian_settings_name_their_field() {
    let mut bad = config(5);
    bad.gaussians.init.sh_degree = 7;
    assert_eq!(bad.validate().unwrap_err().field, "gaussians.init");
    let mut bad = config(5);
    bad.gaussians.background = [2.0, 0.0, 0.0];
    assert_eq!(bad.validate().unwrap_err().field, "gaussians.background");
    let text = config(5)
        .to_toml()
        .replace("scene = \"gaussians\"", "scene = \"voxels\"");
    let err = GenerateConfig::from_toml(&text).unwrap_err();
    assert!(err.reason.contains("voxels"), "{err}");
}
