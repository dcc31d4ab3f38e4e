//! A short generation on the shipped Tiny World prior runs end to end on the CPU and writes a
//! valid .glb; the same seed gives the same result.

use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, NdArray};
use rewardsds_engine::generate::{GenerateConfig, GenerateEvent, Generator, StopReason};

type B = Autodiff<NdArray>;

/// The CPU backend's random generator is process-wide: tests that start generations at the
/// same time would interleave its draws, so they take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn small(steps: usize) -> GenerateConfig {
    let mut config = GenerateConfig::preset("fast").unwrap();
    config.prompt = "a red cube and a blue sphere".into();
    config.steps = steps;
    config.render_size = 16;
    config.renderer.num_samples_per_ray = 16;
    config.snapshot_every = 5;
    config.mesh.resolution = 48;
    config.mesh.coarse_resolution = 24;
    config
}

#[test]
fn short_generation_writes_a_valid_glb() {
    let _turn = serial();
    let device = Default::default();
    let mut generator = Generator::<B>::load(small(10), &device).unwrap();
    let (mut steps, mut snapshots, mut rewards) = (0, 0, 0);
    let reason = generator
        .run(&AtomicBool::new(false), &mut |e| match e {
            GenerateEvent::Progress(p) => {
                steps += 1;
                assert!(p.loss.is_finite());
                // RewardSDS scores 4 samples for the first 70% of the steps.
                if !p.rewards.is_empty() {
                    assert_eq!(p.rewards.len(), 4);
                    rewards += 1;
                }
            }
            GenerateEvent::Snapshot { preview, .. } => {
                snapshots += 1;
                assert_eq!((preview.width, preview.height), (4 * 16, 16));
            }
        })
        .unwrap();
    assert_eq!(reason, StopReason::Finished);
    assert_eq!((steps, snapshots, rewards), (10, 2, 7));

    let dir = std::env::temp_dir().join(format!("rewardsds-generate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a-red-cube-and-a-blue-sphere.glb");
    let (export, mesh) = generator.export_glb(&path).unwrap();
    assert!(export.triangles > 0 && mesh.triangles == export.triangles);
    // Read back: one mesh with positions and normals, placed on the ground.
    let gltf = gltf::Gltf::open(&path).unwrap();
    let extras = gltf.document.as_json().asset.extras.as_ref().unwrap().get();
    assert!(extras.contains("a red cube and a blue sphere"), "{extras}");
    let mesh = gltf.meshes().next().unwrap();
    let primitive = mesh.primitives().next().unwrap();
    let bounds = primitive.bounding_box();
    assert!(
        bounds.min[1].abs() < 1e-4,
        "lowest point on the ground: {:?}",
        bounds.min
    );
    assert!(primitive.get(&gltf::Semantic::Normals).is_some());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn same_seed_same_result_and_cancel_stops() {
    let _turn = serial();
    let device = Default::default();
    let run = |steps| {
        let mut g = Generator::<B>::load(small(steps), &device).unwrap();
        g.run(&AtomicBool::new(false), &mut |_| {}).unwrap();
        g.turntable(2, 16).unwrap()
    };
    assert_eq!(run(3), run(3));
    let mut g = Generator::<B>::load(small(3), &device).unwrap();
    let reason = g.run(&AtomicBool::new(true), &mut |_| {}).unwrap();
    assert_eq!((reason, g.steps_done()), (StopReason::Cancelled, 0));
}
