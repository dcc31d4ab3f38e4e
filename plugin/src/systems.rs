//! The systems: cancel removed requests, queue new ones, start jobs within the concurrency
//! limit, and turn job events into progress, previews, scenes and messages. Nothing here
//! blocks: jobs run on their own threads and are polled without waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bevy::ecs::event::EntityEvent;
use bevy::ecs::system::SystemParam;
use bevy::gltf::GltfAssetLabel;
use bevy::pbr::MeshMaterial3d;
use bevy::platform::cell::SyncCell;
use bevy::prelude::*;
use bevy::world_serialization::{WorldAsset, WorldAssetRoot};
use rewardsds_engine::generate::{
    GenerationJob, JobEvent, JobReport, JobRequest, ModelCache, PreviewShape,
};

use crate::error::GenerationError;
use crate::messages::{
    GenerationCancelled, GenerationFailed, GenerationFinished, GenerationStarted,
};
use crate::preview::{GenerationPreview, preview_material, preview_to_bevy_mesh, textured_preview};
use crate::progress::{GeneratedAsset, GenerationProgress, GenerationState};
use crate::request::GenerateAsset;
use crate::settings::RewardSdsSettings;
use crate::splat_preview::{SplatPreviewMaterial, splat_bundle, splats_to_bevy_mesh};

/// Marks the child that holds a finished generation's glTF scene.
#[derive(Component, Reflect, Debug, Clone, Copy, Default)]
#[reflect(Component, Default, Debug, Clone)]
pub struct GeneratedScene;

/// The models the plugin's jobs share (a resource): each prior and reward model is loaded by
/// the first job that needs it and kept for the next ones, so a multi-gigabyte prior is read
/// once, not once per prop. `clear()` frees them (jobs running keep theirs); `loads()` counts
/// loads from disk.
///
/// Reflected as an opaque handle: the cache is an engine type (the engine does not depend on
/// Bevy), so its field is ignored.
#[derive(Resource, Reflect, Clone, Debug, Default)]
#[reflect(Resource, Default, Debug, Clone)]
pub struct RewardSdsModels(#[reflect(ignore)] pub Arc<ModelCache>);

impl std::ops::Deref for RewardSdsModels {
    type Target = ModelCache;

    fn deref(&self) -> &ModelCache {
        &self.0
    }
}

/// The plugin's jobs (a resource, read-only for apps): requests waiting for a slot, jobs
/// running, and jobs cancelled or over whose thread has not ended yet. Those still stopping
/// keep their slot: a new job never shares the device with a cancelled one finishing its step.
///
/// Reflected without its fields: they hold threads and channels.
#[derive(Resource, Reflect, Default)]
#[reflect(Resource, Default)]
pub struct GenerationJobs {
    #[reflect(ignore)]
    queue: VecDeque<Entity>,
    #[reflect(ignore)]
    running: HashMap<Entity, Running>,
    #[reflect(ignore)]
    stopping: Vec<SyncCell<GenerationJob>>,
    /// What each entity's latest job (queued, running or over) was started from: a request
    /// marked changed restarts only when it differs.
    #[reflect(ignore)]
    requested: HashMap<Entity, GenerateAsset>,
}

impl GenerationJobs {
    /// Requests waiting for a slot, next first.
    pub fn queued(&self) -> impl Iterator<Item = Entity> + '_ {
        self.queue.iter().copied()
    }

    /// Entities whose job is running (loading, optimising or exporting).
    pub fn running(&self) -> impl Iterator<Item = Entity> + '_ {
        self.running.keys().copied()
    }

    /// Jobs cancelled or over whose thread is still finishing its step; they count against
    /// [`RewardSdsSettings::max_concurrent`].
    pub fn stopping(&self) -> usize {
        self.stopping.len()
    }
}

struct Running {
    // SyncCell: the job's event receiver is Send but not Sync; systems reach it through
    // `ResMut` only.
    job: SyncCell<GenerationJob>,
    prompt: String,
    name: String,
    preview: Option<Entity>,
}

#[derive(SystemParam)]
pub(crate) struct Outbox<'w> {
    started: MessageWriter<'w, GenerationStarted>,
    finished: MessageWriter<'w, GenerationFinished>,
    failed: MessageWriter<'w, GenerationFailed>,
}

