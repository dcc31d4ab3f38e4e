//! In-editor prompt-to-prop: type a prompt, pick a preset, press Generate, watch the prop
//! form on the workbench, then place the finished `.glb` around the scene by clicking.
//! Offline on the CPU with the built-in Tiny World prior:
//!
//! `cargo run --release --features gui --example editor`
//!
//! Right-drag orbits, the wheel zooms. `--prior sd21-base --reward clip-vit-l-14 --backend
//! cuda` for Stable Diffusion on a GPU.

use std::path::PathBuf;

use bevy::gltf::GltfAssetLabel;
use bevy::input::mouse::{AccumulatedMouseMotion, AccumulatedMouseScroll};
use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, save_to_disk};
use bevy::window::PrimaryWindow;
use bevy::world_serialization::WorldAssetRoot;
use bevy_egui::{EguiContexts, EguiPlugin, EguiPrimaryContextPass, egui};
use clap::Parser;
use rewardsds::plugin::engine::backend::BackendKind;
use rewardsds::plugin::engine::generate::PRESETS;
use rewardsds::plugin::prelude::*;

/// Options.
#[derive(Parser, Debug, Clone, Resource)]
#[command(about = "Prompt-to-prop editor")]
struct Args {
    /// Diffusion prior (preset, folder or repo id).
    #[arg(long)]
    prior: Option<String>,
    /// Reward model (preset, folder or repo id).
    #[arg(long)]
    reward: Option<String>,
    /// Backend: cpu, wgpu, cuda.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// Start generating this prompt at once (for unattended runs).
    #[arg(long)]
    auto: Option<String>,
    /// Steps for `--auto`.
    #[arg(long)]
    auto_steps: Option<usize>,
    /// Representation to start with: nerf or gaussians.
    #[arg(long, default_value = "nerf")]
    scene: SceneKind,
    /// Save a screenshot every 10 seconds into this folder.
    #[arg(long)]
    screenshots: Option<PathBuf>,
    /// Quit after this many seconds.
    #[arg(long)]
    exit_after: Option<f32>,
}

/// The panel's fields.
#[derive(Resource)]
struct Form {
    prompt: String,
    preset: String,
    scene: SceneKind,
    prior: String,
    reward: String,
    steps: usize,
    seed: u64,
    /// The request being generated on the workbench.
    active: Option<Entity>,
    /// A finished asset waiting for a click on the ground (or for an edit).
    placing: Option<String>,
    /// What the selected asset should become ("Edit selected").
    edit_prompt: String,
    /// `.glb` files found in the output folder.
    library: Vec<String>,
    last_error: Option<String>,
    next_screenshot: f32,
}

/// Where the camera looks from.
#[derive(Resource)]
struct Orbit {
    yaw: f32,
    pitch: f32,
    distance: f32,
}

fn main() {
    let args = Args::parse();
    let settings = RewardSdsSettings {
        backend: args.backend,
        prior: args.prior.clone(),
        reward: args.reward.clone(),
        ..default()
    };
    let defaults = rewardsds::plugin::engine::generate::GenerateConfig::preset("fast")
        .expect("a known preset");
    App::new()
        .add_plugins((
            DefaultPlugins.set(WindowPlugin {
                primary_window: Some(Window {
                    title: "rewardsds: prompt to prop".into(),
                    ..default()
                }),
                ..default()
            }),
            EguiPlugin::default(),
            RewardSdsPlugin::new(settings),
        ))
        .insert_resource(Form {
            prompt: "a blue cone on top of an orange cylinder".into(),
            preset: "fast".into(),
            scene: args.scene,
            prior: args.prior.clone().unwrap_or_default(),
            reward: args.reward.clone().unwrap_or_default(),
            steps: defaults.steps,
            seed: defaults.seed,
            active: None,
            placing: None,
            edit_prompt: String::new(),
            library: Vec::new(),
            last_error: None,
            next_screenshot: 0.0,
        })
        .insert_resource(Orbit {
            yaw: 0.6,
            pitch: 0.35,
            distance: 6.0,
        })
        .insert_resource(args)
        .add_systems(Startup, (setup, auto_start))
        .add_systems(EguiPrimaryContextPass, panel)
        .add_systems(
            Update,
            (orbit_camera, place_on_click, refresh_library, housekeeping),
        )
        .run();
}

