//! Runtime procedural content: a small world spawns props from a list of prompts while the
//! game runs. Each prop's live preview forms where it will stand; its `.glb` replaces the
//! preview when it is done. Offline on the CPU with the built-in Tiny World prior:
//!
//! `cargo run --release --features gui --example runtime_demo`
//!
//! `--prior sd21-base --reward clip-vit-l-14 --backend cuda` for Stable Diffusion on a GPU;
//! `--scene gaussians` for the faster Gaussian path.
//! On exit it prints frame-time percentiles with and without a generation running.

use std::path::PathBuf;

use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, save_to_disk};
use clap::Parser;
use rewardsds::plugin::engine::backend::BackendKind;
use rewardsds::plugin::prelude::*;

/// Options.
#[derive(Parser, Debug, Clone, Resource)]
#[command(about = "Spawn generated props at run time")]
struct Args {
    /// Prompts, separated by `;` (Tiny World captions by default).
    #[arg(
        long,
        default_value = "a red cube;a blue sphere;a green cone and a yellow cube;a red torus on top of a blue cube"
    )]
    prompts: String,
    /// Seconds between spawning one prop and the next (they queue for the generator).
    #[arg(long, default_value_t = 2.0)]
    interval: f32,
    /// Optimisation steps per prop (the preset's when unset).
    #[arg(long)]
    steps: Option<usize>,
    /// Preset: fast, quality, fast-sds, quality-sds.
    #[arg(long, default_value = "fast")]
    preset: String,
    /// Diffusion prior (preset, folder or repo id).
    #[arg(long)]
    prior: Option<String>,
    /// Reward model (preset, folder or repo id).
    #[arg(long)]
    reward: Option<String>,
    /// Scene representation: nerf or gaussians (the preset's when unset).
    #[arg(long)]
    scene: Option<SceneKind>,
    /// Backend: cpu, wgpu, cuda.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// Generations at once.
    #[arg(long, default_value_t = 1)]
    concurrent: usize,
    /// Quit this many seconds after the last prop is done (never when unset).
    #[arg(long)]
    exit_after_done: Option<f32>,
    /// Save a screenshot every 10 seconds into this folder.
    #[arg(long)]
    screenshots: Option<PathBuf>,
}

/// Frame times, split by whether a generation was running.
#[derive(Resource, Default)]
struct FrameTimes {
    generating: Vec<f64>,
    idle: Vec<f64>,
    all_done_for: f32,
    next_screenshot: f32,
    shots: usize,
}

#[derive(Resource)]
struct Spawner {
    prompts: Vec<String>,
    next: usize,
    timer: Timer,
}

/// The text line of one prop.
#[derive(Component)]
struct StatusText;

fn main() {
    let args = Args::parse();
    let settings = RewardSdsSettings {
        backend: args.backend,
        preset: args.preset.clone(),
        prior: args.prior.clone(),
        reward: args.reward.clone(),
        max_concurrent: args.concurrent,
        ..default()
    };
    let prompts: Vec<String> = args
        .prompts
        .split(';')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    App::new()
        .add_plugins((
            DefaultPlugins.set(WindowPlugin {
                primary_window: Some(Window {
                    title: "rewardsds: runtime demo".into(),
                    ..default()
                }),
                ..default()
            }),
            RewardSdsPlugin::new(settings),
        ))
        .insert_resource(Spawner {
            prompts,
            next: 0,
            timer: Timer::from_seconds(args.interval.max(0.01), TimerMode::Repeating),
        })
        .insert_resource(args)
        .init_resource::<FrameTimes>()
        .add_systems(Startup, setup)
        .add_systems(
            Update,
            (spawn_props, orbit_camera, show_status, measure_frames),
        )
        .add_systems(Last, report_on_exit)
        .run();
}

fn setup(
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    commands.spawn((
        Camera3d::default(),
        Transform::from_xyz(0.0, 3.5, 9.0).looking_at(Vec3::new(0.0, 0.5, 0.0), Vec3::Y),
    ));
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
        Mesh3d(meshes.add(Plane3d::default().mesh().size(24.0, 24.0))),
        MeshMaterial3d(materials.add(Color::srgb(0.35, 0.42, 0.3))),
    ));
    commands.spawn((
        StatusText,
        Text::new("starting"),
        Node {
            position_type: PositionType::Absolute,
            top: Val::Px(10.0),
            left: Val::Px(10.0),
            ..default()
        },
    ));
}

