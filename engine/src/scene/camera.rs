//! Pinhole cameras on an orbit around the object, the way text-to-3D samples them.
//!
//! World frame: Y up, metres, the object at the origin (glTF's and Bevy's convention, so a mesh
//! exported from the scene needs no axis swap). Azimuth 0 looks at the object's front from +Z;
//! azimuth grows counter-clockwise seen from above (towards +X). Cameras follow the OpenGL
//! convention: they look down their local -Z with +Y up.

use glam::{Mat3, Mat4, Vec3};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// Why a camera could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CameraError {
    /// Width or height is zero.
    #[error("camera image size {width}x{height} is empty: width and height must be at least 1")]
    ZeroSize {
        /// Requested width in pixels.
        width: u32,
        /// Requested height in pixels.
        height: u32,
    },
    /// Field of view outside (0, 180) degrees.
    #[error("camera fov_y {0} degrees is out of range: it must lie strictly between 0 and 180")]
    FovOutOfRange(f32),
    /// A value is NaN or infinite.
    #[error("camera {0} is not finite")]
    NonFinite(&'static str),
    /// Position equals target, or the view direction is parallel to `up`.
    #[error("camera look-at is degenerate: {0}")]
    Degenerate(&'static str),
    /// A sampling range is invalid.
    #[error("orbit range {name} = [{min}, {max}] is invalid: {why}")]
    BadRange {
        /// Field name in [`OrbitConfig`].
        name: &'static str,
        /// Lower end.
        min: f32,
        /// Upper end.
        max: f32,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Pinhole intrinsics in pixels (principal point at the image centre).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intrinsics {
    /// Focal length along x, pixels.
    pub fx: f32,
    /// Focal length along y, pixels.
    pub fy: f32,
    /// Principal point x, pixels.
    pub cx: f32,
    /// Principal point y, pixels.
    pub cy: f32,
}

/// One pinhole camera: pose, vertical field of view and image size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Camera {
    /// Camera centre in world space.
    pub position: Vec3,
    /// Camera-to-world rotation; columns are the camera's right, up and back (+Z) axes.
    pub rotation: Mat3,
    /// Vertical field of view, degrees.
    pub fov_y_deg: f32,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Azimuth in degrees, [0, 360), as used for view-dependent prompts.
    pub azimuth_deg: f32,
    /// Elevation above the ground plane in degrees.
    pub elevation_deg: f32,
}

impl Camera {
    /// A camera at `position` looking at `target`, with `up` as the approximate up direction.
    pub fn look_at(
        position: Vec3,
        target: Vec3,
        up: Vec3,
        fov_y_deg: f32,
        width: u32,
        height: u32,
    ) -> Result<Self, CameraError> {
        check_image(fov_y_deg, width, height)?;
        if !position.is_finite() {
            return Err(CameraError::NonFinite("position"));
        }
        if !target.is_finite() {
            return Err(CameraError::NonFinite("target"));
        }
        if !up.is_finite() {
            return Err(CameraError::NonFinite("up"));
        }
        let back = position - target;
        if back.length() < 1e-6 {
            return Err(CameraError::Degenerate("position equals target"));
        }
        let back = back.normalize();
        let right = up.cross(back);
        if right.length() < 1e-6 {
            return Err(CameraError::Degenerate("view direction is parallel to up"));
        }
        let right = right.normalize();
        let cam_up = back.cross(right);
        let offset = position - target;
        let horizontal = (offset.x * offset.x + offset.z * offset.z).sqrt();
        let azimuth_deg = offset.x.atan2(offset.z).to_degrees().rem_euclid(360.0);
        let elevation_deg = offset.y.atan2(horizontal).to_degrees();
        Ok(Self {
            position,
            rotation: Mat3::from_cols(right, cam_up, back),
            fov_y_deg,
            width,
            height,
            azimuth_deg,
            elevation_deg,
        })
    }

    /// A camera on the orbit around `target`: azimuth and elevation in degrees, distance in
    /// scene units.
    pub fn orbit(
        azimuth_deg: f32,
        elevation_deg: f32,
        distance: f32,
        fov_y_deg: f32,
        width: u32,
        height: u32,
    ) -> Result<Self, CameraError> {
        Self::orbit_around(
            Vec3::ZERO,
            azimuth_deg,
            elevation_deg,
            distance,
            fov_y_deg,
            width,
            height,
        )
    }

    /// [`Camera::orbit`] around an arbitrary centre.
    pub fn orbit_around(
        target: Vec3,
        azimuth_deg: f32,
        elevation_deg: f32,
        distance: f32,
        fov_y_deg: f32,
        width: u32,
        height: u32,
    ) -> Result<Self, CameraError> {
        if !(distance.is_finite() && distance > 0.0) {
            return Err(CameraError::NonFinite("distance (must be finite and > 0)"));
        }
        if !(-90.0..=90.0).contains(&elevation_deg) {
            return Err(CameraError::BadRange {
                name: "elevation_deg",
                min: elevation_deg,
                max: elevation_deg,
                why: "elevation must lie in [-90, 90] degrees",
            });
        }
        let (az, el) = (azimuth_deg.to_radians(), elevation_deg.to_radians());
        let dir = Vec3::new(el.cos() * az.sin(), el.sin(), el.cos() * az.cos());
        // Straight above or below: any horizontal up works; keep azimuth meaningful.
        let up = if dir.y.abs() > 0.9999 {
            Vec3::new(-az.sin(), 0.0, -az.cos()) * dir.y.signum()
        } else {
            Vec3::Y
        };
        let mut camera = Self::look_at(
            target + dir * distance,
            target,
            up,
            fov_y_deg,
            width,
            height,
        )?;
        camera.azimuth_deg = azimuth_deg.rem_euclid(360.0);
        camera.elevation_deg = elevation_deg;
        Ok(camera)
    }

    /// The same pose rendered at another image size (the field of view is kept).
    pub fn with_size(&self, width: u32, height: u32) -> Result<Self, CameraError> {
        check_image(self.fov_y_deg, width, height)?;
        Ok(Self {
            width,
            height,
            ..self.clone()
        })
    }

    /// Camera-to-world transform (OpenGL convention: the camera looks down its local -Z).
    pub fn camera_to_world(&self) -> Mat4 {
        let r = self.rotation;
        Mat4::from_cols(
            r.x_axis.extend(0.0),
            r.y_axis.extend(0.0),
            r.z_axis.extend(0.0),
            self.position.extend(1.0),
        )
    }

    /// World-to-camera transform (the view matrix).
    pub fn world_to_camera(&self) -> Mat4 {
        self.camera_to_world().inverse()
    }

    /// Pinhole intrinsics for this image size; square pixels.
    pub fn intrinsics(&self) -> Intrinsics {
        let fy = 0.5 * self.height as f32 / (0.5 * self.fov_y_deg.to_radians()).tan();
        Intrinsics {
            fx: fy,
            fy,
            cx: 0.5 * self.width as f32,
            cy: 0.5 * self.height as f32,
        }
    }

    /// Number of pixels (= rays).
    pub fn num_pixels(&self) -> usize {
        self.width as usize * self.height as usize
    }

    /// World-space direction (unit length) of the ray through pixel coordinates `(x, y)`,
    /// measured from the top-left corner (pixel centres at `+0.5`).
    pub fn ray_direction(&self, x: f32, y: f32) -> Vec3 {
        let k = self.intrinsics();
        let local = Vec3::new((x - k.cx) / k.fx, -(y - k.cy) / k.fy, -1.0);
        (self.rotation * local).normalize()
    }

    /// Projects a world point to pixel coordinates and its depth along the view axis; `None`
    /// behind the camera.
    pub fn project(&self, point: Vec3) -> Option<(f32, f32, f32)> {
        let local = self.rotation.transpose() * (point - self.position);
        let depth = -local.z;
        if depth <= 1e-6 {
            return None;
        }
        let k = self.intrinsics();
        Some((
            k.cx + k.fx * local.x / depth,
            k.cy - k.fy * local.y / depth,
            depth,
        ))
    }

    /// One ray per pixel, row-major from the top-left pixel.
    pub fn rays(&self) -> Rays {
        let mut rays = Rays::with_capacity(self.num_pixels());
        self.append_rays(&mut rays);
        rays
    }

    fn append_rays(&self, rays: &mut Rays) {
        for y in 0..self.height {
            for x in 0..self.width {
                let d = self.ray_direction(x as f32 + 0.5, y as f32 + 0.5);
                rays.origins.extend_from_slice(&self.position.to_array());
                rays.directions.extend_from_slice(&d.to_array());
            }
        }
    }
}

/// Rays of one camera or several concatenated: flat `[x, y, z]` triples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rays {
    /// Ray origins, 3 floats per ray.
    pub origins: Vec<f32>,
    /// Unit ray directions, 3 floats per ray.
    pub directions: Vec<f32>,
    /// Colours (3 floats per ray) shown instead of the scene's background model where the ray
    /// leaves the object (threestudio's `random_aug`); `None` shows the scene's own.
    pub backgrounds: Option<Vec<f32>>,
}

impl Rays {
    fn with_capacity(n: usize) -> Self {
        Self {
            origins: Vec::with_capacity(3 * n),
            directions: Vec::with_capacity(3 * n),
            backgrounds: None,
        }
    }

    /// All pixels of several cameras, camera after camera.
    pub fn of_cameras(cameras: &[Camera]) -> Self {
        let n = cameras.iter().map(Camera::num_pixels).sum();
        let mut rays = Self::with_capacity(n);
        for camera in cameras {
            camera.append_rays(&mut rays);
        }
        rays
    }

    /// Number of rays.
    pub fn len(&self) -> usize {
        self.origins.len() / 3
    }

    /// True when there are no rays.
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// The consecutive rays `range`.
    pub fn range(&self, range: std::ops::Range<usize>) -> Self {
        Self {
            origins: self.origins[3 * range.start..3 * range.end].to_vec(),
            directions: self.directions[3 * range.start..3 * range.end].to_vec(),
            backgrounds: self
                .backgrounds
                .as_ref()
                .map(|b| b[3 * range.start..3 * range.end].to_vec()),
        }
    }

    /// The rays at the given indices (for random ray batches).
    pub fn select(&self, indices: &[usize]) -> Self {
        let mut out = Self::with_capacity(indices.len());
        for &i in indices {
            out.origins
                .extend_from_slice(&self.origins[3 * i..3 * i + 3]);
            out.directions
                .extend_from_slice(&self.directions[3 * i..3 * i + 3]);
        }
        out.backgrounds = self.backgrounds.as_ref().map(|b| {
            indices
                .iter()
                .flat_map(|&i| b[3 * i..3 * i + 3].to_vec())
                .collect()
        });
        out
    }
}

fn check_image(fov_y_deg: f32, width: u32, height: u32) -> Result<(), CameraError> {
    if width == 0 || height == 0 {
        return Err(CameraError::ZeroSize { width, height });
    }
    if !(fov_y_deg > 0.0 && fov_y_deg < 180.0) {
        return Err(CameraError::FovOutOfRange(fov_y_deg));
    }
    Ok(())
}

/// Ranges from which training cameras are drawn. Defaults follow MVDream's threestudio config:
/// elevation 0-30 degrees, fov 15-60 degrees, and a distance relative to the field of view so
/// the object fills the frame alike at every fov.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrbitConfig {
    /// Azimuth range in degrees.
    pub azimuth_range: [f32; 2],
    /// Elevation range in degrees.
    pub elevation_range: [f32; 2],
    /// Vertical field of view range in degrees.
    pub fov_range: [f32; 2],
    /// Distance range. With `relative_distance`, it is the half-height of the view at the
    /// orbit centre (scene units), and the camera distance is `d / tan(fov / 2)`.
    pub distance_range: [f32; 2],
    /// See `distance_range`.
    pub relative_distance: bool,
    /// Spread a batch's azimuths evenly (one random offset, then equal steps), as threestudio's
    /// `batch_uniform_azimuth`.
    pub stratified_azimuth: bool,
    /// Standard deviation of a random shift of the orbit centre, scene units.
    pub center_jitter: f32,
    /// Share of a run's steps, at its start, whose azimuths come from `front_azimuth_range`
    /// only (0: none; the fast preset uses 0.6). Why: seen from every side from the first
    /// step, SDS averages the views' mirrored layouts of a left/right pair into one colour for
    /// both objects; settled from the front first, the layout carries round the orbit
    /// (docs/benchmarks.md, "Left/right pairs in 3D").
    pub front_fraction: f32,
    /// Azimuth range of the front steps, degrees ([-30, 30]).
    pub front_azimuth_range: [f32; 2],
    /// Share of a run's steps, right after the front phase, over which the azimuth range
    /// widens linearly from `front_azimuth_range` to the width of `azimuth_range`, about the
    /// front range's centre (threestudio's `progressive_until`; 0: the full orbit at once).
    /// Why: faces formed from the front can carry round a step at a time instead of meeting
    /// the back views all at once. `front_fraction + widen_fraction` is at most 1.
    pub widen_fraction: f32,
    /// Views drawn together as one object's multi-view set (MVDream's `n_view`: 4): a step's
    /// views come in groups of this many consecutive cameras, evenly spread over the azimuth
    /// range from one random start and sharing elevation, fov, distance and centre (threestudio's
    /// multi-view camera data). 1: every view drawn on its own.
    pub views_per_group: usize,
    /// Share of the elevation draws that are uniform on the sphere (the sine of the elevation
    /// uniform) rather than uniform in degrees: threestudio's random cameras use 0.5; 0 (the
    /// default) keeps every draw uniform in degrees.
    pub elevation_sphere_fraction: f32,
}

