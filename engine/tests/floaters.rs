//! Floaters in Gaussian props (issue 41 item 5): stray Gaussians that mesh as blobs around
//! the object. A cloud with planted strays is pruned ([`SplatCloud::pruned`]) and meshed
//! through the real mesh stage, with and without the pruning.
//!
//! `measure_real_prop` (ignored) reads a `.ply` that `rewardsds generate --scene gaussians`
//! wrote and prints what the pruning and the mesh stage do with it; the defaults of
//! [`PruneConfig`] come from it.

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use glam::Vec3;
use rewardsds_engine::generate::{GaussianScene, GaussianSceneConfig};
use rewardsds_engine::mesh::{
    Aabb, AlbedoField, BackdropPieces, ExtractedMesh, MeshConfig, TriMesh, connected_components,
    extract_mesh, render_mesh,
};
use rewardsds_engine::rgb_image::RgbImage;
use rewardsds_engine::scene::camera::Camera;
use rewardsds_engine::scene::gaussians::{Gaussians, PruneConfig, SplatCloud};

const SH_C0: f32 = 0.282_094_8;

/// Pushes one isotropic Gaussian.
fn push(cloud: &mut SplatCloud, p: Vec3, scale: f32, opacity: f32, color: [f32; 3]) {
    cloud.positions.push(p.to_array());
    cloud.scales.push([scale; 3]);
    cloud.rotations.push([1.0, 0.0, 0.0, 0.0]);
    cloud.opacities.push(opacity);
    cloud.colors.push(color);
    cloud
        .sh
        .push(color.iter().map(|c| (c - 0.5) / SH_C0).collect());
}

fn mesh_cloud(cloud: &SplatCloud, config: &MeshConfig) -> ExtractedMesh {
    let fields = cloud.fields();
    extract_mesh(
        &fields,
        Some(&fields as &dyn AlbedoField),
        cloud.mesh_bounds(),
        config,
    )
    .expect("the cloud meshes")
}

/// Triangles with a corner farther than `radius` from `center`.
fn triangles_beyond(mesh: &TriMesh, center: Vec3, radius: f32) -> usize {
    mesh.triangles()
        .filter(|t| t.iter().any(|p| p.distance(center) > radius))
        .count()
}

/// A solid torus (R 0.5, r 0.18) in the XZ plane: 32 rings of 19 Gaussians (the tube's
/// centre, 6 at half its radius, 12 on its surface), opacity 0.3 to 0.95 as a prop's are.
fn solid_torus(cloud: &mut SplatCloud) {
    for i in 0..32 {
        let u = i as f32 / 32.0 * std::f32::consts::TAU;
        for (radius, count) in [(0.0f32, 1), (0.09, 6), (0.18, 12)] {
            for j in 0..count {
                let v = j as f32 / count as f32 * std::f32::consts::TAU;
                let ring = 0.5 + radius * v.cos();
                let p = Vec3::new(ring * u.cos(), radius * v.sin(), ring * u.sin());
                let opacity = 0.3 + 0.65 * ((i * 7 + j * 3) % 10) as f32 / 9.0;
                push(cloud, p, 0.05, opacity, [0.6, 0.2, 0.7]);
            }
        }
    }
}

/// A number in [0, 1) from `i` (a fixed low-discrepancy sequence: no RNG to drift).
fn unit(i: usize, k: f32) -> f32 {
    (i as f32 * k).fract()
}