fn setup(
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    commands.spawn((Camera3d::default(), Transform::default()));
    commands.spawn((
        DirectionalLight {
            illuminance: 8_000.0,
            ..default()
        },
        Transform::from_xyz(3.0, 8.0, 4.0).looking_at(Vec3::ZERO, Vec3::Y),
    ));
    commands.insert_resource(GlobalAmbientLight {
        brightness: 400.0,
        ..default()
    });
    commands.spawn((
        Mesh3d(meshes.add(Plane3d::default().mesh().size(30.0, 30.0))),
        MeshMaterial3d(materials.add(Color::srgb(0.3, 0.33, 0.36))),
    ));
    // The workbench: where new props form.
    commands.spawn((
        Mesh3d(meshes.add(Cylinder::new(0.8, 0.02))),
        MeshMaterial3d(materials.add(Color::srgb(0.6, 0.5, 0.35))),
        Transform::from_xyz(0.0, 0.01, 0.0),
    ));
}

fn auto_start(mut commands: Commands, args: Res<Args>, mut form: ResMut<Form>) {
    if let Some(prompt) = &args.auto {
        form.prompt = prompt.clone();
        if let Some(steps) = args.auto_steps {
            form.steps = steps;
        }
        let request = request_of(&form);
        form.active = Some(commands.spawn(request).id());
    }
}

fn request_of(form: &Form) -> GenerateAsset {
    let mut request = GenerateAsset::new(form.prompt.trim())
        .with_preset(form.preset.clone())
        .with_scene(form.scene)
        .with_steps(form.steps)
        .with_seed(form.seed);
    if !form.prior.trim().is_empty() {
        request = request.with_prior(form.prior.trim());
    }
    if !form.reward.trim().is_empty() {
        request = request.with_reward(form.reward.trim());
    }
    request
}

fn scene_label(scene: SceneKind) -> &'static str {
    match scene {
        SceneKind::Nerf => "NeRF",
        SceneKind::Gaussians => "Gaussians (splat preview)",
    }
}

fn panel(
    mut contexts: EguiContexts,
    mut commands: Commands,
    mut form: ResMut<Form>,
    settings: Res<RewardSdsSettings>,
    progress: Query<&GenerationProgress>,
) -> Result {
    let ctx = contexts.ctx_mut()?;
    egui::Window::new("Generate")
        .default_pos([12.0, 12.0])
        .default_width(300.0)
        .show(ctx, |ui| {
            ui.label("Prompt");
            ui.text_edit_singleline(&mut form.prompt);
            egui::ComboBox::from_label("preset")
                .selected_text(form.preset.clone())
                .show_ui(ui, |ui| {
                    for preset in PRESETS {
                        ui.selectable_value(&mut form.preset, preset.to_string(), *preset);
                    }
                });
            egui::ComboBox::from_label("representation")
                .selected_text(scene_label(form.scene))
                .show_ui(ui, |ui| {
                    for scene in [SceneKind::Nerf, SceneKind::Gaussians] {
                        ui.selectable_value(&mut form.scene, scene, scene_label(scene));
                    }
                });
            ui.horizontal(|ui| {
                ui.label("prior");
                ui.text_edit_singleline(&mut form.prior)
                    .on_hover_text("empty: the built-in Tiny World prior");
            });
            ui.horizontal(|ui| {
                ui.label("reward");
                ui.text_edit_singleline(&mut form.reward)
                    .on_hover_text("empty: the preset's reward model");
            });
            ui.horizontal(|ui| {
                ui.label("steps");
                ui.add(egui::DragValue::new(&mut form.steps).range(1..=100_000));
                ui.label("seed");
                ui.add(egui::DragValue::new(&mut form.seed));
                if ui.button("🎲").on_hover_text("new seed").clicked() {
                    form.seed = form.seed.wrapping_mul(6364136223846793005).wrapping_add(1) >> 16;
                }
            });
            let running = form
                .active
                .and_then(|e| progress.get(e).ok())
                .is_some_and(|p| !p.is_over());
            ui.horizontal(|ui| {
                if ui
                    .add_enabled(
                        !running && !form.prompt.trim().is_empty(),
                        egui::Button::new("Generate"),
                    )
                    .clicked()
                {
                    // The finished prop stays in the library; the workbench is cleared.
                    if let Some(old) = form.active.take() {
                        commands.entity(old).despawn();
                    }
                    form.last_error = None;
                    let request = request_of(&form);
                    form.active = Some(commands.spawn(request).id());
                }
                if ui
                    .add_enabled(running, egui::Button::new("Cancel"))
                    .clicked()
                    && let Some(active) = form.active.take()
                {
                    commands.entity(active).despawn();
                }
            });
            if let Some(p) = form.active.and_then(|e| progress.get(e).ok()) {
                show_progress(ui, p);
            }
            if let Some(error) = &form.last_error {
                ui.colored_label(egui::Color32::LIGHT_RED, error);
            }
            ui.separator();
            ui.label("Generated assets (click one, then click the ground)");
            egui::ScrollArea::vertical()
                .max_height(200.0)
                .show(ui, |ui| {
                    for path in form.library.clone() {
                        let selected = form.placing.as_deref() == Some(&path);
                        if ui.selectable_label(selected, &path).clicked() {
                            form.placing = if selected { None } else { Some(path) };
                        }
                    }
                });
            // Editing the selected asset: its kept checkpoint is the edit's source.
            let name = form.placing.as_deref().map(|p| {
                let file = p.rsplit('/').next().unwrap_or(p);
                file.trim_end_matches(".glb").to_string()
            });
            let editable = name
                .as_deref()
                .is_some_and(|n| settings.checkpoint_dir(n).join("latest").is_file());
            ui.horizontal(|ui| {
                ui.label("edit into");
                ui.text_edit_singleline(&mut form.edit_prompt)
                    .on_hover_text("e.g. the same prop in another colour");
            });
            if ui
                .add_enabled(
                    editable && !running && !form.edit_prompt.trim().is_empty(),
                    egui::Button::new("Edit selected"),
                )
                .on_disabled_hover_text(
                    "select a generated asset made with its checkpoint kept, and say what it \
                     should become",
                )
                .clicked()
                && let Some(name) = name
            {
                if let Some(old) = form.active.take() {
                    commands.entity(old).despawn();
                }
                form.last_error = None;
                form.placing = None;
                let request =
                    GenerateAsset::edit(name, form.edit_prompt.trim()).with_steps(form.steps);
                form.active = Some(commands.spawn(request).id());
            }
        });
    Ok(())
}

