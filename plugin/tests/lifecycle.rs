//! The plugin in a headless app (no window, no renderer) on the shipped Tiny World prior:
//! request -> progress -> live preview -> finished message -> a valid .glb on disk, loaded
//! back as a scene under the entity; requests queue, with their positions; cancelling stops
//! the job and writes nothing, and the next job waits for its thread; a bad model path fails
//! with a typed error and the app keeps running; a request restarts only when its value
//! changes; jobs share the loaded models; observers see the same moments as messages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bevy::asset::AssetPlugin;
use bevy::gltf::{GltfMaterial, GltfPlugin};
use bevy::mesh::MeshPlugin;
use bevy::prelude::*;
use bevy::world_serialization::{WorldAssetRoot, WorldSerializationPlugin};
use bevy_rewardsds::engine::export::{ValidatorError, khronos_validate};
use bevy_rewardsds::engine::generate::{GenerateConfig, TextureStageConfig};
use bevy_rewardsds::prelude::*;
use bevy_rewardsds::{
    GeneratedScene, GenerationJobs, GenerationPreview, SplatDepthOrder, SplatPreviewMaterial,
};

/// Each test's own asset root.
fn asset_root(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rewardsds-plugin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A few SDS steps at a small size: the whole lifecycle in seconds.
fn small_config(steps: usize) -> GenerateConfig {
    small_preset("fast-sds", steps)
}

/// `preset` with `steps` steps at a small size.
fn small_preset(preset: &str, steps: usize) -> GenerateConfig {
    let mut config = GenerateConfig::preset(preset).unwrap();
    config.steps = steps;
    config.render_size = 16;
    config.renderer.num_samples_per_ray = 16;
    config.mesh.resolution = 40;
    config.mesh.coarse_resolution = 20;
    config
}

/// Everything a game would see, collected each frame.
#[derive(Resource, Default)]
struct Seen {
    started: Vec<Entity>,
    finished: Vec<GenerationFinished>,
    failed: Vec<GenerationFailed>,
    cancelled: Vec<Entity>,
}

fn collect(
    mut seen: ResMut<Seen>,
    mut started: MessageReader<GenerationStarted>,
    mut finished: MessageReader<GenerationFinished>,
    mut failed: MessageReader<GenerationFailed>,
    mut cancelled: MessageReader<GenerationCancelled>,
) {
    seen.started.extend(started.read().map(|m| m.entity));
    seen.finished.extend(finished.read().cloned());
    seen.failed.extend(failed.read().cloned());
    seen.cancelled.extend(cancelled.read().map(|m| m.entity));
}

fn headless_app(root: &Path, settings: RewardSdsSettings) -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: root.to_string_lossy().into_owned(),
            ..default()
        },
        WorldSerializationPlugin,
        MeshPlugin,
        GltfPlugin::default(),
        RewardSdsPlugin::new(settings),
    ))
    // The previews' materials and textures without the renderer.
    .init_asset::<StandardMaterial>()
    .init_asset::<Image>()
    .init_asset::<SplatPreviewMaterial>()
    .init_resource::<Seen>()
    .add_systems(Update, collect.after(RewardSdsSystems));
    app.finish();
    app.cleanup();
    app
}