/// The torus with what SDS leaves around a prop planted: the cloud, and how many Gaussians
/// are the object (first), faint, and opaque strays (last).
fn planted_cloud() -> (SplatCloud, usize, usize, usize) {
    let mut cloud = SplatCloud::default();
    solid_torus(&mut cloud);
    let object = cloud.len();

    // What SDS leaves around a prop (measured on a real one in `measure_real_prop`):
    // 1. the faded initial ball: 1500 Gaussians of opacity 0.005 to 0.04 filling a ball of
    //    radius 0.9 around the torus;
    for i in 0..1500 {
        let dir = Vec3::new(
            unit(i, 0.754_877_7) * 2.0 - 1.0,
            unit(i, 0.569_840_3) * 2.0 - 1.0,
            unit(i, 0.381_966) * 2.0 - 1.0,
        );
        let p = dir.normalize_or_zero() * 0.9 * unit(i, 0.618_034).cbrt();
        push(
            &mut cloud,
            p,
            0.04,
            0.005 + 0.035 * unit(i, 0.414_213_6),
            [0.9; 3],
        );
    }
    let faint = cloud.len() - object;
    // 2. opaque white pairs 0.2 to 0.3 from its surface: above, below, in the hole, beside
    //    (the blobs of the issue);
    let near = [
        Vec3::new(0.5, 0.4, 0.0),
        Vec3::new(-0.5, 0.4, 0.0),
        Vec3::new(0.0, -0.4, 0.5),
        Vec3::new(0.0, 0.0, 0.0),
        Vec3::new(0.95, 0.0, 0.0),
        Vec3::new(0.0, 0.1, -0.95),
    ];
    for c in near {
        for offset in [Vec3::ZERO, Vec3::new(0.04, 0.02, 0.0)] {
            push(&mut cloud, c + offset, 0.04, 0.7, [1.0; 3]);
        }
    }
    // 3. and opaque clusters of four, and single Gaussians, well away from it.
    for c in [
        Vec3::new(1.3, 0.4, 0.0),
        Vec3::new(-1.0, -0.7, 0.8),
        Vec3::new(0.1, 1.0, -1.1),
    ] {
        for m in 0..4 {
            let offset = Vec3::new((m & 1) as f32, (m >> 1) as f32, 0.0) * 0.04;
            push(&mut cloud, c + offset, 0.05, 0.9, [1.0; 3]);
        }
    }
    for p in [Vec3::new(0.0, -1.5, 0.0), Vec3::new(1.6, 1.0, 1.0)] {
        push(&mut cloud, p, 0.06, 0.7, [1.0; 3]);
    }
    let opaque_strays = cloud.len() - object - faint;
    (cloud, object, faint, opaque_strays)
}

#[test]
fn planted_floaters_are_pruned_and_the_prop_meshes_in_one_piece() {
    let (cloud, object, faint, opaque_strays) = planted_cloud();
    let config = PruneConfig::default();
    let (keep, report) = cloud.prune_mask(&config).unwrap();
    let (pruned, _) = cloud.pruned(&config).unwrap();
    println!("{object} object, {faint} faint, {opaque_strays} opaque strays: {report:?}");
    // Every object Gaussian kept, every planted one gone (the object's come first).
    let object_kept = keep[..object].iter().filter(|k| **k).count();
    let planted_kept = keep[object..].iter().filter(|k| **k).count();
    assert_eq!((object_kept, planted_kept), (object, 0));
    assert_eq!(pruned.len(), object);
    assert_eq!(report.transparent, faint);
    assert_eq!(report.outliers, opaque_strays);

    // Mesh both without the component filter, so that every piece the field makes counts.
    let mesh_config = MeshConfig {
        resolution: 64,
        coarse_resolution: 32,
        min_component_fraction: 0.0,
        ..MeshConfig::default()
    };
    let before = mesh_cloud(&cloud, &mesh_config);
    let after = mesh_cloud(&pruned, &mesh_config);
    let pieces = |m: &ExtractedMesh| connected_components(&m.mesh).len();
    // The torus's Gaussians reach R + r + 3 sigma = 0.83 from its centre.
    let far = |m: &ExtractedMesh| triangles_beyond(&m.mesh, Vec3::ZERO, 0.85);
    println!(
        "unpruned: {} pieces, {} triangles, {} beyond 0.85, iso {:.3}; pruned: {} pieces, {} triangles, {} beyond 0.85, iso {:.3}",
        pieces(&before),
        before.mesh.triangle_count(),
        far(&before),
        before.report.iso_level,
        pieces(&after),
        after.mesh.triangle_count(),
        far(&after),
        after.report.iso_level,
    );
    assert_eq!(pieces(&after), 1, "the pruned torus is one piece");
    assert_eq!(far(&after), 0);
    assert!(
        pieces(&before) >= 6,
        "the strays mesh as pieces of their own"
    );
    assert!(far(&before) >= 500);
}