fn show_progress(ui: &mut egui::Ui, p: &GenerationProgress) {
    let status = match &p.state {
        GenerationState::Queued { position: 0 } => "queued: next".to_string(),
        GenerationState::Queued { position } => format!("queued: {position} ahead"),
        GenerationState::Loading => "loading models".to_string(),
        GenerationState::Running => {
            let stage = if p.texture_stage { "texturing, " } else { "" };
            format!(
                "{stage}step {}/{}, ETA {:.0} s",
                p.step, p.total, p.eta_seconds
            )
        }
        GenerationState::Exporting => "extracting the mesh".to_string(),
        GenerationState::Finished => "done".to_string(),
        GenerationState::Failed(why) => format!("failed: {why}"),
    };
    ui.add(egui::ProgressBar::new(p.fraction()).text(status));
    ui.label(format!(
        "loss {:.4}   {:.2} s/step",
        p.loss, p.seconds_per_step
    ));
    if let Some((min, mean, max)) = p.reward {
        ui.label(format!("reward min {min:.3}  mean {mean:.3}  max {max:.3}"));
    }
    if p.reward_history.len() >= 2 {
        reward_curve(ui, &p.reward_history);
    }
}

/// The mean reward per step as a line (egui alone: no plotting crate for one curve), under a
/// band that names its range (the label never sits on the line).
fn reward_curve(ui: &mut egui::Ui, values: &[f32]) {
    const LABEL: f32 = 13.0;
    let (rect, _) = ui.allocate_exact_size(
        egui::vec2(ui.available_width(), 60.0 + LABEL),
        egui::Sense::hover(),
    );
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 2.0, egui::Color32::from_gray(30));
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    let plot = egui::Rect::from_min_max(rect.left_top() + egui::vec2(0.0, LABEL), rect.max);
    let span = (hi - lo).max(1e-6);
    let n = (values.len() - 1) as f32;
    let points: Vec<egui::Pos2> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            egui::pos2(
                plot.left() + plot.width() * i as f32 / n,
                plot.bottom() - plot.height() * (v - lo) / span,
            )
        })
        .collect();
    painter.add(egui::Shape::line(
        points,
        egui::Stroke::new(1.5, egui::Color32::LIGHT_GREEN),
    ));
    painter.text(
        rect.left_top() + egui::vec2(2.0, 1.0),
        egui::Align2::LEFT_TOP,
        format!("mean reward per step, {lo:.3} to {hi:.3}"),
        egui::FontId::monospace(10.0),
        egui::Color32::GRAY,
    );
}