/// One prop every `interval` seconds, in a row along x.
fn spawn_props(
    mut commands: Commands,
    mut spawner: ResMut<Spawner>,
    args: Res<Args>,
    time: Res<Time>,
) {
    spawner.timer.tick(time.delta());
    if spawner.next >= spawner.prompts.len() || (spawner.next > 0 && !spawner.timer.just_finished())
    {
        return;
    }
    let n = spawner.prompts.len() as f32;
    let x = (spawner.next as f32 - (n - 1.0) / 2.0) * 2.2;
    let mut request = GenerateAsset::new(spawner.prompts[spawner.next].clone());
    if let Some(scene) = args.scene {
        request = request.with_scene(scene);
    }
    if let Some(steps) = args.steps {
        request = request.with_steps(steps);
    }
    commands.spawn((request, Transform::from_xyz(x, 0.0, 0.0)));
    spawner.next += 1;
}

fn orbit_camera(time: Res<Time>, mut cameras: Query<&mut Transform, With<Camera3d>>) {
    let angle = time.elapsed_secs() * 0.1;
    for mut transform in &mut cameras {
        *transform = Transform::from_xyz(9.0 * angle.sin(), 3.5, 9.0 * angle.cos())
            .looking_at(Vec3::new(0.0, 0.5, 0.0), Vec3::Y);
    }
}

fn show_status(
    requests: Query<(&GenerateAsset, Option<&GenerationProgress>)>,
    mut text: Query<&mut Text, With<StatusText>>,
) {
    let mut lines = Vec::new();
    for (request, progress) in &requests {
        let line = match progress.map(|p| (&p.state, p)) {
            None | Some((GenerationState::Queued { .. }, _)) => {
                format!("{}: queued", request.prompt)
            }
            Some((GenerationState::Loading, _)) => format!("{}: loading", request.prompt),
            Some((GenerationState::Running, p)) => {
                let reward = p
                    .reward
                    .map(|(_, mean, _)| format!(", reward {mean:.3}"))
                    .unwrap_or_default();
                format!(
                    "{}: step {}/{}{reward}, ETA {:.0}s",
                    request.prompt, p.step, p.total, p.eta_seconds
                )
            }
            Some((GenerationState::Exporting, _)) => format!("{}: writing .glb", request.prompt),
            Some((GenerationState::Finished, _)) => format!("{}: done", request.prompt),
            Some((GenerationState::Failed(why), _)) => {
                format!("{}: failed: {why}", request.prompt)
            }
        };
        lines.push(line);
    }
    for mut text in &mut text {
        text.0 = lines.join("\n");
    }
}

fn measure_frames(
    mut commands: Commands,
    // Wall-clock time: the default (virtual) clock clamps each frame's delta at 250 ms.
    time: Res<Time<Real>>,
    args: Res<Args>,
    spawner: Res<Spawner>,
    progress: Query<&GenerationProgress>,
    mut frames: ResMut<FrameTimes>,
    mut exit: MessageWriter<AppExit>,
) {
    let running = progress.iter().any(|p| {
        matches!(
            p.state,
            GenerationState::Loading | GenerationState::Running | GenerationState::Exporting
        )
    });
    let dt = time.delta_secs_f64() * 1000.0;
    // The first frames include start-up work: skip them.
    if time.elapsed_secs() > 2.0 {
        if running {
            frames.generating.push(dt);
        } else {
            frames.idle.push(dt);
        }
    }
    let all_done = spawner.next == spawner.prompts.len() && progress.iter().all(|p| p.is_over());
    frames.all_done_for = if all_done {
        frames.all_done_for + time.delta_secs()
    } else {
        0.0
    };
    if let Some(dir) = &args.screenshots
        && time.elapsed_secs() >= frames.next_screenshot
    {
        frames.next_screenshot += 10.0;
        frames.shots += 1;
        let _ = std::fs::create_dir_all(dir);
        let path = dir.join(format!("runtime_demo_{:03}.png", frames.shots));
        commands
            .spawn(Screenshot::primary_window())
            .observe(save_to_disk(path));
    }
    if let Some(after) = args.exit_after_done
        && frames.all_done_for > after
    {
        exit.write(AppExit::Success);
    }
}

fn report_on_exit(mut exits: MessageReader<AppExit>, frames: Res<FrameTimes>) {
    if exits.read().next().is_none() {
        return;
    }
    println!("| frames | count | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---|---|---|---|");
    for (name, times) in [("generating", &frames.generating), ("idle", &frames.idle)] {
        let mut t = times.clone();
        if t.is_empty() {
            continue;
        }
        t.sort_by(f64::total_cmp);
        let q = |p: f64| t[((t.len() - 1) as f64 * p).round() as usize];
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            t.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            t[t.len() - 1]
        );
    }
}