/// Triangles with every corner within `radius` of `center`.
fn triangles_within(mesh: &TriMesh, center: Vec3, radius: f32) -> usize {
    mesh.triangles()
        .filter(|t| t.iter().all(|p| p.distance(center) < radius))
        .count()
}

/// What survives pruning on a real prop (opaque clumps the outlier rule cannot tell from
/// surface) is dropped by the mesh stage when the piece is coloured like the backdrop and
/// small; a white object of the scene's size and a small piece of the prop's colour stay.
#[test]
fn small_backdrop_coloured_pieces_are_dropped_and_white_objects_stay() {
    let mut cloud = SplatCloud::default();
    solid_torus(&mut cloud);
    // A solid white ball of radius 0.3 above the torus (a lattice, as even as the torus).
    let ball = Vec3::new(0.0, 0.9, 0.0);
    for x in -5..=5 {
        for y in -5..=5 {
            for z in -5..=5 {
                let offset = Vec3::new(x as f32, y as f32, z as f32) * 0.06;
                if offset.length() <= 0.3 {
                    push(&mut cloud, ball + offset, 0.05, 0.8, [1.0; 3]);
                }
            }
        }
    }
    // Two small opaque clumps beside the torus: one white (a blob), one purple (a piece of
    // the prop the surface lost touch with).
    let (blob, chip) = (Vec3::new(1.0, 0.0, 0.0), Vec3::new(-1.0, 0.0, 0.0));
    for c in [blob, chip] {
        let color = if c == blob { [1.0; 3] } else { [0.6, 0.2, 0.7] };
        for m in 0..27 {
            let offset = Vec3::new((m % 3) as f32, ((m / 3) % 3) as f32, (m / 9) as f32) - 1.0;
            push(&mut cloud, c + offset * 0.06, 0.05, 0.9, color);
        }
    }

    let config = |color| MeshConfig {
        resolution: 96,
        coarse_resolution: 48,
        min_component_fraction: 0.0,
        backdrop_pieces: BackdropPieces {
            color,
            ..BackdropPieces::default()
        },
        ..MeshConfig::default()
    };
    let plain = mesh_cloud(&cloud, &config(None));
    let cleaned = mesh_cloud(&cloud, &config(Some([0.92; 3])));
    let pieces = |m: &ExtractedMesh| connected_components(&m.mesh).len();
    // Within 0.25 of a clump's centre, 0.45 of the ball's (its surface lies near 0.35).
    let near = |m: &ExtractedMesh, c: Vec3| {
        triangles_within(&m.mesh, c, if c == ball { 0.45 } else { 0.25 })
    };
    println!(
        "pieces {} -> {}; blob {} -> {}, chip {} -> {}, ball {} -> {}; {:?}",
        pieces(&plain),
        pieces(&cleaned),
        near(&plain, blob),
        near(&cleaned, blob),
        near(&plain, chip),
        near(&cleaned, chip),
        near(&plain, ball),
        near(&cleaned, ball),
        cleaned.report.floaters
    );
    assert_eq!(pieces(&plain), 4, "torus, ball, blob and chip mesh apart");
    assert!(near(&plain, blob) > 0 && near(&plain, chip) > 0);
    assert_eq!(near(&cleaned, blob), 0, "the white blob is dropped");
    assert!(near(&cleaned, chip) > 0, "the purple chip stays");
    assert!(near(&cleaned, ball) > 100, "the white ball stays");
    assert_eq!(
        (
            pieces(&cleaned),
            cleaned.report.floaters.backdrop_components
        ),
        (3, 1)
    );

    // Out of range is refused by name.
    let mut bad = config(Some([0.92; 3]));
    bad.backdrop_pieces.color_distance = 2.0;
    let err = extract_mesh(&cloud.fields(), None, cloud.mesh_bounds(), &bad).unwrap_err();
    assert!(
        err.to_string().contains("backdrop_pieces.color_distance"),
        "{err}"
    );
}

