//! Meshes the procedural example scene (cube, sphere, cone) and writes it as a game-ready .glb.
//!
//! The mesh stage without a network: the scene's signed distance is the density field, the
//! nearest object's colour the albedo. `cargo run --release --example mesh_scene -- --out scene.glb`

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use rewardsds::engine::export::{ExportConfig, write_glb};
use rewardsds::engine::mesh::{Aabb, ColorMode, IsoLevel, MeshConfig, Pointwise, extract_mesh};
use rewardsds::engine::procedural::SdfScene;

/// Command-line options; every field is also documented in `--help`.
#[derive(Parser, Debug)]
#[command(about = "Mesh the procedural example scene and write it as .glb")]
struct Args {
    /// Output file.
    #[arg(long, default_value = "scene.glb")]
    out: PathBuf,
    /// Grid samples along the longest side.
    #[arg(long, default_value_t = 128)]
    resolution: u32,
    /// Triangle budget.
    #[arg(long, default_value_t = 20_000)]
    triangles: usize,
    /// Bake a texture instead of vertex colours.
    #[arg(long)]
    texture: bool,
    /// Longest side of the exported prop, metres.
    #[arg(long, default_value_t = 1.0)]
    size: f32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let scene = SdfScene::example();
    // Inside the surface the signed distance is negative: its negation is a density with the
    // surface at 0.
    let density = Pointwise(|p| -scene.distance(p).0);
    let albedo = Pointwise(|p| scene.objects[scene.distance(p).1].color.albedo().to_array());

    let mut config = MeshConfig {
        resolution: args.resolution,
        iso_level: IsoLevel::Value(0.0),
        color: if args.texture {
            ColorMode::Texture
        } else {
            ColorMode::VertexColors
        },
        ..Default::default()
    };
    config.simplify.target_triangles = args.triangles;
    let out = extract_mesh(&density, Some(&albedo), Aabb::cube(1.0), &config)?;

    let export = ExportConfig {
        target_size: Some(args.size),
        prompt: Some("a red cube beside a blue sphere, a yellow cone on the cube".into()),
        ..Default::default()
    };
    let written = write_glb(&out.mesh, out.texture.as_ref(), &args.out, &export)?;

    let r = &out.report;
    println!(
        "{}: {} -> {} triangles, {} vertices, {} bytes, {:.2} x {:.2} x {:.2} m",
        written.path.display(),
        r.extracted_triangles,
        r.triangles,
        r.vertices,
        written.bytes,
        written.size[0],
        written.size[1],
        written.size[2]
    );
    println!(
        "grid {:?}, iso {}, floaters removed {}; sample {:.2?}, extract {:.2?}, simplify {:.2?}, colour {:.2?}",
        r.grid_dims,
        r.iso_level,
        r.floaters.removed_components,
        r.timings.sample,
        r.timings.extract,
        r.timings.simplify,
        r.timings.color
    );
    Ok(())
}
