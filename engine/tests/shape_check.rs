//! The CLIP-free shape check on meshes of true Tiny World scenes: every object's shape is
//! found from its colour, whatever the turn of the scene; a binding swap fails both objects;
//! a missing colour and unusable input are named.

use glam::{Quat, Vec3};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rewardsds_engine::mesh::{
    Aabb, DensityGrid, Pointwise, TriMesh, extract_surface, srgb_to_linear,
};
use rewardsds_engine::procedural::{Color, Shape};
use rewardsds_engine::tiny_world::Item;
use rewardsds_engine::tiny_world::captions::Composition;
use rewardsds_engine::tiny_world::dataset::layout;
use rewardsds_engine::tiny_world::shape_check::{ShapeCheckError, check_shapes};

/// The true scene of `composition` (layout seed `seed`) meshed from its SDF, turned by `yaw`
/// about +Y, each vertex coloured by its object's albedo under Lambert + ambient shading, as
/// the world's renders show it (linear RGB, as exported).
fn true_mesh(composition: &Composition, seed: u64, yaw: f32) -> TriMesh {
    let scene = layout(composition, &mut StdRng::seed_from_u64(seed));
    let field = Pointwise(|p: Vec3| -scene.distance(p).0);
    let grid = DensityGrid::sample(&field, Aabb::cube(0.9), 72, 4096).unwrap();
    let mut mesh = extract_surface(&grid, 0.0).unwrap();
    mesh.compute_smooth_normals();
    let light = scene.lighting.light_direction;
    mesh.colors = mesh
        .positions
        .iter()
        .zip(&mesh.normals)
        .map(|(p, n)| {
            let object = scene.objects[scene.distance(Vec3::from(*p)).1];
            let shade = 0.4 + 0.6 * Vec3::from(*n).dot(light).max(0.0);
            (object.color.albedo() * shade)
                .to_array()
                .map(srgb_to_linear)
        })
        .collect();
    let turn = Quat::from_rotation_y(yaw);
    for p in &mut mesh.positions {
        *p = (turn * Vec3::from(*p)).to_array();
    }
    mesh
}

fn item(color: Color, shape: Shape) -> Item {
    Item { color, shape }
}

#[test]
fn true_scenes_have_the_shapes_their_captions_name() {
    // Every shape beside and on top of every other, colours cycling through the world's.
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (i, &a) in Shape::ALL.iter().enumerate() {
        for (j, &b) in Shape::ALL.iter().enumerate() {
            if a == b {
                continue;
            }
            let ca = Color::ALL[(i + j) % 8];
            let cb = Color::ALL[(i + 2 * j + 3) % 8];
            if ca == cb {
                continue;
            }
            let pair = if (i + j) % 2 == 0 {
                Composition::And(item(ca, a), item(cb, b))
            } else {
                Composition::OnTopOf(item(ca, a), item(cb, b))
            };
            let yaw = 0.3 * (i * 5 + j) as f32;
            let check = check_shapes(&true_mesh(&pair, (i * 5 + j) as u64, yaw), &pair).unwrap();
            checked += 1;
            println!("{pair} (yaw {yaw:.1}): {check}");
            if check.correct() != 2 {
                wrong.push(format!("{pair}: {check}"));
            }
        }
    }
    assert!(checked >= 15, "only {checked} pairs checked");
    assert!(
        wrong.is_empty(),
        "misread true scenes:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_binding_swap_fails_both_objects_and_a_missing_colour_is_named() {
    let truth = Composition::And(
        item(Color::Red, Shape::Cube),
        item(Color::Blue, Shape::Sphere),
    );
    let mesh = true_mesh(&truth, 0, 0.5);
    let right = check_shapes(&mesh, &truth).unwrap();
    assert_eq!(right.correct(), 2);

    let swap = truth.binding_swap().unwrap();
    let check = check_shapes(&mesh, &swap).unwrap();
    assert_eq!(check.correct(), 0, "{check}");
    // The swap's blue cube is the true blue sphere, its red sphere the true red cube.
    assert_eq!(check.objects[0].shape(), Some(Shape::Sphere), "{check}");
    assert_eq!(check.objects[1].shape(), Some(Shape::Cube), "{check}");
    // The asked-for shapes fit the true scene far worse than the true ones.
    for (swapped, true_one) in check.objects.iter().zip(&right.objects) {
        let (bad, good) = (
            swapped.asked_error().unwrap(),
            true_one.asked_error().unwrap(),
        );
        assert!(bad > 5.0 * good && bad > 0.01, "{bad} vs {good}: {check}");
    }

    let with_green = Composition::And(
        item(Color::Red, Shape::Cube),
        item(Color::Green, Shape::Sphere),
    );
    let check = check_shapes(&mesh, &with_green).unwrap();
    assert_eq!(check.correct(), 1, "{check}");
    assert_eq!(check.objects[1].shape(), None, "{check}");
    assert_eq!(check.objects[1].asked_error(), None, "{check}");
    assert!(
        check.to_string().contains("a green sphere: missing"),
        "{check}"
    );
}

#[test]
fn unusable_input_is_named() {
    let truth = Composition::Single(item(Color::Red, Shape::Cube));
    let mut mesh = true_mesh(&truth, 0, 0.0);
    let same = Composition::And(
        item(Color::Red, Shape::Cube),
        item(Color::Red, Shape::Torus),
    );
    let err = check_shapes(&mesh, &same).unwrap_err();
    assert!(matches!(err, ShapeCheckError::SharedColor(..)));
    assert!(err.to_string().contains("are both red"), "{err}");

    mesh.colors.clear();
    let err = check_shapes(&mesh, &truth).unwrap_err();
    assert_eq!(err, ShapeCheckError::NoColors);
    assert!(err.to_string().contains("no vertex colours"), "{err}");
}