/// The generator's Gaussian scene prunes with `gaussians.prune` before it hands its cloud to
/// the mesh stage, and the prune can be turned off.
#[test]
fn the_gaussian_scene_meshes_the_pruned_cloud() {
    let (cloud, object, faint, opaque_strays) = planted_cloud();
    let n = cloud.len();
    let device = Default::default();
    let t2 = |v: Vec<f32>, w: usize| {
        Tensor::<NdArray, 2>::from_data(TensorData::new(v, [n, w]), &device)
    };
    let gaussians = Gaussians {
        means: t2(cloud.positions.iter().flatten().copied().collect(), 3),
        log_scales: t2(cloud.scales.iter().flatten().map(|s| s.ln()).collect(), 3),
        rotations: t2(cloud.rotations.iter().flatten().copied().collect(), 4),
        opacity_logits: t2(
            cloud
                .opacities
                .iter()
                .map(|o| (o / (1.0 - o)).ln())
                .collect(),
            1,
        ),
        sh_dc: t2(cloud.sh.iter().flatten().copied().collect(), 3),
        sh_rest: None,
    };

    let config = GaussianSceneConfig::default();
    let scene =
        GaussianScene::<Autodiff<NdArray>>::from_gaussians(&config, gaussians.clone()).unwrap();
    let (pruned, bounds, report) = scene.cloud().unwrap();
    assert_eq!((pruned.len(), report.kept), (object, object));
    assert_eq!(
        (report.transparent, report.outliers),
        (faint, opaque_strays)
    );
    // The meshing box is the pruned cloud's: the strays reach 1.6 from the centre.
    let reach = bounds.max.abs().max(bounds.min.abs()).max_element();
    assert!(reach < 1.0, "{bounds:?}");

    let off = GaussianSceneConfig {
        prune: PruneConfig {
            min_opacity: 0.0,
            nb_neighbors: 0,
            ..PruneConfig::default()
        },
        ..GaussianSceneConfig::default()
    };
    let scene = GaussianScene::<Autodiff<NdArray>>::from_gaussians(&off, gaussians).unwrap();
    let (whole, _, report) = scene.cloud().unwrap();
    assert_eq!((whole.len(), report.kept), (n, n));

    // A setting out of range is refused by its config key.
    let bad = GaussianSceneConfig {
        prune: PruneConfig {
            min_opacity: 1.5,
            ..PruneConfig::default()
        },
        ..GaussianSceneConfig::default()
    };
    let err = bad.validate().unwrap_err();
    assert_eq!(err.field, "gaussians.prune.min_opacity", "{err}");
}

// ---- The real prop: measurements and pictures (ignored: needs a generated .ply). ----

