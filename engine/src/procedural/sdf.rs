//! Signed distance functions of the Tiny World primitives. Each shape is centred at its local
//! origin, upright along +Y, and fits in the unit-size box `[-size/2, size/2]^3`.

use glam::{Vec2, Vec3};
use serde::{Deserialize, Serialize};

/// The shapes of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// Axis-aligned cube.
    Cube,
    /// Sphere.
    Sphere,
    /// Upright cone, apex on top.
    Cone,
    /// Upright cylinder.
    Cylinder,
    /// Torus lying flat (ring in the XZ plane).
    Torus,
}

impl Shape {
    /// All shapes.
    pub const ALL: [Shape; 5] = [
        Shape::Cube,
        Shape::Sphere,
        Shape::Cone,
        Shape::Cylinder,
        Shape::Torus,
    ];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Cube => "cube",
            Shape::Sphere => "sphere",
            Shape::Cone => "cone",
            Shape::Cylinder => "cylinder",
            Shape::Torus => "torus",
        }
    }

    /// Height of the shape for `size`, for stacking one on another.
    pub fn height(self, size: f32) -> f32 {
        match self {
            Shape::Torus => 0.3 * size,
            Shape::Cube => 0.8 * size,
            _ => size,
        }
    }

    /// Signed distance from local point `p` to the surface of the shape of `size`.
    pub fn distance(self, p: Vec3, size: f32) -> f32 {
        let h = 0.5 * size;
        match self {
            Shape::Sphere => p.length() - h,
            Shape::Cube => {
                let q = p.abs() - Vec3::splat(0.4 * size);
                q.max(Vec3::ZERO).length() + q.max_element().min(0.0)
            }
            Shape::Cylinder => {
                let d = Vec2::new(Vec2::new(p.x, p.z).length() - 0.4 * size, p.y.abs() - h);
                d.max_element().min(0.0) + d.max(Vec2::ZERO).length()
            }
            Shape::Cone => {
                // Revolve the 2D triangle profile (radius, height) around the Y axis.
                let q = Vec2::new(Vec2::new(p.x, p.z).length(), p.y);
                triangle_distance(
                    q,
                    [
                        Vec2::new(-0.45 * size, -h),
                        Vec2::new(0.45 * size, -h),
                        Vec2::new(0.0, h),
                    ],
                )
            }
            Shape::Torus => {
                let q = Vec2::new(Vec2::new(p.x, p.z).length() - 0.35 * size, p.y);
                q.length() - 0.15 * size
            }
        }
    }
}

/// Signed distance to a 2D triangle (negative inside).
fn triangle_distance(p: Vec2, v: [Vec2; 3]) -> f32 {
    let mut best = f32::INFINITY;
    let mut inside = true;
    for i in 0..3 {
        let (a, b) = (v[i], v[(i + 1) % 3]);
        let e = b - a;
        let w = p - a;
        let t = (w.dot(e) / e.dot(e)).clamp(0.0, 1.0);
        best = best.min((w - e * t).length());
        // Counter-clockwise vertices: inside lies left of every edge.
        if e.perp_dot(w) < 0.0 {
            inside = false;
        }
    }
    if inside { -best } else { best }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surfaces_are_where_expected() {
        let s = 1.0;
        assert!((Shape::Sphere.distance(Vec3::new(0.5, 0.0, 0.0), s)).abs() < 1e-6);
        assert!((Shape::Cube.distance(Vec3::new(0.0, 0.4, 0.0), s)).abs() < 1e-6);
        assert!((Shape::Cube.distance(Vec3::new(0.6, 0.4, 0.4), s) - 0.2).abs() < 1e-6);
        assert!((Shape::Cylinder.distance(Vec3::new(0.0, 0.0, 0.4), s)).abs() < 1e-6);
        assert!((Shape::Cylinder.distance(Vec3::new(0.0, 0.7, 0.0), s) - 0.2).abs() < 1e-6);
        assert!((Shape::Torus.distance(Vec3::new(0.5, 0.0, 0.0), s)).abs() < 1e-6);
        assert!(Shape::Torus.distance(Vec3::ZERO, s) > 0.1); // the hole
        // Cone: apex on top, base at the bottom, inside near the bottom centre.
        assert!(Shape::Cone.distance(Vec3::new(0.0, 0.5, 0.0), s).abs() < 1e-6);
        assert!(Shape::Cone.distance(Vec3::new(0.0, -0.4, 0.0), s) < -0.05);
        assert!(Shape::Cone.distance(Vec3::new(0.3, 0.3, 0.0), s) > 0.0);
        for shape in Shape::ALL {
            assert!(shape.distance(Vec3::new(0.0, 0.0, 2.0), s) > 1.0);
        }
    }
}