impl Default for OrbitConfig {
    fn default() -> Self {
        Self {
            azimuth_range: [0.0, 360.0],
            elevation_range: [0.0, 30.0],
            fov_range: [15.0, 60.0],
            distance_range: [0.8, 1.0],
            relative_distance: true,
            stratified_azimuth: true,
            center_jitter: 0.0,
            front_fraction: 0.0,
            front_azimuth_range: [-30.0, 30.0],
            widen_fraction: 0.0,
            views_per_group: 1,
            elevation_sphere_fraction: 0.0,
        }
    }
}

impl OrbitConfig {
    /// Checks every range; the error names the field at fault.
    pub fn validate(&self) -> Result<(), CameraError> {
        let check = |name, [min, max]: [f32; 2], lo: f32, hi: f32, why| {
            if !(min.is_finite() && max.is_finite()) || min > max || min < lo || max > hi {
                Err(CameraError::BadRange {
                    name,
                    min,
                    max,
                    why,
                })
            } else {
                Ok(())
            }
        };
        check(
            "azimuth_range",
            self.azimuth_range,
            -360.0,
            720.0,
            "need min <= max, in degrees",
        )?;
        check(
            "front_azimuth_range",
            self.front_azimuth_range,
            -360.0,
            720.0,
            "need min <= max, in degrees",
        )?;
        check(
            "elevation_range",
            self.elevation_range,
            -90.0,
            90.0,
            "need min <= max within [-90, 90] degrees",
        )?;
        check(
            "fov_range",
            self.fov_range,
            1e-3,
            179.9,
            "need min <= max strictly inside (0, 180) degrees",
        )?;
        check(
            "distance_range",
            self.distance_range,
            1e-4,
            f32::MAX,
            "need 0 < min <= max",
        )?;
        for (name, value) in [
            ("front_fraction", self.front_fraction),
            ("widen_fraction", self.widen_fraction),
            ("elevation_sphere_fraction", self.elevation_sphere_fraction),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(CameraError::BadRange {
                    name,
                    min: value,
                    max: value,
                    why: "must be a fraction in [0, 1]",
                });
            }
        }
        if self.front_fraction + self.widen_fraction > 1.0 {
            return Err(CameraError::BadRange {
                name: "widen_fraction",
                min: self.widen_fraction,
                max: self.widen_fraction,
                why: "front_fraction + widen_fraction must be at most 1",
            });
        }
        if self.views_per_group == 0 {
            return Err(CameraError::BadRange {
                name: "views_per_group",
                min: 0.0,
                max: 0.0,
                why: "must be at least 1",
            });
        }
        if !(self.center_jitter.is_finite() && self.center_jitter >= 0.0) {
            return Err(CameraError::BadRange {
                name: "center_jitter",
                min: self.center_jitter,
                max: self.center_jitter,
                why: "must be finite and >= 0",
            });
        }
        Ok(())
    }

    /// `n` turntable views of a result: evenly around it at 15 degrees elevation, fov 40,
    /// distance value 0.9 (inside the training ranges): what results are judged and shown by.
    pub fn turntable(&self, n: usize, size: u32) -> Result<Vec<Camera>, CameraError> {
        let fov = 40.0;
        evaluation_orbit(n, 15.0, self.camera_distance(0.9, fov), fov, size, size)
    }

    /// Camera distance for a sampled distance value `d` and field of view.
    pub fn camera_distance(&self, d: f32, fov_y_deg: f32) -> f32 {
        if self.relative_distance {
            d / (0.5 * fov_y_deg.to_radians()).tan()
        } else {
            d
        }
    }
}