/// Reads the 3DGS `.ply` that `rewardsds generate` writes (binary little-endian floats).
fn read_splat_ply(path: &Path) -> SplatCloud {
    let bytes = std::fs::read(path).expect("reading the .ply");
    let end = b"end_header\n";
    let at = bytes
        .windows(end.len())
        .position(|w| w == end)
        .expect("a PLY header")
        + end.len();
    let header = std::str::from_utf8(&bytes[..at]).expect("an ASCII header");
    let names: Vec<&str> = header
        .lines()
        .filter_map(|l| l.strip_prefix("property float "))
        .collect();
    let column = |name: &str| names.iter().position(|n| *n == name).expect(name);
    let width = names.len();
    let values: Vec<f32> = bytes[at..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut cloud = SplatCloud::default();
    for row in values.chunks_exact(width) {
        let get = |name: &str| row[column(name)];
        cloud.positions.push([get("x"), get("y"), get("z")]);
        cloud
            .scales
            .push(std::array::from_fn(|i| get(&format!("scale_{i}")).exp()));
        let q: [f32; 4] = std::array::from_fn(|i| get(&format!("rot_{i}")));
        let norm = q.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        cloud.rotations.push(q.map(|a| a / norm));
        cloud.opacities.push(1.0 / (1.0 + (-get("opacity")).exp()));
        let dc: [f32; 3] = std::array::from_fn(|i| get(&format!("f_dc_{i}")));
        cloud
            .colors
            .push(dc.map(|d| (d * SH_C0 + 0.5).clamp(0.0, 1.0)));
        cloud.sh.push(dc.to_vec());
    }
    cloud
}

fn quantiles(values: &[f32]) -> String {
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    if v.is_empty() {
        return "-".into();
    }
    let q = |f: f32| v[((v.len() - 1) as f32 * f).round() as usize];
    format!(
        "min {:.4} p10 {:.4} p50 {:.4} p90 {:.4} max {:.4}",
        q(0.0),
        q(0.1),
        q(0.5),
        q(0.9),
        q(1.0)
    )
}

/// `views` views of `mesh` at 15 degrees of elevation, framed as the CLI frames its turntable
/// (the bounding sphere just inside the frame).
fn turntable(mesh: &TriMesh, views: usize, size: u32) -> RgbImage {
    let background = [0.85, 0.85, 0.88];
    let bounds = mesh.bounds().expect("a mesh with vertices");
    let fov: f32 = 30.0;
    let center = (bounds.min + bounds.max) / 2.0;
    let radius = ((bounds.max - bounds.min).length() / 2.0).max(1e-3);
    let distance = 1.05 * radius / (fov / 2.0).to_radians().sin();
    let images: Vec<RgbImage> = (0..views)
        .map(|i| {
            let azimuth = 360.0 * i as f32 / views as f32;
            let camera =
                Camera::orbit_around(center, azimuth, 15.0, distance, fov, size, size).unwrap();
            render_mesh(mesh, None, &camera, background, 2)
        })
        .collect();
    RgbImage::hstack(&images)
}

/// Prints the mesh's pieces, largest first: area (and its share of the largest), triangles,
/// box and mean vertex colour (the blobs are pale, the prop saturated).
fn describe_mesh(label: &str, mesh: &TriMesh) {
    let components = connected_components(mesh);
    // Pale: light and unsaturated, as the blobs are; the prop's own colours are saturated.
    let (mut pale, mut total) = (0.0f32, 0.0f32);
    for (t, [a, b, c]) in mesh.indices.chunks_exact(3).zip(mesh.triangles()) {
        let area = 0.5 * (b - a).cross(c - a).length();
        let colour = t
            .iter()
            .filter_map(|&i| mesh.colors.get(i as usize))
            .fold(Vec3::ZERO, |s, c| s + Vec3::from(*c))
            / 3.0;
        total += area;
        if colour.min_element() > 0.5 && colour.max_element() - colour.min_element() < 0.2 {
            pale += area;
        }
    }
    println!(
        "{label}: {} triangles, {} pieces, area {total:.3} of which pale {:.0}%",
        mesh.triangle_count(),
        components.len(),
        100.0 * pale / total.max(1e-12)
    );
    let largest = components.areas.first().copied().unwrap_or(1.0);
    for (c, area) in components.areas.iter().enumerate().take(8) {
        let vertices: Vec<usize> = mesh
            .indices
            .chunks_exact(3)
            .enumerate()
            .filter(|(t, _)| components.of_triangle[*t] == c as u32)
            .flat_map(|(_, t)| t.iter().map(|&i| i as usize))
            .collect();
        let points: Vec<[f32; 3]> = vertices.iter().map(|&i| mesh.positions[i]).collect();
        let b = Aabb::from_points(&points).expect("a piece has triangles");
        let colour = vertices
            .iter()
            .filter_map(|&i| mesh.colors.get(i))
            .fold(Vec3::ZERO, |a, c| a + Vec3::from(*c))
            / vertices.len().max(1) as f32;
        println!(
            "  piece {c}: area {area:.4} ({:.3} of the largest), {} triangles, centre {:.2}, size {:.2}, colour {:.2}",
            area / largest,
            vertices.len() / 3,
            (b.min + b.max) / 2.0,
            b.size(),
            colour
        );
    }
}

/// The mesh stage as `rewardsds generate` runs it on a Gaussian scene (the fast preset's
/// grid), optionally without the component filter and the backdrop rule.
fn fast_preset_mesh(min_component_fraction: f64, backdrop: bool) -> MeshConfig {
    MeshConfig {
        resolution: 96,
        coarse_resolution: 48,
        min_component_fraction,
        backdrop_pieces: BackdropPieces {
            // What the generator fills in: the scene's background (the fast preset's).
            color: backdrop.then_some([0.92; 3]),
            ..BackdropPieces::default()
        },
        ..MeshConfig::default()
    }
}

/// Measures the pruning on a prop `rewardsds generate --scene gaussians` made: the `.ply`
/// at `FLOATERS_PLY` (default: the prop, generated with
/// `rewardsds generate --prompt "a purple torus on top of an orange cone" --scene gaussians
/// --seed 0 --steps 250 --out /tmp/gclean/before`). When `FLOATERS_IMAGES` names a folder, the
/// before/after turntables go there (`docs/images/gaussian_cleanup_*.png` were made so).
#[test]
#[ignore = "needs a .ply from `rewardsds generate --scene gaussians`"]
fn measure_real_prop() {
    let path = std::env::var("FLOATERS_PLY").unwrap_or_else(|_| {
        "/tmp/gclean/before/a-purple-torus-on-top-of-an-orange-cone.ply".into()
    });
    let cloud = read_splat_ply(Path::new(&path));
    println!("{} Gaussians from {path}", cloud.len());
    println!("opacity: {}", quantiles(&cloud.opacities));
    for t in [0.005f32, 0.05, 0.1, 0.2, 0.3] {
        println!(
            "  opacity < {t}: {}",
            cloud.opacities.iter().filter(|&&o| o < t).count()
        );
    }

    let (pruned, report) = cloud.pruned(&PruneConfig::default()).unwrap();
    println!("{:?}: {report:?}", PruneConfig::default());
    for (label, c) in [("unpruned", &cloud), ("pruned", &pruned)] {
        let all = mesh_cloud(c, &fast_preset_mesh(0.0, false));
        println!(
            "{label}: iso-level {:.3}, sampled {:?}",
            all.report.iso_level, all.report.sampled_bounds
        );
        describe_mesh(&format!("{label}, no component filter"), &all.mesh);
        let filtered = mesh_cloud(c, &fast_preset_mesh(0.05, true));
        println!("  {:?}", filtered.report.floaters);
        describe_mesh(
            &format!("{label}, component filter 0.05 and backdrop pieces"),
            &filtered.mesh,
        );
    }

    if let Ok(dir) = std::env::var("FLOATERS_IMAGES") {
        let dir = Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        // Before: the mesh stage as it was (component filter only); after: pruned, and the
        // backdrop-coloured pieces dropped.
        for (name, c, backdrop) in [("before", &cloud, false), ("after", &pruned, true)] {
            let mesh = mesh_cloud(c, &fast_preset_mesh(0.05, backdrop)).mesh;
            turntable(&mesh, 4, 256)
                .save_png(dir.join(format!("gaussian_cleanup_{name}.png")))
                .unwrap();
        }
    }
}
