//! Scenes of coloured SDF primitives, rendered by sphere tracing with Lambert + ambient shading
//! under a light fixed in the world (so every view of a scene is 3D-consistent, which a NeRF
//! can reproduce exactly).

use glam::Vec3;
use serde::{Deserialize, Serialize};

use super::sdf::Shape;
use crate::rgb_image::RgbImage;
use crate::scene::camera::Camera;

/// The colours of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Color {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
    /// Orange.
    Orange,
    /// Purple.
    Purple,
    /// White.
    White,
    /// Black.
    Black,
}

impl Color {
    /// All colours.
    pub const ALL: [Color; 8] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Orange,
        Color::Purple,
        Color::White,
        Color::Black,
    ];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Orange => "orange",
            Color::Purple => "purple",
            Color::White => "white",
            Color::Black => "black",
        }
    }

    /// Albedo, RGB in [0, 1].
    pub fn albedo(self) -> Vec3 {
        match self {
            Color::Red => Vec3::new(0.85, 0.12, 0.10),
            Color::Green => Vec3::new(0.15, 0.65, 0.18),
            Color::Blue => Vec3::new(0.12, 0.25, 0.85),
            Color::Yellow => Vec3::new(0.95, 0.85, 0.15),
            Color::Orange => Vec3::new(0.95, 0.50, 0.08),
            Color::Purple => Vec3::new(0.55, 0.18, 0.72),
            Color::White => Vec3::new(0.95, 0.95, 0.95),
            Color::Black => Vec3::new(0.08, 0.08, 0.08),
        }
    }
}

/// One primitive placed in the world.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Which primitive.
    pub shape: Shape,
    /// Its colour.
    pub color: Color,
    /// Centre, world space.
    pub center: Vec3,
    /// Overall size (a sphere's diameter).
    pub size: f32,
}

/// Light and backdrop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lighting {
    /// Direction towards the light, world space.
    pub light_direction: Vec3,
    /// Ambient share of the shading, [0, 1].
    pub ambient: f32,
    /// Background colour.
    pub background: [f32; 3],
}

impl Default for Lighting {
    fn default() -> Self {
        Self {
            light_direction: Vec3::new(0.45, 0.8, 0.4).normalize(),
            ambient: 0.4,
            background: [0.92, 0.92, 0.92],
        }
    }
}

/// A scene of primitives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SdfScene {
    /// The primitives.
    pub objects: Vec<Object>,
    /// Light and backdrop.
    pub lighting: Lighting,
}

const MAX_STEPS: usize = 128;
const FAR: f32 = 100.0;

impl SdfScene {
    /// A scene of these objects under the default lighting.
    pub fn new(objects: Vec<Object>) -> Self {
        Self {
            objects,
            lighting: Lighting::default(),
        }
    }

    /// The scene the fitting tests and `fit_scene` use: a red cube beside a blue sphere, a
    /// yellow cone on the cube.
    pub fn example() -> Self {
        let object = |shape, color, center: [f32; 3], size| Object {
            shape,
            color,
            center: Vec3::from_array(center),
            size,
        };
        Self::new(vec![
            object(Shape::Cube, Color::Red, [-0.28, -0.15, 0.0], 0.5),
            object(Shape::Sphere, Color::Blue, [0.3, -0.2, 0.05], 0.42),
            object(Shape::Cone, Color::Yellow, [-0.28, 0.3, 0.0], 0.5),
        ])
    }

    /// Signed distance to the nearest surface and the index of that object.
    pub fn distance(&self, p: Vec3) -> (f32, usize) {
        self.objects
            .iter()
            .enumerate()
            .map(|(i, o)| (o.shape.distance(p - o.center, o.size), i))
            .fold((f32::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a })
    }

    fn normal(&self, p: Vec3) -> Vec3 {
        let e = 1e-3;
        let d = |q: Vec3| self.distance(q).0;
        Vec3::new(
            d(p + Vec3::X * e) - d(p - Vec3::X * e),
            d(p + Vec3::Y * e) - d(p - Vec3::Y * e),
            d(p + Vec3::Z * e) - d(p - Vec3::Z * e),
        )
        .normalize_or_zero()
    }

    /// Colour seen along a ray (unit direction).
    pub fn shade_ray(&self, origin: Vec3, direction: Vec3) -> Vec3 {
        let mut t = 0.0;
        for _ in 0..MAX_STEPS {
            let p = origin + direction * t;
            let (d, i) = self.distance(p);
            if d < 1e-4 * (1.0 + t) {
                let n = self.normal(p);
                let l = &self.lighting;
                let diffuse = n.dot(l.light_direction).max(0.0);
                return self.objects[i].color.albedo() * (l.ambient + (1.0 - l.ambient) * diffuse);
            }
            t += d;
            if t > FAR {
                break;
            }
        }
        Vec3::from_array(self.lighting.background)
    }

    /// Renders one camera (one ray per pixel centre, like the NeRF renderer), using all cores.
    pub fn render(&self, camera: &Camera) -> RgbImage {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.render_with_threads(camera, threads)
    }

    /// [`render`](Self::render) on at most `threads` threads (1 = on the caller's thread, for
    /// callers that parallelise over many images instead).
    pub fn render_with_threads(&self, camera: &Camera, threads: usize) -> RgbImage {
        let (w, h) = (camera.width as usize, camera.height as usize);
        let mut data = vec![0.0f32; 3 * w * h];
        let shade_rows = |first_row: usize, chunk: &mut [f32]| {
            for (r, row) in chunk.chunks_mut(3 * w).enumerate() {
                let y = first_row + r;
                for x in 0..w {
                    let d = camera.ray_direction(x as f32 + 0.5, y as f32 + 0.5);
                    let c = self.shade_ray(camera.position, d);
                    row[3 * x..3 * x + 3].copy_from_slice(&c.to_array());
                }
            }
        };
        let threads = threads.clamp(1, h.max(1));
        if threads == 1 {
            shade_rows(0, &mut data);
        } else {
            let rows_per = h.div_ceil(threads);
            std::thread::scope(|scope| {
                for (chunk_index, chunk) in data.chunks_mut(3 * w * rows_per).enumerate() {
                    let shade_rows = &shade_rows;
                    scope.spawn(move || shade_rows(chunk_index * rows_per, chunk));
                }
            });
        }
        RgbImage {
            width: camera.width,
            height: camera.height,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_object_over_background() {
        let scene = SdfScene::new(vec![Object {
            shape: Shape::Sphere,
            color: Color::Red,
            center: Vec3::ZERO,
            size: 1.0,
        }]);
        let camera = Camera::orbit(0.0, 0.0, 3.0, 40.0, 16, 16).unwrap();
        let image = scene.render(&camera);
        let centre = image.pixel(8, 8);
        assert!(
            centre[0] > 0.3 && centre[1] < 0.2 && centre[2] < 0.2,
            "{centre:?}"
        );
        assert_eq!(image.pixel(0, 0), [0.92, 0.92, 0.92]);
        // Lit from above-front: the top of the sphere is brighter than its bottom.
        assert!(image.pixel(8, 5)[0] > image.pixel(8, 11)[0]);
    }
}
