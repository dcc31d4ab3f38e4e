//! Mesh extraction and glTF export on fields with known answers: analytic spheres and blobs,
//! and a small NeRF. Every .glb written is checked by the Khronos glTF validator (npm
//! `gltf-validator`, run through node) when it is installed; with `CI` set it must be.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use glam::Vec3;
use rewardsds_engine::burn;
use rewardsds_engine::export::{
    ExportConfig, ExportError, Validation, ValidatorError, glb_bytes, write_atomic, write_glb,
};
use rewardsds_engine::mesh::{
    Aabb, BakeConfig, ColorMode, DensityGrid, IsoLevel, MeshConfig, MeshError, NerfField,
    Pointwise, SimplifyConfig, TriMesh, connected_components, extract_mesh, extract_surface,
    remove_floaters,
};
use rewardsds_engine::scene::nerf::{HashGridConfig, NerfConfig};

/// A smooth, non-linear density that crosses 0.5 exactly on the sphere of radius `r`.
fn sphere_density(center: Vec3, r: f32) -> impl Fn(Vec3) -> f32 {
    move |p| 1.0 / (1.0 + ((p - center).length() / r).powi(4))
}

fn sphere_config(resolution: u32) -> MeshConfig {
    MeshConfig {
        resolution,
        iso_level: IsoLevel::Value(0.5),
        simplify: SimplifyConfig {
            // Keep every triangle: the geometry checks are about extraction.
            target_triangles: usize::MAX / 4,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rewardsds-mesh-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Khronos validator's report on `path`; `None` (with a note) when node or the
/// `gltf-validator` package is missing and `CI` is unset.
fn khronos_validate(path: &Path) -> Option<Validation> {
    match rewardsds_engine::export::khronos_validate(path) {
        Ok(v) => Some(v),
        Err(ValidatorError::Missing(why)) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI requires the Khronos glTF validator: {why}"
            );
            eprintln!("note: skipping the Khronos glTF validator: {why}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Validates `path` (zero errors) and reads it back with the `gltf` crate: the counts and the
/// attributes must match `mesh`. Returns the positions read back.
fn check_glb(path: &Path, mesh: &TriMesh) -> Vec<[f32; 3]> {
    if let Some(v) = khronos_validate(path) {
        println!(
            "khronos validator on {}: {} errors, {} warnings {}",
            path.file_name().unwrap().to_string_lossy(),
            v.errors,
            v.warnings,
            v.messages
        );
        assert_eq!(v.errors, 0, "validator errors: {}", v.messages);
        assert_eq!(v.warnings, 0, "validator warnings: {}", v.messages);
    }
    let bytes = std::fs::read(path).unwrap();
    let gltf = gltf::Gltf::from_slice(&bytes).unwrap();
    let blob = gltf.blob.as_deref().expect("a BIN chunk");
    let gmesh = gltf.meshes().next().expect("one mesh");
    let primitive = gmesh.primitives().next().expect("one primitive");
    let reader = primitive.reader(|_| Some(blob));
    let positions: Vec<[f32; 3]> = reader.read_positions().unwrap().collect();
    let normals: Vec<[f32; 3]> = reader.read_normals().unwrap().collect();
    let indices: Vec<u32> = reader.read_indices().unwrap().into_u32().collect();
    assert_eq!(positions.len(), mesh.vertex_count());
    assert_eq!(normals.len(), mesh.vertex_count());
    assert_eq!(indices, mesh.indices);
    match reader.read_colors(0) {
        Some(colors) => assert_eq!(colors.into_rgb_f32().count(), mesh.colors.len()),
        None => assert!(mesh.colors.is_empty()),
    }
    match reader.read_tex_coords(0) {
        Some(uvs) => assert_eq!(uvs.into_f32().collect::<Vec<_>>(), mesh.uvs),
        None => assert!(mesh.uvs.is_empty()),
    }
    let material = primitive.material().pbr_metallic_roughness();
    assert_eq!(material.metallic_factor(), 0.0);
    positions
}

#[test]
fn sphere_gives_a_closed_mesh_of_the_right_volume_on_the_sphere() {
    let r = 0.6;
    let field = Pointwise(sphere_density(Vec3::ZERO, r));
    let out = extract_mesh(&field, None, Aabb::cube(1.0), &sphere_config(64)).unwrap();
    let mesh = &out.mesh;
    let voxel = out.report.voxel;

    let edges = mesh.edge_report();
    assert!(edges.is_closed(), "{edges:?}");
    assert_eq!(connected_components(mesh).len(), 1);

    let exact = 4.0 / 3.0 * PI * (r as f64).powi(3);
    let volume_error = (mesh.volume() - exact) / exact;
    let worst = mesh
        .positions
        .iter()
        .map(|p| (Vec3::from(*p).length() - r).abs())
        .fold(0.0f32, f32::max);
    println!(
        "sphere r={r} on {:?} samples (voxel {voxel:.4}): {} triangles, volume error {:+.3}%, \
         farthest vertex {:.3} voxel from the sphere",
        out.report.grid_dims,
        mesh.triangle_count(),
        volume_error * 100.0,
        worst / voxel
    );
    assert!(volume_error.abs() < 0.02, "volume error {volume_error}");
    assert!(worst < 0.5 * voxel, "a vertex is {worst} from the sphere");

    // Normals point outward.
    for (p, n) in mesh.positions.iter().zip(&mesh.normals) {
        assert!(Vec3::from(*p).normalize().dot(Vec3::from(*n)) > 0.9);
    }

    // Simplified to a budget it stays closed and close in volume.
    let config = MeshConfig {
        simplify: SimplifyConfig {
            target_triangles: 2000,
            ..Default::default()
        },
        ..sphere_config(64)
    };
    let small = extract_mesh(&field, None, Aabb::cube(1.0), &config).unwrap();
    let simplified_error = (small.mesh.volume() - exact) / exact;
    println!(
        "simplified to {} triangles: volume error {:+.3}%, closed {}",
        small.mesh.triangle_count(),
        simplified_error * 100.0,
        small.mesh.edge_report().is_closed()
    );
    assert!(small.mesh.triangle_count() <= 2000);
    assert!(small.mesh.edge_report().is_closed());
    assert!(simplified_error.abs() < 0.03, "{simplified_error}");
}

#[test]
fn object_touching_the_box_is_capped_and_closed() {
    // A sphere larger than the sampling box: the padding closes the cut.
    let field = Pointwise(sphere_density(Vec3::ZERO, 1.5));
    let grid = DensityGrid::sample(&field, Aabb::cube(1.0), 24, 4096).unwrap();
    let mesh = extract_surface(&grid, 0.5).unwrap();
    assert!(mesh.edge_report().is_closed());
    // The cube [-1, 1]^3, up to the corners the sphere rounds off.
    let volume = mesh.volume();
    assert!(volume > 7.0 && volume <= 8.0 + 1e-3, "{volume}");
    let b = mesh.bounds().unwrap();
    assert!((b.max - Vec3::ONE).abs().max_element() < 1e-2, "{b:?}");
}

#[test]
fn two_blobs_are_two_components_and_floater_removal_keeps_the_large_one() {
    let big = sphere_density(Vec3::new(-0.35, 0.0, 0.0), 0.45);
    let small = sphere_density(Vec3::new(0.6, 0.3, 0.0), 0.15);
    let field = Pointwise(move |p: Vec3| big(p).max(small(p)));
    let grid = DensityGrid::sample(&field, Aabb::cube(1.0), 48, 1 << 14).unwrap();
    let raw = extract_surface(&grid, 0.5).unwrap();
    let components = connected_components(&raw);
    assert_eq!(components.len(), 2);
    let ratio = components.areas[1] / components.areas[0];
    assert!((ratio - (0.15f64 / 0.45).powi(2)).abs() < 0.02, "{ratio}");

    let (kept, report) = remove_floaters(&raw, 0.2);
    assert_eq!((report.components, report.removed_components), (2, 1));
    assert_eq!(connected_components(&kept).len(), 1);
    assert!(kept.edge_report().is_closed());
    let exact = 4.0 / 3.0 * PI * 0.45f64.powi(3);
    assert!((kept.volume() - exact).abs() / exact < 0.03);
    assert!(
        kept.positions.iter().all(|p| p[0] < 0.2),
        "the small blob went"
    );

    // A fraction of 0 keeps both.
    let (all, report) = remove_floaters(&raw, 0.0);
    assert_eq!(report.removed_components, 0);
    assert_eq!(all.triangle_count(), raw.triangle_count());
}

#[test]
fn glb_passes_the_validator_and_reads_back_on_the_ground() {
    let dir = scratch_dir("glb");
    let center = Vec3::new(0.2, 0.1, -0.3);
    let field = Pointwise(sphere_density(center, 0.4));
    let albedo = Pointwise(|p: Vec3| [0.5 + 0.5 * p.x, 0.25, 1.0]);
    let config = MeshConfig {
        simplify: SimplifyConfig {
            target_triangles: 3000,
            lod_triangles: vec![800],
            ..Default::default()
        },
        ..sphere_config(48)
    };
    let out = extract_mesh(&field, Some(&albedo), Aabb::cube(1.0), &config).unwrap();
    assert_eq!(out.mesh.colors.len(), out.mesh.vertex_count());
    assert_eq!(out.lods.len(), 1);
    assert!(out.lods[0].triangle_count() <= 800);

    let export = ExportConfig {
        target_size: Some(2.0),
        prompt: Some("a blue ball".into()),
        extras: serde_json::from_str(r#"{"seed": 7}"#).unwrap(),
        ..Default::default()
    };
    let path = dir.join("ball.glb");
    let report = write_glb(&out.mesh, None, &path, &export).unwrap();
    assert_eq!(report.bytes as u64, std::fs::metadata(&path).unwrap().len());
    assert_eq!(report.triangles, out.mesh.triangle_count());
    println!(
        "wrote {} bytes, {} triangles",
        report.bytes, report.triangles
    );

    let positions = check_glb(&path, &out.mesh);
    // On the ground, centred in x and z, longest side 2 m.
    let b = Aabb::from_points(&positions).unwrap();
    assert!(b.min.y.abs() < 1e-5, "{b:?}");
    assert!(
        b.center().x.abs() < 1e-5 && b.center().z.abs() < 1e-5,
        "{b:?}"
    );
    assert!((b.size().max_element() - 2.0).abs() < 1e-4, "{b:?}");

    let gltf = gltf::Gltf::open(&path).unwrap();
    let asset = &gltf.document.as_json().asset;
    assert!(asset.generator.as_deref().unwrap().starts_with("rewardsds"));
    let extras: serde_json::Value =
        serde_json::from_str(asset.extras.as_ref().unwrap().get()).unwrap();
    assert_eq!(extras["prompt"], "a blue ball");
    assert_eq!(extras["seed"], 7);

    // The LOD writes as its own file, uncoloured meshes too.
    let mut plain = out.lods[0].clone();
    plain.colors.clear();
    let lod_path = dir.join("ball_lod1.glb");
    write_glb(&plain, None, &lod_path, &ExportConfig::default()).unwrap();
    check_glb(&lod_path, &plain);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn baked_texture_holds_the_albedo_and_validates() {
    let field = Pointwise(sphere_density(Vec3::ZERO, 0.5));
    // sRGB albedo that varies over the surface.
    let albedo_at = |p: Vec3| [0.5 + 0.5 * p.x / 0.5, 0.5 + 0.5 * p.y / 0.5, 0.2];
    let albedo = Pointwise(move |p: Vec3| albedo_at(p).map(|c| c.clamp(0.0, 1.0)));
    let config = MeshConfig {
        color: ColorMode::Texture,
        bake: BakeConfig {
            texture_size: 256,
            ..Default::default()
        },
        simplify: SimplifyConfig {
            target_triangles: 1000,
            ..Default::default()
        },
        ..sphere_config(32)
    };
    let out = extract_mesh(&field, Some(&albedo), Aabb::cube(1.0), &config).unwrap();
    let texture = out.texture.as_ref().expect("a baked texture");
    let mesh = &out.mesh;
    // An atlas shares corners inside its charts: far fewer vertices than corners.
    assert!(mesh.vertex_count() < 2 * mesh.triangle_count());
    assert_eq!(mesh.uvs.len(), mesh.vertex_count());
    assert!(mesh.colors.is_empty());
    // Each corner's texel holds (about) the albedo at that corner: the UVs map the texture.
    let mut worst = 0.0f32;
    for (uv, p) in mesh.uvs.iter().zip(&mesh.positions) {
        let (x, y) = ((uv[0] * 256.0) as u32, (uv[1] * 256.0) as u32);
        let texel = texture.get_pixel(x, y);
        let want = albedo_at(Vec3::from(*p));
        for c in 0..2 {
            worst = worst.max((texel[c] as f32 / 255.0 - want[c].clamp(0.0, 1.0)).abs());
        }
    }
    assert!(worst < 0.15, "texel vs albedo: {worst}");

    let dir = scratch_dir("texture");
    let path = dir.join("textured.glb");
    write_glb(mesh, Some(texture), &path, &ExportConfig::default()).unwrap();
    check_glb(&path, mesh);
    let bytes = std::fs::read(&path).unwrap();
    let gltf = gltf::Gltf::from_slice(&bytes).unwrap();
    let image = gltf.images().next().expect("an embedded image");
    let gltf::image::Source::View { view, mime_type } = image.source() else {
        panic!("the image is not in the binary chunk")
    };
    assert_eq!(mime_type, "image/png");
    let blob = gltf.blob.as_deref().unwrap();
    let png = &blob[view.offset()..view.offset() + view.length()];
    assert_eq!(&image::load_from_memory(png).unwrap().to_rgb8(), texture);
    let material = gltf.materials().next().unwrap();
    assert!(
        material
            .pbr_metallic_roughness()
            .base_color_texture()
            .is_some()
    );
    // A texture without UVs is refused, naming the problem.
    let mut no_uvs = mesh.clone();
    no_uvs.uvs.clear();
    let err = glb_bytes(&no_uvs, Some(texture), &ExportConfig::default()).unwrap_err();
    assert!(err.to_string().contains("UV"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn large_mesh_uses_32_bit_indices_and_validates() {
    // 17,000 separate tetrahedra: 68,000 vertices, more than 16-bit indices can address.
    let mut mesh = TriMesh::default();
    for i in 0..17_000u32 {
        let o = Vec3::new((i % 30) as f32, ((i / 30) % 30) as f32, (i / 900) as f32) * 0.1;
        let base = mesh.positions.len() as u32;
        for c in [Vec3::ZERO, Vec3::X, Vec3::Y, Vec3::Z] {
            mesh.positions.push((o + c * 0.05).to_array());
        }
        for t in [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]] {
            mesh.indices.extend(t.map(|k| base + k));
        }
    }
    assert!(mesh.edge_report().is_closed());
    let dir = scratch_dir("u32");
    let path = dir.join("many.glb");
    write_glb(&mesh, None, &path, &ExportConfig::default()).unwrap();
    let gltf = gltf::Gltf::open(&path).unwrap();
    let indices = gltf
        .meshes()
        .next()
        .unwrap()
        .primitives()
        .next()
        .unwrap()
        .indices()
        .unwrap();
    assert_eq!(indices.data_type(), gltf::accessor::DataType::U32);
    check_glb(&path, &mesh);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn auto_level_finds_a_closed_surface_inside_its_box() {
    // A cone of density: no obvious level, threestudio's statistics choose one.
    let field = Pointwise(|p: Vec3| 2.0 * (1.0 - p.length() / 0.7).max(0.0));
    let config = MeshConfig {
        iso_level: IsoLevel::Auto,
        ..sphere_config(40)
    };
    let out = extract_mesh(&field, None, Aabb::cube(1.0), &config).unwrap();
    let sampled = out.report.sampled_bounds;
    let mesh_bounds = out.mesh.bounds().unwrap();
    println!(
        "auto level {:.3}, sampled {sampled:?}, mesh {mesh_bounds:?}",
        out.report.iso_level
    );
    // The level lies between the cone's edge and its tip, the surface is a sphere at the
    // radius where the cone has that density, and it is not cut by the sampled box.
    let level = out.report.iso_level;
    assert!(level > 0.1 && level < 1.9, "{level}");
    let radius = 0.7 * (1.0 - level / 2.0);
    assert!(
        (mesh_bounds.max.x - radius).abs() < out.report.voxel,
        "{mesh_bounds:?}"
    );
    // A cap would lie on the box's faces; the surface passes inside the last samples.
    let room = (mesh_bounds.min - sampled.min).min(sampled.max - mesh_bounds.max);
    assert!(room.min_element() > 0.05 * out.report.voxel, "{room}");
    assert!(out.mesh.edge_report().is_closed());
}

#[test]
fn empty_field_is_a_clear_error() {
    let field = Pointwise(|_: Vec3| 0.0);
    let err = extract_mesh(&field, None, Aabb::cube(1.0), &sphere_config(16)).unwrap_err();
    assert!(
        matches!(
            err,
            MeshError::EmptyField {
                iso_level: 0.5,
                max_density: 0.0
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("empty field"), "{err}");
    // Auto: a constant field has nothing above its own mean.
    let config = MeshConfig {
        iso_level: IsoLevel::Auto,
        ..sphere_config(16)
    };
    let err = extract_mesh(&field, None, Aabb::cube(1.0), &config).unwrap_err();
    assert!(matches!(err, MeshError::EmptyField { .. }), "{err}");
    // And nothing to export is not an empty file.
    let err = glb_bytes(&TriMesh::default(), None, &ExportConfig::default()).unwrap_err();
    assert!(matches!(err, ExportError::EmptyMesh), "{err}");
}

#[test]
fn unwritable_path_is_a_clear_error_and_leaves_no_file() {
    let dir = scratch_dir("unwritable");
    let mesh = extract_mesh(
        &Pointwise(sphere_density(Vec3::ZERO, 0.5)),
        None,
        Aabb::cube(1.0),
        &sphere_config(16),
    )
    .unwrap()
    .mesh;
    let listing = |d: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };

    // A folder that does not exist.
    let missing = dir.join("no-such-folder").join("a.glb");
    let err = write_glb(&mesh, None, &missing, &ExportConfig::default()).unwrap_err();
    assert!(matches!(err, ExportError::BadPath { .. }), "{err}");
    assert!(err.to_string().contains("no-such-folder"), "{err}");
    assert!(!missing.exists());

    // A "folder" that is a file (permissions cannot stop root; this can).
    std::fs::write(dir.join("file"), b"x").unwrap();
    let under_file = dir.join("file").join("a.glb");
    let err = write_glb(&mesh, None, &under_file, &ExportConfig::default()).unwrap_err();
    assert!(err.to_string().contains("not a folder"), "{err}");

    // The target is a folder: the rename over it fails after the temporary file was
    // written, and the temporary file goes.
    std::fs::create_dir(dir.join("taken.glb")).unwrap();
    let err = write_glb(
        &mesh,
        None,
        &dir.join("taken.glb"),
        &ExportConfig::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::Io {
                action: "replace",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("taken.glb"), "{err}");
    assert_eq!(listing(&dir), ["file", "taken.glb"]);
    let err = write_atomic(&dir.join(".."), b"data").unwrap_err();
    assert!(err.to_string().contains("names no file"), "{err}");

    // Replacing an existing file is whole.
    let path = dir.join("prop.glb");
    std::fs::write(&path, b"old").unwrap();
    write_glb(&mesh, None, &path, &ExportConfig::default()).unwrap();
    assert_eq!(&std::fs::read(&path).unwrap()[..4], b"glTF");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o044,
            0o044,
            "readable by all, like any asset: {mode:o}"
        );
    }
    assert_eq!(listing(&dir), ["file", "prop.glb", "taken.glb"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nerf_blob_meshes_with_the_auto_iso_level() {
    type B = NdArray<f32>;
    let device = Default::default();
    let config = NerfConfig::new().with_encoding(
        HashGridConfig::new()
            .with_n_levels(2)
            .with_log2_hashmap_size(8)
            .with_max_resolution(32),
    );
    // The training model (autodiff) is meshed through its inner backend.
    let nerf = config.init::<Autodiff<B>>(&device);
    let field = NerfField::from_autodiff(&nerf).with_chunk(5000);
    let mesh_config = MeshConfig {
        resolution: 40,
        coarse_resolution: 24,
        simplify: SimplifyConfig {
            target_triangles: 1500,
            ..Default::default()
        },
        ..Default::default()
    };
    let t = Instant::now();
    let out = extract_mesh(&field, Some(&field), field.bounds(), &mesh_config).unwrap();
    println!(
        "nerf blob: iso {:.3}, grid {:?} over {:?}, {} -> {} triangles in {:?}",
        out.report.iso_level,
        out.report.grid_dims,
        out.report.sampled_bounds,
        out.report.extracted_triangles,
        out.mesh.triangle_count(),
        t.elapsed()
    );
    assert!(out.mesh.edge_report().is_closed());
    assert!(out.mesh.triangle_count() <= 1500);
    // The Magic3D blob of std 0.5 is a ball around the centre, well inside the unit cube.
    let b = out.mesh.bounds().unwrap();
    assert!(b.center().length() < 0.1, "{b:?}");
    assert!(
        (0.2..0.9).contains(&(b.size().max_element() / 2.0)),
        "{b:?}"
    );
    assert!(
        out.mesh
            .colors
            .iter()
            .flatten()
            .all(|c| (0.0..=1.0).contains(c))
    );

    let dir = scratch_dir("nerf");
    let path = dir.join("blob.glb");
    write_glb(&out.mesh, None, &path, &ExportConfig::default()).unwrap();
    check_glb(&path, &out.mesh);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Size and time of the mesh stage at 128^3 and 256^3 on the CPU, on an analytic prop-like
/// field (a body, a head, two ears) so the numbers do not include a network's queries:
/// `cargo test -p rewardsds_engine --release --test mesh_export -- --ignored --nocapture`.
#[test]
#[ignore]
fn size_time_table() {
    let body = sphere_density(Vec3::new(0.0, -0.25, 0.0), 0.45);
    let head = sphere_density(Vec3::new(0.0, 0.4, 0.05), 0.28);
    let ear_l = sphere_density(Vec3::new(-0.2, 0.68, 0.0), 0.09);
    let ear_r = sphere_density(Vec3::new(0.2, 0.68, 0.0), 0.09);
    let field = Pointwise(move |p: Vec3| body(p).max(head(p)).max(ear_l(p)).max(ear_r(p)));
    let albedo = Pointwise(|p: Vec3| [0.6, 0.4 + 0.2 * p.y, 0.3]);
    let dir = scratch_dir("table");
    println!(
        "| grid | colour | extracted tris | final tris | .glb bytes | sample | extract | floaters | simplify | colour | write |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (resolution, color) in [
        (128, ColorMode::VertexColors),
        (256, ColorMode::VertexColors),
        (256, ColorMode::Texture),
    ] {
        let config = MeshConfig {
            resolution,
            iso_level: IsoLevel::Value(0.5),
            color,
            ..Default::default()
        };
        let out = extract_mesh(&field, Some(&albedo), Aabb::cube(1.0), &config).unwrap();
        let t = Instant::now();
        let path = dir.join(format!("prop{resolution}-{color:?}.glb"));
        let written = write_glb(
            &out.mesh,
            out.texture.as_ref(),
            &path,
            &ExportConfig::default(),
        )
        .unwrap();
        let write = t.elapsed();
        let tm = out.report.timings;
        println!(
            "| {resolution}^3 | {color:?} | {} | {} | {} | {:.2?} | {:.2?} | {:.2?} | {:.2?} | {:.2?} | {:.2?} |",
            out.report.extracted_triangles,
            out.mesh.triangle_count(),
            written.bytes,
            tm.sample,
            tm.extract,
            tm.cleanup,
            tm.simplify,
            tm.color,
            write
        );
        check_glb(&path, &out.mesh);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The mesh stage on a NeRF with threestudio's default encoding, on the CPU (ndarray): the
/// field queries dominate. `cargo test -p rewardsds_engine --release --test mesh_export
/// nerf_mesh_time -- --ignored --nocapture`.
#[test]
#[ignore]
fn nerf_mesh_time() {
    type B = NdArray<f32>;
    let nerf = NerfConfig::new().init::<B>(&Default::default());
    let field = NerfField::new(nerf);
    println!(
        "| grid (auto: coarse 64) | extracted tris | final tris | sample | extract | simplify | colour |"
    );
    println!("|---|---|---|---|---|---|---|");
    for resolution in [128, 256] {
        let config = MeshConfig {
            resolution,
            ..Default::default()
        };
        let out = extract_mesh(&field, Some(&field), field.bounds(), &config).unwrap();
        let tm = out.report.timings;
        println!(
            "| {resolution}^3 | {} | {} | {:.2?} | {:.2?} | {:.2?} | {:.2?} |",
            out.report.extracted_triangles,
            out.mesh.triangle_count(),
            tm.sample,
            tm.extract,
            tm.simplify,
            tm.color
        );
    }
}