/// Triggers `event` for observers, then writes it for readers.
fn announce<E>(commands: &mut Commands, messages: &mut MessageWriter<E>, event: E)
where
    E: Message + EntityEvent + Clone,
    for<'a> E::Trigger<'a>: Default,
{
    commands.trigger(event.clone());
    messages.write(event);
}

impl GenerationJobs {
    /// Stops `entity`'s job and drops its queue place; returns whether there was one. The
    /// job is cancelled (its thread finishes the current step and exits without writing) and
    /// kept in `stopping` until its thread has ended. Its preview child is despawned.
    fn stop(&mut self, entity: Entity, commands: &mut Commands) -> bool {
        let queued = self.queue.len();
        self.queue.retain(|e| *e != entity);
        let was_queued = self.queue.len() != queued;
        match self.running.remove(&entity) {
            Some(mut running) => {
                running.job.get().cancel();
                self.stopping.push(running.job);
                if let Some(preview) = running.preview
                    && let Ok(mut preview) = commands.get_entity(preview)
                {
                    preview.despawn();
                }
                true
            }
            None => was_queued,
        }
    }
}

pub(crate) fn cancel_removed(
    mut removed: RemovedComponents<GenerateAsset>,
    still_requested: Query<(), With<GenerateAsset>>,
    mut jobs: ResMut<GenerationJobs>,
    mut commands: Commands,
    mut cancelled: MessageWriter<GenerationCancelled>,
) {
    for entity in removed.read() {
        if still_requested.contains(entity) {
            continue; // removed and added again: `enqueue_requests` restarts it
        }
        jobs.requested.remove(&entity);
        if jobs.stop(entity, &mut commands) {
            announce(
                &mut commands,
                &mut cancelled,
                GenerationCancelled { entity },
            );
            if let Ok(mut e) = commands.get_entity(entity) {
                e.remove::<GenerationProgress>();
            }
        }
    }
}

pub(crate) fn enqueue_requests(
    requests: Query<(Entity, Ref<GenerateAsset>), Changed<GenerateAsset>>,
    mut jobs: ResMut<GenerationJobs>,
    mut commands: Commands,
) {
    for (entity, request) in &requests {
        // Any `&mut GenerateAsset` marks it changed: only a new value (or a request inserted
        // anew) restarts the work.
        if !request.is_added() && jobs.requested.get(&entity) == Some(&*request) {
            continue;
        }
        // A changed request restarts: whatever ran for the old one is cancelled.
        jobs.stop(entity, &mut commands);
        jobs.requested
            .insert(entity, GenerateAsset::clone(&request));
        jobs.queue.push_back(entity);
        commands
            .entity(entity)
            .insert(GenerationProgress::default());
    }
}

