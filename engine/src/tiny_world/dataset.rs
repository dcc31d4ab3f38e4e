//! Training images of Tiny World: a composition laid out as an SDF scene (with small seeded
//! jitter), rendered from a camera drawn from the same ranges the generator samples, 2x2
//! supersampled, stored as bytes.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use glam::Vec3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::captions::{Composition, Item};
use crate::guidance::prompts::ViewAngles;
use crate::procedural::{Object, SdfScene};
use crate::rgb_image::RgbImage;
use crate::scene::camera::{Camera, CameraSampler, OrbitConfig};

/// Side of the images the Tiny World models see (pixels). 32, not 64: the 2-core CPU budget
/// of generation (UNet passes per step) and training allows it, and the world needs no more.
pub const IMAGE_SIZE: u32 = 32;

/// Supersampling factor of the training renders (anti-aliased edges, like a rendered NeRF).
const SUPERSAMPLE: u32 = 2;

/// Where the objects of `composition` stand: the single object centred; "and" pairs side by
/// side on a common ground, the first named at -X (on the left seen from the front, +Z);
/// stacks centred vertically. Sizes and positions jitter a little with `rng`.
pub fn layout(composition: &Composition, rng: &mut impl Rng) -> SdfScene {
    let mut jitter = |amount: f32| 1.0 + amount * (2.0 * rng.random::<f32>() - 1.0);
    let place = |item: Item, center: Vec3, size: f32| Object {
        shape: item.shape,
        color: item.color,
        center,
        size,
    };
    let objects = match *composition {
        Composition::Single(a) => {
            let size = 0.75 * jitter(0.1);
            vec![place(a, Vec3::ZERO, size)]
        }
        Composition::And(a, b) => {
            let (sa, sb) = (0.5 * jitter(0.1), 0.5 * jitter(0.1));
            let (ha, hb) = (a.shape.height(sa), b.shape.height(sb));
            let ground = -0.5 * ha.max(hb);
            let gap = 0.3 * jitter(0.1);
            vec![
                place(a, Vec3::new(-gap, ground + 0.5 * ha, 0.0), sa),
                place(b, Vec3::new(gap, ground + 0.5 * hb, 0.0), sb),
            ]
        }
        Composition::OnTopOf(top, bottom) => {
            let (st, sb) = (0.45 * jitter(0.1), 0.5 * jitter(0.1));
            let (ht, hb) = (top.shape.height(st), bottom.shape.height(sb));
            let ground = -0.5 * (ht + hb);
            vec![
                place(bottom, Vec3::new(0.0, ground + 0.5 * hb, 0.0), sb),
                place(top, Vec3::new(0.0, ground + hb + 0.5 * ht, 0.0), st),
            ]
        }
    };
    SdfScene::new(objects)
}

/// One training example: the render of `composition` from a random camera of `orbit`,
/// deterministic for `seed`. Rendered on the caller's thread.
pub fn render_example(
    composition: &Composition,
    orbit: &OrbitConfig,
    seed: u64,
) -> (RgbImage, Camera) {
    let mut rng = StdRng::seed_from_u64(seed);
    let scene = layout(composition, &mut rng);
    let size = IMAGE_SIZE * SUPERSAMPLE;
    let camera = CameraSampler::new(orbit.clone(), rng.random())
        .and_then(|mut s| s.sample(1, size, size))
        .expect("the orbit config was validated")
        .remove(0);
    let image = scene
        .render_with_threads(&camera, 1)
        .downsample(SUPERSAMPLE);
    (image, camera)
}

/// `composition` laid out from `seed` and rendered from the `n` turntable views the generator
/// judges its results by ([`OrbitConfig::turntable`]): what a perfect 3D result would show.
pub fn render_turntable(composition: &Composition, n: usize, seed: u64) -> Vec<RgbImage> {
    let cameras = training_orbit()
        .turntable(n, IMAGE_SIZE)
        .expect("the default orbit is valid");
    render_views(composition, seed, &cameras)
}