/// Updates the app until `done` holds after an update (a few ms between frames, as a game would pace them).
fn run_until(app: &mut App, limit: Duration, mut done: impl FnMut(&mut App) -> bool) {
    let start = Instant::now();
    loop {
        app.update();
        if done(app) {
            return;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn progress(app: &mut App, entity: Entity) -> GenerationProgress {
    app.world()
        .get::<GenerationProgress>(entity)
        .cloned()
        .unwrap()
}

#[test]
fn request_runs_to_a_loaded_scene_and_queues_the_next() {
    let root = asset_root("lifecycle");
    let settings = RewardSdsSettings {
        preview_every: 2,
        preview_resolution: 16,
        ..default()
    };
    let mut app = headless_app(&root, settings);
    let config = small_config(6);
    let first = app
        .world_mut()
        .spawn((
            GenerateAsset::new("a red cube and a blue sphere").with_config(config.clone()),
            Transform::from_xyz(2.0, 0.0, 0.0),
        ))
        .id();
    let second = app
        .world_mut()
        .spawn(
            GenerateAsset::new("a green cone")
                .with_config(config)
                .with_scene(SceneKind::Gaussians)
                .with_seed(7),
        )
        .id();

    // The first runs; the second waits its turn (one at a time by default).
    let mut steps_seen = Vec::new();
    let mut preview_steps = Vec::new();
    run_until(&mut app, Duration::from_secs(600), |app| {
        let p = progress(app, first);
        if steps_seen.last() != Some(&p.step) {
            steps_seen.push(p.step);
        }
        if p.state != GenerationState::Finished {
            assert_eq!(
                progress(app, second).state,
                GenerationState::Queued { position: 0 }
            );
        }
        let mut previews = app
            .world_mut()
            .query::<(&GenerationPreview, &ChildOf, &Mesh3d)>();
        for (preview, parent, mesh) in previews.iter(app.world()) {
            if parent.parent() == first && preview_steps.last() != Some(&preview.step) {
                let meshes = app.world().resource::<Assets<Mesh>>();
                let vertices = meshes.get(&mesh.0).map(|m| m.count_vertices()).unwrap_or(0);
                assert!(
                    vertices > 0,
                    "an empty preview mesh at step {}",
                    preview.step
                );
                preview_steps.push(preview.step);
            }
        }
        !app.world().resource::<Seen>().finished.is_empty()
    });
    assert!(steps_seen.len() >= 3, "progress advanced: {steps_seen:?}");
    assert!(steps_seen.windows(2).all(|w| w[0] < w[1]), "{steps_seen:?}");
    assert!(!preview_steps.is_empty(), "a live preview was shown");
    assert_eq!(app.world().resource::<Seen>().started.first(), Some(&first));

    let finished = app.world().resource::<Seen>().finished[0].clone();
    assert_eq!(finished.entity, first);
    assert_eq!(
        finished.asset_path,
        "generated/a-red-cube-and-a-blue-sphere.glb"
    );
    assert_eq!(finished.file, root.join(&finished.asset_path));
    assert!(finished.file.is_file());
    assert!(
        finished.file.with_extension("json").is_file(),
        "the sidecar JSON"
    );
    assert!(finished.report.triangles > 0);
    match khronos_validate(&finished.file) {
        Ok(v) => assert_eq!(v.errors, 0, "{}", v.messages),
        Err(ValidatorError::Missing(why)) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs the validator: {why}"
            );
            eprintln!("note: skipping the Khronos validator: {why}");
        }
        Err(e) => panic!("{e}"),
    }
    assert_eq!(progress(&mut app, first).state, GenerationState::Finished);
    assert!(app.world().get::<GeneratedAsset>(first).is_some());

    // The preview gives way to the glTF scene, which the AssetServer loads and spawns: a
    // mesh entity appears below the requesting entity.
    run_until(&mut app, Duration::from_secs(60), |app| {
        let world = app.world_mut();
        let mut meshes = world.query_filtered::<Entity, With<Mesh3d>>();
        let mesh_entities: Vec<Entity> = meshes.iter(world).collect();
        mesh_entities.into_iter().any(|e| {
            let mut ancestor = e;
            while let Some(parent) = world.get::<ChildOf>(ancestor) {
                ancestor = parent.parent();
                if world.get::<GeneratedScene>(ancestor).is_some() {
                    return world.get::<ChildOf>(ancestor).map(|p| p.parent()) == Some(first);
                }
            }
            false
        })
    });
    let mut previews = app.world_mut().query::<&GenerationPreview>();
    assert_eq!(previews.iter(app.world()).count(), 0, "the preview is gone");
    let mut roots = app.world_mut().query::<(&WorldAssetRoot, &ChildOf)>();
    assert_eq!(
        roots
            .iter(app.world())
            .filter(|(_, p)| p.parent() == first)
            .count(),
        1
    );

    // Then the queued request runs: Gaussians, previewed as splats (four vertices each).
    let mut splat_previews = 0;
    run_until(&mut app, Duration::from_secs(600), |app| {
        let mut previews = app.world_mut().query_filtered::<(&ChildOf, &Mesh3d), (
            With<GenerationPreview>,
            With<SplatDepthOrder>,
            With<MeshMaterial3d<SplatPreviewMaterial>>,
        )>();
        for (parent, mesh) in previews.iter(app.world()) {
            assert_eq!(parent.parent(), second);
            let meshes = app.world().resource::<Assets<Mesh>>();
            let vertices = meshes.get(&mesh.0).map(|m| m.count_vertices()).unwrap();
            assert!(vertices > 0 && vertices % 4 == 0, "{vertices} vertices");
            splat_previews += 1;
        }
        app.world().resource::<Seen>().finished.len() == 2
    });
    assert!(splat_previews > 0, "the Gaussians were previewed as splats");
    assert_eq!(app.world().resource::<Seen>().finished[1].entity, second);
    assert!(root.join("generated/a-green-cone.glb").is_file());
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn despawning_cancels_and_writes_nothing() {
    let root = asset_root("cancel");
    let mut app = headless_app(&root, RewardSdsSettings::default());
    let entity = app
        .world_mut()
        .spawn(GenerateAsset::new("a blue sphere").with_config(small_config(200)))
        .id();
    run_until(&mut app, Duration::from_secs(300), |app| {
        progress(app, entity).step >= 1
    });
    app.world_mut().entity_mut(entity).despawn();
    app.update();
    assert_eq!(app.world().resource::<Seen>().cancelled, vec![entity]);
    // The job stops after its current step; give it time to, then check it wrote nothing.
    for _ in 0..100 {
        app.update();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(app.world().resource::<Seen>().finished.is_empty());
    assert!(!root.join("generated/a-blue-sphere.glb").exists());
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn bad_model_path_fails_with_a_reason_and_the_app_goes_on() {
    let root = asset_root("failure");
    let mut app = headless_app(&root, RewardSdsSettings::default());
    let missing = root.join("no-such-model");
    let entity = app
        .world_mut()
        .spawn(
            GenerateAsset::new("a red cube")
                .with_config(small_config(4))
                .with_prior(missing.to_string_lossy()),
        )
        .id();
    run_until(&mut app, Duration::from_secs(120), |app| {
        !app.world().resource::<Seen>().failed.is_empty()
    });
    let failed = app.world().resource::<Seen>().failed[0].clone();
    assert_eq!(failed.entity, entity);
    // Typed: the model named by `prior` is at fault; the message names the folder.
    assert!(
        matches!(&failed.error, GenerationError::Model { field: Some(f), .. } if f == "prior"),
        "{:?}",
        failed.error
    );
    assert!(
        failed.error.to_string().contains("no-such-model"),
        "{}",
        failed.error
    );
    assert_eq!(
        progress(&mut app, entity).state,
        GenerationState::Failed(failed.error.clone())
    );
    // A config error is reported the same way, and the app keeps running.
    let bad = app
        .world_mut()
        .spawn(GenerateAsset::new("a red cube").with_steps(0))
        .id();
    for _ in 0..5 {
        app.update();
    }
    let failed = app.world().resource::<Seen>().failed.clone();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[1].entity, bad);
    assert!(
        matches!(&failed[1].error, GenerationError::Config { field, .. } if field == "steps"),
        "{:?}",
        failed[1].error
    );
    assert!(
        failed[1].error.to_string().contains("steps"),
        "{}",
        failed[1].error
    );
    assert!(!root.join("generated").join("a-red-cube.glb").exists());
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_finished_prop_is_edited_into_a_new_one() {
    let root = asset_root("edit");
    let mut app = headless_app(&root, RewardSdsSettings::default());
    let source = app
        .world_mut()
        .spawn(
            GenerateAsset::new("a red cube")
                .with_config(small_config(2))
                .named("crate"),
        )
        .id();
    run_until(&mut app, Duration::from_secs(300), |app| {
        !app.world().resource::<Seen>().finished.is_empty()
    });
    assert_eq!(app.world().resource::<Seen>().finished[0].entity, source);
    assert!(root.join("generated/crate.checkpoint/latest").is_file());

    // The edit names the earlier result; it runs with that result's config.
    let edit = app
        .world_mut()
        .spawn(GenerateAsset::edit("crate", "a blue cube").with_steps(2))
        .id();
    run_until(&mut app, Duration::from_secs(300), |app| {
        let seen = app.world().resource::<Seen>();
        seen.finished.len() == 2 || !seen.failed.is_empty()
    });
    let seen = app.world().resource::<Seen>();
    assert!(seen.failed.is_empty(), "{:?}", seen.failed);
    assert_eq!(seen.finished[1].entity, edit);
    assert!(root.join("generated/a-blue-cube.glb").is_file());
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("generated/a-blue-cube.json")).unwrap())
            .unwrap();
    assert_eq!(sidecar["config"]["edit"]["source_prompt"], "a red cube");
    assert_eq!(
        sidecar["config"]["render_size"], 16,
        "the source's own config"
    );

    // An edit of a result that does not exist fails naming it; the app goes on.
    let missing = app
        .world_mut()
        .spawn(GenerateAsset::edit("barrel", "a mossy barrel"))
        .id();
    for _ in 0..5 {
        app.update();
    }
    let failed = app.world().resource::<Seen>().failed.clone();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].entity, missing);
    assert!(
        matches!(&failed[0].error, GenerationError::Edit { folder, .. } if folder.ends_with("barrel.checkpoint")),
        "{:?}",
        failed[0].error
    );
    assert!(
        failed[0].error.to_string().contains("barrel.checkpoint"),
        "{}",
        failed[0].error
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn the_texture_stage_previews_and_loads_a_textured_prop() {
    let root = asset_root("texture");
    let settings = RewardSdsSettings {
        preview_every: 1,
        preview_resolution: 16,
        ..default()
    };
    let mut app = headless_app(&root, settings);
    let mut config = small_config(2);
    config.mesh.bake.texture_size = 64;
    config.texture_stage = Some(TextureStageConfig {
        steps: 2,
        render_size: Some(16),
        ..Default::default()
    });
    let entity = app
        .world_mut()
        .spawn(GenerateAsset::new("a red cube").with_config(config))
        .id();
    let (mut textured_previews, mut stage_seen) = (0, false);
    run_until(&mut app, Duration::from_secs(300), |app| {
        stage_seen |= progress(app, entity).texture_stage;
        let mut previews = app.world_mut().query::<(
            &GenerationPreview,
            &Mesh3d,
            &MeshMaterial3d<StandardMaterial>,
        )>();
        for (_, mesh, material) in previews.iter(app.world()) {
            let meshes = app.world().resource::<Assets<Mesh>>();
            let materials = app.world().resource::<Assets<StandardMaterial>>();
            let has_uvs = meshes
                .get(&mesh.0)
                .is_some_and(|m| m.attribute(Mesh::ATTRIBUTE_UV_0).is_some());
            let texture = materials
                .get(&material.0)
                .and_then(|m| m.base_color_texture.clone());
            if has_uvs && let Some(texture) = texture {
                let images = app.world().resource::<Assets<Image>>();
                let image = images.get(&texture).expect("the preview's texture");
                assert_eq!(image.width(), 64);
                textured_previews += 1;
            }
        }
        let seen = app.world().resource::<Seen>();
        assert!(seen.failed.is_empty(), "{:?}", seen.failed);
        !seen.finished.is_empty()
    });
    assert!(stage_seen, "progress said the texture stage ran");
    assert!(
        textured_previews > 0,
        "the texture stage was previewed textured"
    );

    // The result loads with its material's baked texture (glTF materials become
    // StandardMaterials in bevy_pbr's renderer, which a headless app has not).
    run_until(&mut app, Duration::from_secs(60), |app| {
        let world = app.world_mut();
        let previews = world.query::<&GenerationPreview>().iter(world).count();
        let materials = world.resource::<Assets<GltfMaterial>>();
        let images = world.resource::<Assets<Image>>();
        previews == 0
            && world.get::<GeneratedAsset>(entity).is_some()
            && materials.iter().any(|(_, m)| {
                m.base_color_texture
                    .as_ref()
                    .is_some_and(|t| images.get(t).is_some_and(|i| i.width() == 64))
            })
    });
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn touching_a_request_without_changing_it_does_not_restart_it() {
    let root = asset_root("restart");
    let mut app = headless_app(&root, RewardSdsSettings::default());
    let entity = app
        .world_mut()
        .spawn(GenerateAsset::new("a blue sphere").with_config(small_config(200)))
        .id();
    run_until(&mut app, Duration::from_secs(120), |app| {
        progress(app, entity).step >= 1
    });
    // A `&mut` access that writes the same value marks the component changed.
    let before = progress(&mut app, entity).step;
    let mut request = app.world_mut().get_mut::<GenerateAsset>(entity).unwrap();
    request.prompt = "a blue sphere".into();
    assert!(request.is_changed());
    run_until(&mut app, Duration::from_secs(120), |app| {
        progress(app, entity).step >= before + 2
    });
    assert_eq!(app.world().resource::<Seen>().started, vec![entity]);
    assert!(app.world().resource::<Seen>().cancelled.is_empty());

    // A new value restarts it: progress starts over and the job starts again.
    app.world_mut()
        .get_mut::<GenerateAsset>(entity)
        .unwrap()
        .seed = Some(9);
    app.update();
    assert_eq!(progress(&mut app, entity).step, 0);
    run_until(&mut app, Duration::from_secs(120), |app| {
        app.world().resource::<Seen>().started.len() == 2
    });
    app.world_mut().entity_mut(entity).despawn();
    app.update();
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn jobs_share_the_loaded_models() {
    let root = asset_root("shared");
    let mut app = headless_app(&root, RewardSdsSettings::default());
    // RewardSDS: a prior and a reward model; one step (the reward model is loaded all the same).
    let config = small_preset("fast", 1);
    for (prompt, seed) in [("a red cube", 1), ("a blue sphere", 2)] {
        app.world_mut().spawn(
            GenerateAsset::new(prompt)
                .with_config(config.clone())
                .with_seed(seed),
        );
    }
    run_until(&mut app, Duration::from_secs(300), |app| {
        let seen = app.world().resource::<Seen>();
        assert!(seen.failed.is_empty(), "{:?}", seen.failed);
        seen.finished.len() == 2
    });
    let models = app.world().resource::<RewardSdsModels>();
    assert_eq!(
        models.loads(),
        2,
        "the prior and the reward, each loaded once"
    );
    assert_eq!(models.len(), 2);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_cancelled_job_finishes_its_thread_before_the_next_starts() {
    let root = asset_root("overlap");
    let mut app = headless_app(&root, RewardSdsSettings::default());
    // Larger views than the other tests: each step lasts long enough to be caught mid-step.
    let mut slow = small_config(200);
    slow.render_size = 64;
    let first = app
        .world_mut()
        .spawn(GenerateAsset::new("a blue sphere").with_config(slow))
        .id();
    run_until(&mut app, Duration::from_secs(120), |app| {
        progress(app, first).step >= 1
    });
    app.world_mut().entity_mut(first).despawn();
    let second = app
        .world_mut()
        .spawn(GenerateAsset::new("a red cube").with_config(small_config(2)))
        .id();
    let mut frames_stopping = 0;
    run_until(&mut app, Duration::from_secs(120), |app| {
        let jobs = app.world().resource::<GenerationJobs>();
        let running: Vec<Entity> = jobs.running().collect();
        if jobs.stopping() > 0 {
            frames_stopping += 1;
            assert!(running.is_empty(), "a job started beside a stopping one");
            assert_eq!(
                progress(app, second).state,
                GenerationState::Queued { position: 0 }
            );
        }
        running.contains(&second)
    });
    assert!(
        frames_stopping > 0,
        "the cancelled job's thread was seen stopping"
    );
    assert_eq!(app.world().resource::<Seen>().cancelled, vec![first]);
    app.world_mut().entity_mut(second).despawn();
    app.update();
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn queued_requests_know_their_position() {
    let root = asset_root("queue");
    let mut app = headless_app(&root, RewardSdsSettings::default());
    let requests: Vec<Entity> = ["a red cube", "a blue sphere", "a green cone"]
        .into_iter()
        .map(|prompt| {
            app.world_mut()
                .spawn(GenerateAsset::new(prompt).with_config(small_config(1)))
                .id()
        })
        .collect();
    app.update();
    assert!(matches!(
        progress(&mut app, requests[0]).state,
        GenerationState::Loading | GenerationState::Running
    ));
    assert_eq!(
        progress(&mut app, requests[1]).state,
        GenerationState::Queued { position: 0 }
    );
    assert_eq!(
        progress(&mut app, requests[2]).state,
        GenerationState::Queued { position: 1 }
    );
    // The queue moves: once the second runs, the third is next.
    run_until(&mut app, Duration::from_secs(120), |app| {
        !matches!(
            progress(app, requests[1]).state,
            GenerationState::Queued { .. }
        )
    });
    assert_eq!(
        progress(&mut app, requests[2]).state,
        GenerationState::Queued { position: 0 }
    );
    for entity in requests {
        app.world_mut().entity_mut(entity).despawn();
    }
    app.update();
    std::fs::remove_dir_all(&root).ok();
}

/// What observers saw: (event, entity), in order.
#[derive(Resource, Default)]
struct Observed(Vec<(&'static str, Entity)>);

#[test]
fn observers_see_started_finished_and_failed() {
    let root = asset_root("observers");
    let mut app = headless_app(&root, RewardSdsSettings::default());
    app.init_resource::<Observed>()
        .add_observer(
            |started: On<GenerationStarted>, mut seen: ResMut<Observed>| {
                seen.0.push(("started", started.entity));
            },
        )
        .add_observer(|failed: On<GenerationFailed>, mut seen: ResMut<Observed>| {
            seen.0.push(("failed", failed.entity));
        });
    // Queued first, so it fails before the other starts.
    let bad = app
        .world_mut()
        .spawn(GenerateAsset::new("a red cube").with_preset("no-such-preset"))
        .id();
    let entity = app
        .world_mut()
        .spawn(GenerateAsset::new("a red cube").with_config(small_config(1)))
        .observe(
            |finished: On<GenerationFinished>,
             assets: Query<&GeneratedAsset>,
             mut seen: ResMut<Observed>| {
                // The result's handle is on the event, the same the entity shows.
                let asset = assets.get(finished.entity).unwrap();
                assert_eq!(asset.scene, finished.scene);
                assert_eq!(
                    finished.scene.path().map(|p| p.to_string()),
                    Some(format!("{}#Scene0", finished.asset_path))
                );
                seen.0.push(("finished", finished.entity));
            },
        )
        .id();
    run_until(&mut app, Duration::from_secs(120), |app| {
        !app.world().resource::<Seen>().finished.is_empty()
    });
    let observed = &app.world().resource::<Observed>().0;
    assert_eq!(
        observed,
        &vec![("failed", bad), ("started", entity), ("finished", entity)]
    );
    let failed = &app.world().resource::<Seen>().failed[0];
    assert!(
        matches!(&failed.error, GenerationError::Config { field, .. } if field == "preset"),
        "{:?}",
        failed.error
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn settings_the_app_inserted_are_kept() {
    let mut app = App::new();
    let mine = RewardSdsSettings {
        output_folder: "mine".into(),
        assets_folder: Some("/tmp/mine".into()),
        ..default()
    };
    app.insert_resource(mine.clone()).add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        RewardSdsPlugin::new(RewardSdsSettings {
            output_folder: "plugin's".into(),
            ..default()
        }),
    ));
    app.finish();
    assert_eq!(*app.world().resource::<RewardSdsSettings>(), mine);
    // Reflected (this test build also auto-registers reflected types, so it shows they
    // reflect; the plugin registers them itself for apps without that feature).
    let registry = app.world().resource::<AppTypeRegistry>().read();
    for type_id in [
        std::any::TypeId::of::<GenerateAsset>(),
        std::any::TypeId::of::<GenerationProgress>(),
        std::any::TypeId::of::<RewardSdsSettings>(),
        std::any::TypeId::of::<GenerationFinished>(),
        std::any::TypeId::of::<GenerationFailed>(),
    ] {
        assert!(registry.contains(type_id));
    }
}