/// Draws training cameras from an [`OrbitConfig`]; deterministic for a seed.
#[derive(Debug, Clone)]
pub struct CameraSampler {
    config: OrbitConfig,
    rng: StdRng,
    /// The azimuth range of the current step when it is not `config.azimuth_range`.
    azimuth_range: Option<[f32; 2]>,
}

impl CameraSampler {
    /// A sampler over `config`'s ranges, seeded.
    pub fn new(config: OrbitConfig, seed: u64) -> Result<Self, CameraError> {
        config.validate()?;
        Ok(Self {
            config,
            rng: StdRng::seed_from_u64(seed),
            azimuth_range: None,
        })
    }

    /// Draw the views of step `step` (0-based) of a run of `steps`: from the front range in
    /// the first `front_fraction` of the steps, then from a range widening to the full width
    /// over the next `widen_fraction`. Without this call, the full ranges.
    pub fn at_step(mut self, step: usize, steps: usize) -> Self {
        let c = &self.config;
        let (step, steps) = (step as f32, steps as f32);
        let front_end = c.front_fraction * steps;
        let widen_steps = c.widen_fraction * steps;
        self.azimuth_range = if step < front_end {
            Some(c.front_azimuth_range)
        } else if step < front_end + widen_steps {
            let t = (step - front_end) / widen_steps;
            let [lo, hi] = c.front_azimuth_range;
            let centre = 0.5 * (lo + hi);
            let half = lerp(
                [
                    0.5 * (hi - lo),
                    0.5 * (c.azimuth_range[1] - c.azimuth_range[0]),
                ],
                t,
            );
            Some([centre - half, centre + half])
        } else {
            None
        };
        self
    }