fn orbit_camera(
    mut orbit: ResMut<Orbit>,
    buttons: Res<ButtonInput<MouseButton>>,
    motion: Res<AccumulatedMouseMotion>,
    scroll: Res<AccumulatedMouseScroll>,
    mut contexts: EguiContexts,
    mut cameras: Query<&mut Transform, With<Camera3d>>,
) {
    let over_ui = contexts
        .ctx_mut()
        .map(|c| c.egui_wants_pointer_input())
        .unwrap_or(false);
    if !over_ui {
        if buttons.pressed(MouseButton::Right) {
            orbit.yaw -= motion.delta.x * 0.005;
            orbit.pitch = (orbit.pitch + motion.delta.y * 0.005).clamp(0.05, 1.4);
        }
        orbit.distance = (orbit.distance * (1.0 - scroll.delta.y * 0.1)).clamp(1.5, 40.0);
    }
    let target = Vec3::new(0.0, 0.4, 0.0);
    let offset = Vec3::new(
        orbit.yaw.sin() * orbit.pitch.cos(),
        orbit.pitch.sin(),
        orbit.yaw.cos() * orbit.pitch.cos(),
    ) * orbit.distance;
    for mut transform in &mut cameras {
        *transform = Transform::from_translation(target + offset).looking_at(target, Vec3::Y);
    }
}

/// A left click on the ground places the selected asset there.
fn place_on_click(
    mut commands: Commands,
    mut form: ResMut<Form>,
    buttons: Res<ButtonInput<MouseButton>>,
    window: Single<&Window, With<PrimaryWindow>>,
    camera: Single<(&Camera, &GlobalTransform)>,
    asset_server: Res<AssetServer>,
    mut contexts: EguiContexts,
) {
    let Some(asset_path) = form.placing.clone() else {
        return;
    };
    if !buttons.just_pressed(MouseButton::Left)
        || contexts
            .ctx_mut()
            .map(|c| c.egui_wants_pointer_input())
            .unwrap_or(true)
    {
        return;
    }
    let (camera, transform) = *camera;
    let Some(cursor) = window.cursor_position() else {
        return;
    };
    let Ok(ray) = camera.viewport_to_world(transform, cursor) else {
        return;
    };
    let Some(distance) = ray.intersect_plane(Vec3::ZERO, InfinitePlane3d::new(Vec3::Y)) else {
        return;
    };
    let point = ray.get_point(distance);
    commands.spawn((
        WorldAssetRoot(asset_server.load(GltfAssetLabel::Scene(0).from_asset(asset_path))),
        Transform::from_translation(point),
    ));
    form.placing = None;
}

/// The `.glb` files in the output folder, re-read when a generation finishes.
fn refresh_library(
    mut form: ResMut<Form>,
    settings: Res<RewardSdsSettings>,
    mut finished: MessageReader<GenerationFinished>,
    mut failed: MessageReader<GenerationFailed>,
    mut first: Local<bool>,
) {
    for f in failed.read() {
        form.last_error = Some(f.error.to_string());
    }
    if finished.read().count() == 0 && *first {
        return;
    }
    *first = true;
    let mut names: Vec<String> = std::fs::read_dir(settings.output_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".glb") && !n.starts_with('.'))
        .map(|n| settings.asset_path(n.trim_end_matches(".glb")))
        .collect();
    names.sort();
    form.library = names;
}

fn housekeeping(
    mut commands: Commands,
    // Wall-clock: the virtual clock clamps slow frames (software rendering) at 250 ms.
    time: Res<Time<Real>>,
    args: Res<Args>,
    mut form: ResMut<Form>,
    mut exit: MessageWriter<AppExit>,
) {
    if let Some(dir) = &args.screenshots
        && time.elapsed_secs() >= form.next_screenshot
    {
        form.next_screenshot += 10.0;
        let _ = std::fs::create_dir_all(dir);
        let path = dir.join(format!("editor_{:04.0}s.png", time.elapsed_secs()));
        commands
            .spawn(Screenshot::primary_window())
            .observe(save_to_disk(path));
    }
    if args.exit_after.is_some_and(|t| time.elapsed_secs() > t) {
        exit.write(AppExit::Success);
    }
}