/// `composition` laid out from `seed` (one layout for all views) and rendered from each of
/// `cameras` at its own size, supersampled as the training renders are.
pub fn render_views(composition: &Composition, seed: u64, cameras: &[Camera]) -> Vec<RgbImage> {
    let mut rng = StdRng::seed_from_u64(seed);
    let scene = layout(composition, &mut rng);
    cameras
        .iter()
        .map(|camera| {
            let fine = camera
                .with_size(camera.width * SUPERSAMPLE, camera.height * SUPERSAMPLE)
                .expect("a larger size of a valid camera is valid");
            scene.render(&fine).downsample(SUPERSAMPLE)
        })
        .collect()
}

/// The camera ranges of the training renders: the generator's defaults with random (not
/// stratified) azimuths.
pub fn training_orbit() -> OrbitConfig {
    OrbitConfig {
        stratified_azimuth: false,
        ..OrbitConfig::default()
    }
}

/// Rendered examples in memory: `[n, 3, 32, 32]` bytes, the caption index of each and the
/// azimuth/elevation it was seen from.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The captions the `caption` indices point into.
    pub compositions: Vec<Composition>,
    /// Pixels, `n * 3 * IMAGE_SIZE^2`, channel-major per image, sRGB-ish display values.
    pub pixels: Vec<u8>,
    /// Caption index of each image.
    pub caption: Vec<usize>,
    /// Camera azimuth of each image, degrees.
    pub azimuth_deg: Vec<f32>,
    /// Camera elevation of each image, degrees.
    pub elevation_deg: Vec<f32>,
}

impl Dataset {
    /// `per_caption` renders of each of `compositions`, on `threads` threads; deterministic
    /// for `seed` whatever the thread count.
    pub fn render(
        compositions: &[Composition],
        per_caption: usize,
        seed: u64,
        threads: usize,
    ) -> Dataset {
        let n = compositions.len() * per_caption;
        let plane = (3 * IMAGE_SIZE * IMAGE_SIZE) as usize;
        let mut pixels = vec![0u8; n * plane];
        let mut cameras = vec![(0.0f32, 0.0f32); n];
        let orbit = training_orbit();
        let threads = threads.clamp(1, n.max(1));
        let per_thread = n.div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for (chunk, (px, cams)) in pixels
                .chunks_mut(per_thread * plane)
                .zip(cameras.chunks_mut(per_thread))
                .enumerate()
            {
                let orbit = &orbit;
                scope.spawn(move || {
                    for (j, (out, cam)) in px.chunks_mut(plane).zip(cams.iter_mut()).enumerate() {
                        let i = chunk * per_thread + j;
                        let composition = &compositions[i % compositions.len()];
                        let example_seed = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        let (image, camera) = render_example(composition, orbit, example_seed);
                        write_chw_bytes(&image, out);
                        *cam = (camera.azimuth_deg, camera.elevation_deg);
                    }
                });
            }
        });
        Dataset {
            compositions: compositions.to_vec(),
            pixels,
            caption: (0..n).map(|i| i % compositions.len()).collect(),
            azimuth_deg: cameras.iter().map(|c| c.0).collect(),
            elevation_deg: cameras.iter().map(|c| c.1).collect(),
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.caption.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.caption.is_empty()
    }

    /// The cameras the images at `indices` were rendered from.
    pub fn views(&self, indices: &[usize]) -> Vec<ViewAngles> {
        indices
            .iter()
            .map(|&i| ViewAngles::new(self.azimuth_deg[i], self.elevation_deg[i]))
            .collect()
    }

    /// The images at `indices` as a `[b, 3, 32, 32]` tensor in `[0, 1]`.
    pub fn images<B: Backend>(&self, indices: &[usize], device: &B::Device) -> Tensor<B, 4> {
        let plane = (3 * IMAGE_SIZE * IMAGE_SIZE) as usize;
        let mut data = Vec::with_capacity(indices.len() * plane);
        for &i in indices {
            data.extend(
                self.pixels[i * plane..(i + 1) * plane]
                    .iter()
                    .map(|&b| b as f32 / 255.0),
            );
        }
        let s = IMAGE_SIZE as usize;
        Tensor::from_data(TensorData::new(data, [indices.len(), 3, s, s]), device)
    }

    /// The image at `index` on the host.
    pub fn image(&self, index: usize) -> RgbImage {
        let plane = (IMAGE_SIZE * IMAGE_SIZE) as usize;
        let bytes = &self.pixels[index * 3 * plane..(index + 1) * 3 * plane];
        let data = (0..plane)
            .flat_map(|p| (0..3).map(move |c| bytes[c * plane + p] as f32 / 255.0))
            .collect();
        RgbImage {
            width: IMAGE_SIZE,
            height: IMAGE_SIZE,
            data,
        }
    }
}