    /// The ranges this sampler draws from.
    pub fn config(&self) -> &OrbitConfig {
        &self.config
    }

    /// `n` cameras of `width` x `height`; with `views_per_group` > 1, `n / views_per_group`
    /// groups of consecutive views (`n` must be a multiple of it).
    pub fn sample(
        &mut self,
        n: usize,
        width: u32,
        height: u32,
    ) -> Result<Vec<Camera>, CameraError> {
        check_image(self.config.fov_range[0].max(1e-3), width, height)?;
        let group = self.config.views_per_group;
        if group > 1 {
            return self.sample_groups(n, group, width, height);
        }
        let c = &self.config;
        let offset: f32 = self.rng.random();
        (0..n)
            .map(|i| {
                let u_az = if c.stratified_azimuth {
                    (i as f32 + offset) / n as f32
                } else {
                    self.rng.random()
                };
                let range = self.azimuth_range.unwrap_or(c.azimuth_range);
                let azimuth = lerp(range, u_az);
                OrbitPose::draw(c, &mut self.rng).camera(c, azimuth, width, height)
            })
            .collect()
    }
}

impl CameraSampler {
    /// Groups of `group` views of one object (see [`OrbitConfig::views_per_group`]).
    fn sample_groups(
        &mut self,
        n: usize,
        group: usize,
        width: u32,
        height: u32,
    ) -> Result<Vec<Camera>, CameraError> {
        if n % group != 0 {
            return Err(CameraError::BadRange {
                name: "views_per_group",
                min: group as f32,
                max: group as f32,
                why: "the views of a step must be whole groups of views_per_group",
            });
        }
        let c = self.config.clone();
        let range = self.azimuth_range.unwrap_or(c.azimuth_range);
        let mut cameras = Vec::with_capacity(n);
        for _ in 0..n / group {
            let offset: f32 = self.rng.random();
            let pose = OrbitPose::draw(&c, &mut self.rng);
            for j in 0..group {
                let azimuth = lerp(range, (j as f32 + offset) / group as f32);
                cameras.push(pose.camera(&c, azimuth, width, height)?);
            }
        }
        Ok(cameras)
    }
}