/// Starts queued requests while fewer than `max_concurrent` jobs run or are still stopping,
/// then tells the others their queue position.
///
/// Each job runs on a thread of its own, not on Bevy's task pools (futures-lite): a
/// generation is minutes of blocking compute, which would starve the pools' few threads and
/// with them asset loading and the game's own tasks.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_jobs(
    settings: Res<RewardSdsSettings>,
    models: Res<RewardSdsModels>,
    mut jobs: ResMut<GenerationJobs>,
    requests: Query<&GenerateAsset>,
    mut progress: Query<&mut GenerationProgress>,
    mut failed: MessageWriter<GenerationFailed>,
    mut commands: Commands,
    splat_materials: Option<Res<Assets<SplatPreviewMaterial>>>,
) {
    // Gaussians are previewed as splats where something can draw them.
    let preview_splats = splat_materials.is_some();
    jobs.stopping.retain_mut(|job| !job.get().is_finished());
    while jobs.running.len() + jobs.stopping.len() < settings.max_concurrent.max(1) {
        let Some(entity) = jobs.queue.pop_front() else {
            break;
        };
        let Ok(request) = requests.get(entity) else {
            continue;
        };
        let name = request.file_name();
        let started = request.resolve(&settings).and_then(|config| {
            let total = config.total_steps();
            let output = settings.output_dir().join(format!("{name}.glb"));
            let backend = settings.backend_for(&config);
            let mut job = JobRequest::new(config, backend, output);
            job.preview_every = settings.preview_every;
            job.preview_resolution = settings.preview_resolution;
            job.preview_splats = preview_splats;
            job.models = Some(models.0.clone());
            if settings.keep_checkpoints {
                job.checkpoint = Some(settings.checkpoint_dir(&name));
            }
            GenerationJob::spawn(job)
                .map(|job| (job, total))
                .map_err(|e| GenerationError::from(&e))
        });
        match started {
            Ok((job, total)) => {
                if let Ok(mut p) = progress.get_mut(entity) {
                    p.state = GenerationState::Loading;
                    p.total = total;
                }
                jobs.running.insert(
                    entity,
                    Running {
                        job: SyncCell::new(job),
                        prompt: request.prompt.clone(),
                        name,
                        preview: None,
                    },
                );
            }
            Err(error) => fail(
                entity,
                &request.prompt,
                error,
                &mut progress,
                &mut commands,
                &mut failed,
            ),
        }
    }
    for (position, &entity) in jobs.queue.iter().enumerate() {
        if let Ok(mut p) = progress.get_mut(entity) {
            // Written only when it moves: change detection stays meaningful.
            let state = GenerationState::Queued { position };
            if p.state != state {
                p.state = state;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_job_events(
    mut commands: Commands,
    mut jobs: ResMut<GenerationJobs>,
    settings: Res<RewardSdsSettings>,
    asset_server: Res<AssetServer>,
    mut meshes: Option<ResMut<Assets<Mesh>>>,
    mut materials: Option<ResMut<Assets<StandardMaterial>>>,
    mut progress: Query<&mut GenerationProgress>,
    scenes: Query<(Entity, &ChildOf), With<GeneratedScene>>,
    mut outbox: Outbox,
    mut preview_material_handle: Local<Option<Handle<StandardMaterial>>>,
    mut splat_materials: Option<ResMut<Assets<SplatPreviewMaterial>>>,
    mut splat_material_handle: Local<Option<Handle<SplatPreviewMaterial>>>,
    mut images: Option<ResMut<Assets<Image>>>,
) {
    let mut over = Vec::new();
    for (&entity, running) in jobs.running.iter_mut() {
        let mut latest_preview = None;
        while let Some(event) = running.job.get().try_next() {
            match event {
                JobEvent::Started { .. } => {
                    if let Ok(mut p) = progress.get_mut(entity) {
                        p.state = GenerationState::Running;
                    }
                    let started = GenerationStarted {
                        entity,
                        prompt: running.prompt.clone(),
                    };
                    announce(&mut commands, &mut outbox.started, started);
                }
                JobEvent::Progress(step) => {
                    if let Ok(mut p) = progress.get_mut(entity) {
                        p.apply(&step);
                    }
                }
                // Only the newest preview of this frame is worth a mesh upload.
                JobEvent::Preview(preview) => latest_preview = Some(preview),
                JobEvent::Finished(report) => {
                    show_result(
                        entity,
                        running,
                        report,
                        &settings,
                        &asset_server,
                        &scenes,
                        &mut commands,
                        &mut progress,
                        &mut outbox.finished,
                    );
                    over.push(entity);
                }
                JobEvent::Cancelled { .. } => over.push(entity),
                JobEvent::Failed(failure) => {
                    fail(
                        entity,
                        &running.prompt,
                        failure.into(),
                        &mut progress,
                        &mut commands,
                        &mut outbox.failed,
                    );
                    over.push(entity);
                }
            }
        }
        let Some(preview) = latest_preview.filter(|_| !over.contains(&entity)) else {
            continue;
        };
        let Some(meshes) = meshes.as_deref_mut() else {
            continue;
        };
        let marker = GenerationPreview { step: preview.step };
        match &preview.shape {
            PreviewShape::Mesh(mesh) => {
                let Some(materials) = materials.as_deref_mut() else {
                    continue;
                };
                let material = preview_material_handle
                    .get_or_insert_with(|| materials.add(preview_material()))
                    .clone();
                let mesh = Mesh3d(meshes.add(preview_to_bevy_mesh(mesh)));
                show_preview(entity, running, (marker, mesh), material, &mut commands);
            }
            PreviewShape::TexturedMesh { mesh, texture } => {
                let (Some(materials), Some(images)) =
                    (materials.as_deref_mut(), images.as_deref_mut())
                else {
                    continue;
                };
                let (mesh, image, mut material) = textured_preview(mesh, texture);
                material.base_color_texture = Some(images.add(image));
                let material = materials.add(material);
                // A new child each time: its material is this texture's, and a Gaussian run's
                // splat preview had another kind of material.
                if let Some(child) = running.preview.take() {
                    commands.entity(child).try_despawn();
                }
                let mesh = Mesh3d(meshes.add(mesh));
                show_preview(entity, running, (marker, mesh), material, &mut commands);
            }
            PreviewShape::Splats(cloud) => {
                let Some(materials) = splat_materials.as_deref_mut() else {
                    continue;
                };
                let material = splat_material_handle
                    .get_or_insert_with(|| materials.add(SplatPreviewMaterial::default()))
                    .clone();
                let mesh = Mesh3d(meshes.add(splats_to_bevy_mesh(cloud)));
                let parts = (marker, mesh, splat_bundle(cloud));
                show_preview(entity, running, parts, material, &mut commands);
            }
        }
    }
    for entity in over {
        jobs.stop(entity, &mut commands);
    }
}

/// Puts `parts` (marker, mesh, extras) on the entity's preview child, spawning it with
/// `material` the first time. Replacing the mesh handle frees the previous mesh.
fn show_preview<M: Material>(
    entity: Entity,
    running: &mut Running,
    parts: impl Bundle,
    material: Handle<M>,
    commands: &mut Commands,
) {
    match running.preview {
        Some(child) => {
            if let Ok(mut child) = commands.get_entity(child) {
                child.insert(parts);
            }
        }
        None => {
            if commands.get_entity(entity).is_ok() {
                let child = commands
                    .spawn((
                        parts,
                        MeshMaterial3d(material),
                        Transform::default(),
                        ChildOf(entity),
                    ))
                    .id();
                running.preview = Some(child);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn show_result(
    entity: Entity,
    running: &Running,
    report: JobReport,
    settings: &RewardSdsSettings,
    asset_server: &AssetServer,
    scenes: &Query<(Entity, &ChildOf), With<GeneratedScene>>,
    commands: &mut Commands,
    progress: &mut Query<&mut GenerationProgress>,
    finished: &mut MessageWriter<GenerationFinished>,
) {
    let asset_path = settings.asset_path(&running.name);
    let scene_path = GltfAssetLabel::Scene(0).from_asset(asset_path.clone());
    // A file the server has loaded before is reloaded, so every instance of it updates
    // (with `file_watcher` the watcher would do it too; a second reload is harmless).
    let known = asset_server
        .get_handle::<WorldAsset>(scene_path.clone())
        .is_some();
    let handle: Handle<WorldAsset> = asset_server.load(scene_path);
    if known {
        asset_server.reload(asset_path.clone());
    }
    for (old, parent) in scenes {
        if parent.parent() == entity {
            commands.entity(old).despawn();
        }
    }
    if let Ok(mut e) = commands.get_entity(entity) {
        e.insert(GeneratedAsset {
            file: report.path.clone(),
            asset_path: asset_path.clone(),
            scene: handle.clone(),
            report: report.clone(),
        });
        e.with_child((
            GeneratedScene,
            WorldAssetRoot(handle.clone()),
            Transform::default(),
        ));
    }
    if let Ok(mut p) = progress.get_mut(entity) {
        p.state = GenerationState::Finished;
        p.step = p.total.max(report.steps);
        p.eta_seconds = 0.0;
    }
    info!(
        "generated '{}' -> {} ({} triangles, {} bytes)",
        running.prompt,
        report.path.display(),
        report.triangles,
        report.bytes
    );
    let event = GenerationFinished {
        entity,
        prompt: running.prompt.clone(),
        file: report.path.clone(),
        asset_path,
        scene: handle,
        report,
    };
    announce(commands, finished, event);
}

fn fail(
    entity: Entity,
    prompt: &str,
    error: GenerationError,
    progress: &mut Query<&mut GenerationProgress>,
    commands: &mut Commands,
    failed: &mut MessageWriter<GenerationFailed>,
) {
    warn!("generation of '{prompt}' failed: {error}");
    if let Ok(mut p) = progress.get_mut(entity) {
        p.state = GenerationState::Failed(error.clone());
    }
    let event = GenerationFailed {
        entity,
        prompt: prompt.to_string(),
        error,
    };
    announce(commands, failed, event);
}
