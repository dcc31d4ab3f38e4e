//! UV atlas and texture bake (issue 41): charts that never overlap, non-degenerate UVs, and a
//! baked texture that reproduces the coloured field it came from better than vertex colours.

use glam::{Vec2, Vec3};
use rewardsds_engine::mesh::{
    Aabb, BakeConfig, ColorMode, IsoLevel, MeshConfig, Pointwise, SimplifyConfig, TriMesh,
    bake_texture, extract_mesh, rasterize, render_mesh, render_shaded, srgb_to_linear,
    texels_in_triangle, unwrap_uvs,
};
use rewardsds_engine::scene::Camera;

/// A torus (genus one: no single chart can hold it) beside a ball, as a density that is 1/2 on
/// the surface.
fn torus_and_ball(p: Vec3) -> f32 {
    let ring = Vec2::new(Vec2::new(p.x + 0.3, p.z).length() - 0.4, p.y).length() / 0.15;
    let ball = (p - Vec3::new(0.55, 0.0, 0.0)).length() / 0.3;
    let d = |r: f32| 1.0 / (1.0 + r.powi(4));
    d(ring).max(d(ball))
}

/// sRGB albedo with detail finer than the mesh's vertex spacing.
fn striped(p: Vec3) -> [f32; 3] {
    [
        0.5 + 0.4 * (18.0 * p.y).sin(),
        0.5 + 0.4 * (14.0 * p.x).cos(),
        0.4 + 0.3 * (11.0 * p.z).sin(),
    ]
}

/// The prop, simplified to `triangles`, with vertex colours.
fn prop(triangles: usize) -> TriMesh {
    let config = MeshConfig {
        resolution: 64,
        iso_level: IsoLevel::Value(0.5),
        simplify: SimplifyConfig {
            target_triangles: triangles,
            ..Default::default()
        },
        ..Default::default()
    };
    let albedo = Pointwise(striped);
    extract_mesh(
        &Pointwise(torus_and_ball),
        Some(&albedo),
        Aabb::cube(1.0),
        &config,
    )
    .unwrap()
    .mesh
}

#[test]
fn atlas_charts_never_overlap_and_every_triangle_has_uv_area() {
    let mesh = prop(4000);
    let size = 1024;
    let atlas = unwrap_uvs(
        &mesh,
        &BakeConfig {
            texture_size: size,
            ..Default::default()
        },
    )
    .unwrap();
    let out = &atlas.mesh;
    assert_eq!(out.triangle_count(), mesh.triangle_count());
    println!(
        "{} triangles: {} charts, {} -> {} vertices, {:.0}% of the texels",
        mesh.triangle_count(),
        atlas.charts,
        mesh.vertex_count(),
        out.vertex_count(),
        100.0 * atlas.utilization
    );
    // The torus needs its seams: more than one chart, and split vertices.
    assert!(atlas.charts > 1 && out.vertex_count() > mesh.vertex_count());
    assert!(atlas.utilization > 0.3, "{}", atlas.utilization);

    // Every triangle keeps its corners' positions and has a UV triangle of positive area
    // (the unwrapper keeps the input's winding).
    let mut smallest = f32::INFINITY;
    for (t, (a, b)) in out
        .indices
        .chunks_exact(3)
        .zip(mesh.indices.chunks_exact(3))
        .enumerate()
    {
        for k in 0..3 {
            assert_eq!(out.positions[a[k] as usize], mesh.positions[b[k] as usize]);
        }
        let [p, q, r] = [0, 1, 2].map(|k| Vec2::from(out.uvs[a[k] as usize]) * size as f32);
        let area = 0.5 * (q - p).perp_dot(r - p);
        assert!(area > 0.0, "triangle {t}: UV area {area}");
        smallest = smallest.min(area);
        assert!(atlas.chart_of_triangle[t] < atlas.charts as u32);
    }
    println!("smallest UV triangle: {smallest:.3} texels^2");

    // No texel centre lies in triangles of two different charts.
    let mut owner = vec![u32::MAX; (size * size) as usize];
    let mut shared = 0;
    for (t, tri) in out.indices.chunks_exact(3).enumerate() {
        let uv = [0, 1, 2].map(|k| Vec2::from(out.uvs[tri[k] as usize]) * size as f32);
        let chart = atlas.chart_of_triangle[t];
        texels_in_triangle(uv, |x, y, _| {
            let slot = &mut owner[(y * size + x) as usize];
            if *slot != u32::MAX && *slot != chart {
                shared += 1;
            }
            *slot = chart;
        });
    }
    assert_eq!(shared, 0, "texels claimed by two charts");
}

/// PSNR (dB) of `image` against `reference` over the pixels the mesh covers.
fn psnr_over(mask: &[bool], image: &[f32], reference: &[f32]) -> f64 {
    let (mut se, mut n) = (0.0f64, 0usize);
    for (i, &m) in mask.iter().enumerate() {
        if m {
            for c in 0..3 {
                se += ((image[3 * i + c] - reference[3 * i + c]) as f64).powi(2);
            }
            n += 3;
        }
    }
    10.0 * (1.0 / (se / n as f64)).log10()
}

#[test]
fn a_baked_texture_reproduces_the_field_better_than_vertex_colours() {
    let mesh = prop(2000);
    let albedo = Pointwise(striped);
    let baked = bake_texture(
        &mesh,
        &albedo,
        &BakeConfig {
            texture_size: 512,
            ..Default::default()
        },
        4096,
    )
    .unwrap();
    assert!(baked.mesh.colors.is_empty());
    let (mut textured, mut painted) = (Vec::new(), Vec::new());
    for azimuth in [0.0, 90.0, 180.0, 270.0] {
        let camera = Camera::orbit(azimuth, 20.0, 3.2, 40.0, 128, 128).unwrap();
        let mask: Vec<bool> = rasterize(&mesh, &camera)
            .triangle
            .iter()
            .map(|&t| t != rewardsds_engine::mesh::Fragments::BACKGROUND)
            .collect();
        // The field's own colour at every pixel's surface point, shaded the same way.
        let truth = render_shaded(&mesh, &camera, [0.0; 3], 1, |_, _, p| {
            Vec3::from(striped(p).map(srgb_to_linear))
        });
        let texture = render_mesh(&baked.mesh, Some(&baked.texture), &camera, [0.0; 3], 1);
        let vertex = render_mesh(&mesh, None, &camera, [0.0; 3], 1);
        textured.push(psnr_over(&mask, &texture.data, &truth.data));
        painted.push(psnr_over(&mask, &vertex.data, &truth.data));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "PSNR vs the field, 4 views at 128 px: texture {textured:.1?} (mean {:.1}), vertex \
         colours {painted:.1?} (mean {:.1}); {} charts, {:.0}% of 512^2",
        mean(&textured),
        mean(&painted),
        baked.charts,
        100.0 * baked.utilization
    );
    // Measured: 59.5-60.2 dB (the u8 quantisation's floor is about 59), vertex colours 30-32.
    assert!(mean(&textured) > 45.0, "texture PSNR {textured:?}");
    assert!(mean(&textured) > mean(&painted) + 10.0);
    // A texture that is too small for the charts, or not a power of two, is refused by name.
    for size in [100, 16] {
        let config = MeshConfig {
            color: ColorMode::Texture,
            bake: BakeConfig {
                texture_size: size,
                ..Default::default()
            },
            ..Default::default()
        };
        let err = extract_mesh(
            &Pointwise(torus_and_ball),
            Some(&albedo),
            Aabb::cube(1.0),
            &config,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bake.texture_size"), "{err}");
    }
}