/// Everything of an orbit camera but its azimuth, drawn in this order (the camera streams of
/// existing configs depend on it): elevation, fov, distance value, centre.
struct OrbitPose {
    elevation: f32,
    fov: f32,
    distance: f32,
    center: Vec3,
}

impl OrbitPose {
    fn draw(c: &OrbitConfig, rng: &mut StdRng) -> Self {
        let elevation = draw_elevation(c, rng);
        let fov = lerp(c.fov_range, rng.random());
        let distance = lerp(c.distance_range, rng.random());
        let center = draw_center(c, rng);
        Self {
            elevation,
            fov,
            distance,
            center,
        }
    }

    fn camera(
        &self,
        c: &OrbitConfig,
        azimuth: f32,
        width: u32,
        height: u32,
    ) -> Result<Camera, CameraError> {
        Camera::orbit_around(
            self.center,
            azimuth,
            self.elevation,
            c.camera_distance(self.distance, self.fov),
            self.fov,
            width,
            height,
        )
    }
}

/// The orbit centre: the origin, or jittered by `center_jitter` (three normal draws).
fn draw_center(c: &OrbitConfig, rng: &mut StdRng) -> Vec3 {
    if c.center_jitter > 0.0 {
        Vec3::new(normal(rng), normal(rng), normal(rng)) * c.center_jitter
    } else {
        Vec3::ZERO
    }
}