/// Caption indices as a tensor (for gathering precomputed text embeddings).
pub fn index_tensor<B: Backend>(indices: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let data: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(data, [indices.len()]), device)
}

fn write_chw_bytes(image: &RgbImage, out: &mut [u8]) {
    let plane = (image.width * image.height) as usize;
    for p in 0..plane {
        for c in 0..3 {
            out[c * plane + p] = (image.data[3 * p + c].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procedural::{Color, Shape};

    fn item(shape: Shape, color: Color) -> Item {
        Item { shape, color }
    }

    #[test]
    fn layouts_keep_objects_apart_and_in_frame() {
        let mut rng = StdRng::seed_from_u64(1);
        for composition in Composition::all().iter().step_by(37) {
            let scene = layout(composition, &mut rng);
            for o in &scene.objects {
                // Inside the half-extent 0.8 the nearest camera frames.
                assert!(
                    o.center.length() + 0.5 * o.size < 0.8,
                    "{composition}: {o:?}"
                );
            }
            if let [a, b] = scene.objects.as_slice() {
                // The other object's centre is outside each object.
                assert!(a.shape.distance(b.center - a.center, a.size) > 0.0);
                assert!(b.shape.distance(a.center - b.center, b.size) > 0.0);
            }
        }
        let stack = layout(
            &Composition::OnTopOf(
                item(Shape::Sphere, Color::Red),
                item(Shape::Cube, Color::Blue),
            ),
            &mut rng,
        );
        assert!(stack.objects[1].center.y > stack.objects[0].center.y);
        let pair = layout(
            &Composition::And(
                item(Shape::Sphere, Color::Red),
                item(Shape::Cube, Color::Blue),
            ),
            &mut rng,
        );
        assert!(pair.objects[0].center.x < pair.objects[1].center.x);
    }

    #[test]
    fn renders_are_seeded_and_show_the_colours() {
        let red_cube = Composition::Single(item(Shape::Cube, Color::Red));
        let orbit = training_orbit();
        let (a, cam) = render_example(&red_cube, &orbit, 5);
        let (b, _) = render_example(&red_cube, &orbit, 5);
        assert_eq!(a, b);
        assert_eq!((a.width, a.height), (IMAGE_SIZE, IMAGE_SIZE));
        assert!((0.0..=30.0).contains(&cam.elevation_deg));
        // The centre pixel is the red cube.
        let c = a.pixel(IMAGE_SIZE / 2, IMAGE_SIZE / 2);
        assert!(c[0] > 2.0 * c[1] && c[0] > 2.0 * c[2], "{c:?}");
    }

    #[test]
    fn dataset_is_independent_of_thread_count() {
        let compositions = &Composition::all()[..5];
        let one = Dataset::render(compositions, 2, 3, 1);
        let two = Dataset::render(compositions, 2, 3, 2);
        assert_eq!(one.pixels, two.pixels);
        assert_eq!(one.len(), 10);
        assert_eq!(one.caption[7], 2);
        let back = one.image(3);
        let (direct, _) = render_example(
            &compositions[3],
            &training_orbit(),
            3 ^ 3u64.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        assert!(
            back.data
                .iter()
                .zip(&direct.data)
                .all(|(a, b)| (a - b).abs() <= 0.5 / 255.0 + 1e-6)
        );
    }
}
