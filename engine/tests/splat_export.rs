//! The Gaussians' export hooks: the density field mesh extraction samples (against a brute
//! force sum, and through the real mesh stage to a surface where the Gaussians are), and the
//! 3DGS `.ply` layout.

use burn::backend::NdArray;
use glam::Vec3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rewardsds_engine::export::splat_ply_bytes;
use rewardsds_engine::mesh::{Aabb, AlbedoField, DensityField, MeshConfig, extract_mesh};
use rewardsds_engine::scene::gaussians::{Gaussians, GaussiansConfig};

type B = NdArray<f32>;

/// Gaussians covering a sphere shell of radius 0.5, red on top and blue below.
fn shell(n: usize) -> Gaussians<B> {
    let mut rng = StdRng::seed_from_u64(2);
    let mut points = Vec::new();
    let mut colors = Vec::new();
    while points.len() < n {
        let p = Vec3::new(
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        );
        if p.length() < 1e-3 || p.length() > 1.0 {
            continue;
        }
        let p = p.normalize() * 0.5;
        points.push(p.to_array());
        colors.push(if p.y > 0.0 {
            [1.0, 0.0, 0.0]
        } else {
            [0.0, 0.0, 1.0]
        });
    }
    GaussiansConfig::new()
        .with_opacity(0.9)
        .from_points(&points, &colors, 0.04, &Default::default())
        .unwrap()
}

#[test]
fn density_field_matches_brute_force_and_meshes_to_the_shell() {
    let cloud = shell(1500).to_cloud();
    let fields = cloud.fields();
    let mut rng = StdRng::seed_from_u64(9);
    let points: Vec<[f32; 3]> = (0..300)
        .map(|_| std::array::from_fn(|_| rng.random_range(-0.7..0.7f32)))
        .collect();
    let fast = fields.density(&points);
    // Brute force over every Gaussian (isotropic here: the precision is 1 / s^2).
    for (p, f) in points.iter().zip(&fast) {
        let mut sum = 0.0;
        for i in 0..cloud.len() {
            let d2 = (Vec3::from(*p) - Vec3::from(cloud.positions[i])).length_squared();
            let power = -0.5 * d2 / (cloud.scales[i][0] * cloud.scales[i][0]);
            if power >= -4.5 {
                sum += cloud.opacities[i] * power.exp();
            }
        }
        assert!(
            (sum - f).abs() <= 1e-4 * sum.max(1.0),
            "at {p:?}: grid {f}, brute force {sum}"
        );
    }
    assert!(
        fields.density(&[[0.0, 0.0, 0.0]])[0] < 1e-6,
        "the shell's centre is empty"
    );

    let extracted = extract_mesh(
        &fields,
        Some(&fields as &dyn AlbedoField),
        Aabb::cube(0.8),
        &MeshConfig {
            resolution: 64,
            ..MeshConfig::default()
        },
    )
    .unwrap();
    let mesh = &extracted.mesh;
    assert!(
        mesh.triangle_count() > 100,
        "{} triangles",
        mesh.triangle_count()
    );
    // Every vertex lies near the shell (inside or outside surface of its thickness).
    let worst = mesh
        .positions
        .iter()
        .map(|p| (Vec3::from(*p).length() - 0.5).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 0.12, "a vertex is {worst} from the shell");
    let top = fields.albedo(&[[0.0, 0.5, 0.0]])[0];
    assert!(top[0] > 0.9 && top[2] < 0.1, "top colour {top:?}");
}

#[test]
fn ply_has_the_3dgs_layout() {
    let g: Gaussians<B> = GaussiansConfig::new()
        .with_num_points(7)
        .with_sh_degree(1)
        .init(0, &Default::default())
        .unwrap();
    let cloud = g.to_cloud();
    let bytes = splat_ply_bytes(&cloud);
    let end = b"end_header\n";
    let split = bytes.windows(end.len()).position(|w| w == end).unwrap() + end.len();
    let header = std::str::from_utf8(&bytes[..split]).unwrap();
    assert!(header.starts_with("ply\nformat binary_little_endian 1.0\nelement vertex 7\n"));
    let names: Vec<&str> = header
        .lines()
        .filter_map(|l| l.strip_prefix("property float "))
        .collect();
    // 3 position, 3 normal, 3 dc, 9 rest (degree 1), opacity, 3 scale, 4 rotation.
    assert_eq!(names.len(), 26);
    assert_eq!(
        &names[..9],
        &[
            "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"
        ]
    );
    assert_eq!(names[9], "f_rest_0");
    assert_eq!(
        &names[18..],
        &[
            "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"
        ]
    );
    assert_eq!(bytes.len() - split, 7 * 26 * 4);
    let float = |row: usize, col: usize| {
        let at = split + (row * 26 + col) * 4;
        f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    };
    for i in 0..7 {
        assert_eq!(float(i, 0), cloud.positions[i][0]);
        let logit = float(i, 18);
        assert!((1.0 / (1.0 + (-logit).exp()) - cloud.opacities[i]).abs() < 1e-5);
        assert!((float(i, 19).exp() - cloud.scales[i][0]).abs() < 1e-6);
        assert_eq!(float(i, 22), 1.0); // identity rotation, w first
    }
}