/// One elevation draw: uniform in degrees, or with probability `elevation_sphere_fraction`
/// uniform on the sphere (threestudio's `asin` of a uniform sine). No extra random number is
/// drawn when the fraction is 0, so existing configs keep their camera streams.
fn draw_elevation(c: &OrbitConfig, rng: &mut StdRng) -> f32 {
    if c.elevation_sphere_fraction > 0.0 && rng.random::<f32>() < c.elevation_sphere_fraction {
        let [lo, hi] = c.elevation_range.map(|e| e.to_radians().sin());
        return lerp([lo, hi], rng.random())
            .clamp(-1.0, 1.0)
            .asin()
            .to_degrees();
    }
    lerp(c.elevation_range, rng.random())
}

/// `n` cameras evenly around the object at one elevation, distance and fov: the fixed views
/// used for evaluation and turntables.
pub fn evaluation_orbit(
    n: usize,
    elevation_deg: f32,
    distance: f32,
    fov_y_deg: f32,
    width: u32,
    height: u32,
) -> Result<Vec<Camera>, CameraError> {
    (0..n)
        .map(|i| {
            Camera::orbit(
                360.0 * i as f32 / n as f32,
                elevation_deg,
                distance,
                fov_y_deg,
                width,
                height,
            )
        })
        .collect()
}

fn lerp([a, b]: [f32; 2], t: f32) -> f32 {
    a + (b - a) * t
}

/// Standard normal sample (Box-Muller); avoids a `rand_distr` dependency for one use.
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(1e-7);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_share_everything_but_an_even_azimuth_spread() {
        let config = OrbitConfig {
            views_per_group: 4,
            elevation_sphere_fraction: 0.5,
            ..OrbitConfig::default()
        };
        let mut sampler = CameraSampler::new(config, 3).unwrap();
        let cams = sampler.sample(8, 16, 16).unwrap();
        for g in cams.chunks(4) {
            for (j, cam) in g.iter().enumerate() {
                assert_eq!(cam.elevation_deg, g[0].elevation_deg);
                assert_eq!(cam.fov_y_deg, g[0].fov_y_deg);
                assert!((cam.position.length() - g[0].position.length()).abs() < 1e-4);
                let step = (cam.azimuth_deg - g[0].azimuth_deg).rem_euclid(360.0);
                assert!((step - 90.0 * j as f32).abs() < 1e-3, "view {j}: {step}");
            }
            assert!((0.0..=30.0).contains(&g[0].elevation_deg));
        }
        assert_ne!(cams[0].elevation_deg, cams[4].elevation_deg);
        let err = sampler.sample(6, 16, 16).unwrap_err().to_string();
        assert!(err.contains("views_per_group"), "{err}");
    }

    fn close(a: Vec3, b: Vec3) -> bool {
        (a - b).length() < 1e-5
    }

    #[test]
    fn orbit_front_camera_looks_down_minus_z() {
        let cam = Camera::orbit(0.0, 0.0, 2.0, 60.0, 8, 8).unwrap();
        assert!(close(cam.position, Vec3::new(0.0, 0.0, 2.0)));
        // The centre pixel's ray points at the origin.
        let d = cam.ray_direction(4.0, 4.0);
        assert!(close(d, Vec3::new(0.0, 0.0, -1.0)), "{d}");
        // Azimuth 90 puts the camera on +X.
        let side = Camera::orbit(90.0, 0.0, 2.0, 60.0, 8, 8).unwrap();
        assert!(
            close(side.position, Vec3::new(2.0, 0.0, 0.0)),
            "{}",
            side.position
        );
        // Elevation lifts it, and the recovered angles match.
        let up = Camera::orbit(30.0, 45.0, 2.0, 60.0, 8, 8).unwrap();
        assert!((up.position.y - 2.0 * 45f32.to_radians().sin()).abs() < 1e-5);
        let again = Camera::look_at(up.position, Vec3::ZERO, Vec3::Y, 60.0, 8, 8).unwrap();
        assert!((again.azimuth_deg - 30.0).abs() < 1e-3);
        assert!((again.elevation_deg - 45.0).abs() < 1e-3);
    }

    #[test]
    fn projection_inverts_rays() {
        let cam = Camera::orbit(123.0, 17.0, 3.0, 40.0, 64, 48).unwrap();
        for &(x, y) in &[(0.5, 0.5), (10.25, 40.0), (63.5, 47.5), (32.0, 24.0)] {
            let p = cam.position + cam.ray_direction(x, y) * 2.5;
            let (px, py, depth) = cam.project(p).unwrap();
            assert!((px - x).abs() < 1e-3 && (py - y).abs() < 1e-3, "{px},{py}");
            assert!(depth > 0.0);
        }
        // Points behind the camera do not project.
        assert!(cam.project(cam.position * 2.0).is_none());
    }

    #[test]
    fn fov_sets_the_image_edge() {
        let cam = Camera::orbit(0.0, 0.0, 2.0, 90.0, 10, 10).unwrap();
        // At 90 degrees the top edge ray is 45 degrees from the axis.
        let d = cam.ray_direction(5.0, 0.0);
        assert!((d.y - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-5);
        let k = cam.intrinsics();
        assert!((k.fy - 5.0).abs() < 1e-5);
    }

    #[test]
    fn rays_are_row_major_and_unit() {
        let cams = evaluation_orbit(3, 10.0, 2.0, 45.0, 4, 3).unwrap();
        let rays = Rays::of_cameras(&cams);
        assert_eq!(rays.len(), 3 * 12);
        for d in rays.directions.chunks(3) {
            assert!((Vec3::from_slice(d).length() - 1.0).abs() < 1e-5);
        }
        let first = cams[0].ray_direction(1.5, 0.5);
        assert!(close(Vec3::from_slice(&rays.directions[3..6]), first));
    }

    #[test]
    fn sampler_is_deterministic_and_in_range() {
        let config = OrbitConfig::default();
        let mut a = CameraSampler::new(config.clone(), 7).unwrap();
        let mut b = CameraSampler::new(config.clone(), 7).unwrap();
        let ca = a.sample(16, 8, 8).unwrap();
        assert_eq!(ca, b.sample(16, 8, 8).unwrap());
        let mut c = CameraSampler::new(config.clone(), 8).unwrap();
        assert_ne!(ca, c.sample(16, 8, 8).unwrap());
        for cam in &ca {
            assert!((0.0..=30.0 + 1e-3).contains(&cam.elevation_deg));
            assert!((15.0..=60.0).contains(&cam.fov_y_deg));
            let d = cam.position.length();
            let half = (0.5 * cam.fov_y_deg.to_radians()).tan();
            assert!(d * half >= 0.8 - 1e-4 && d * half <= 1.0 + 1e-4);
        }
        // Stratified azimuths cover the circle: one per 22.5-degree bin.
        let mut bins = [0; 16];
        for cam in &ca {
            bins[(cam.azimuth_deg / 22.5) as usize % 16] += 1;
        }
        assert!(bins.iter().all(|&n| n == 1), "{bins:?}");
    }

    #[test]
    fn front_phase_draws_front_views_then_the_full_orbit() {
        let config = OrbitConfig {
            front_fraction: 0.5,
            ..Default::default()
        };
        let draw = |step| {
            CameraSampler::new(config.clone(), 3)
                .unwrap()
                .at_step(step, 200)
                .sample(64, 8, 8)
                .unwrap()
        };
        // Azimuths are stored in [0, 360); compare them around the front.
        let wrap = |a: f32| (a + 180.0).rem_euclid(360.0) - 180.0;
        for step in [0, 99] {
            let azimuths: Vec<f32> = draw(step).iter().map(|c| wrap(c.azimuth_deg)).collect();
            assert!(
                azimuths.iter().all(|a| a.abs() <= 30.0 + 1e-3),
                "{azimuths:?}"
            );
            // Stratified over the front range: both sides of the front.
            assert!(azimuths.iter().any(|&a| a < -20.0) && azimuths.iter().any(|&a| a > 20.0));
        }
        // From half the steps on: the same cameras as a sampler without the phase.
        let full = CameraSampler::new(OrbitConfig::default(), 3)
            .unwrap()
            .sample(64, 8, 8)
            .unwrap();
        assert_eq!(draw(100), full);
        assert!(full.iter().any(|c| wrap(c.azimuth_deg).abs() > 90.0));
        let bad = OrbitConfig {
            front_azimuth_range: [30.0, -30.0],
            ..Default::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("front_azimuth_range"), "{e}");
        let bad = OrbitConfig {
            front_fraction: 1.5,
            ..Default::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("front_fraction"), "{e}");
    }

    #[test]
    fn widen_phase_grows_the_azimuth_range_from_the_front_to_the_full_orbit() {
        let config = OrbitConfig {
            front_fraction: 0.2,
            widen_fraction: 0.4,
            ..Default::default()
        };
        let spread = |step| {
            let wrap = |a: f32| (a + 180.0).rem_euclid(360.0) - 180.0;
            CameraSampler::new(config.clone(), 5)
                .unwrap()
                .at_step(step, 100)
                .sample(256, 8, 8)
                .unwrap()
                .iter()
                .map(|c| wrap(c.azimuth_deg).abs())
                .fold(0.0f32, f32::max)
        };
        // The front phase, then half-widths 30 -> 180 over steps 20..60 about the front.
        assert!(spread(19) <= 30.0 + 1e-3);
        let at = |step: usize| 30.0 + 150.0 * (step as f32 - 20.0) / 40.0;
        for step in [20, 30, 40, 50] {
            let s = spread(step);
            assert!(s <= at(step) + 1e-3, "step {step}: {s} > {}", at(step));
            // Stratified draws reach near the edge of the current range.
            assert!(s >= at(step) - 5.0, "step {step}: {s} < {}", at(step));
        }
        let full = CameraSampler::new(OrbitConfig::default(), 5)
            .unwrap()
            .sample(256, 8, 8)
            .unwrap();
        let widened = CameraSampler::new(config.clone(), 5)
            .unwrap()
            .at_step(60, 100)
            .sample(256, 8, 8)
            .unwrap();
        assert_eq!(widened, full);
        let bad = OrbitConfig {
            front_fraction: 0.7,
            widen_fraction: 0.4,
            ..Default::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.contains("widen_fraction") && e.contains("at most 1"),
            "{e}"
        );
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(
            Camera::orbit(0.0, 0.0, 2.0, 60.0, 0, 8).unwrap_err(),
            CameraError::ZeroSize {
                width: 0,
                height: 8
            }
        );
        let e = Camera::orbit(0.0, 0.0, 2.0, 180.0, 8, 8).unwrap_err();
        assert!(e.to_string().contains("fov_y 180"), "{e}");
        assert!(Camera::orbit(0.0, 0.0, 2.0, f32::NAN, 8, 8).is_err());
        assert!(Camera::orbit(0.0, 0.0, f32::NAN, 60.0, 8, 8).is_err());
        let bad = OrbitConfig {
            fov_range: [10.0, 200.0],
            ..Default::default()
        };
        let e = CameraSampler::new(bad, 0).unwrap_err();
        assert!(e.to_string().contains("fov_range"), "{e}");
        let bad = OrbitConfig {
            elevation_range: [40.0, 10.0],
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("elevation_range")
        );
    }
}
