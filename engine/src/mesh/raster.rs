//! CPU triangle rasteriser: triangle id, perspective-correct barycentrics and depth per pixel,
//! and a shaded render of a vertex-coloured mesh (turntables of exported assets). Hand-written:
//! no maintained crate rasterises a [`TriMesh`] to ids and barycentrics on the CPU without a
//! GPU context.

use glam::Vec3;

use super::{TriMesh, srgb_to_linear};
use crate::rgb_image::RgbImage;
use crate::scene::Camera;

/// Triangles with a corner closer to the camera than this (along the view axis, scene units)
/// are skipped rather than clipped: a preview orbit keeps the whole object well in front of
/// the camera, and skipping keeps projected coordinates finite and moderate.
pub const NEAR_DEPTH: f32 = 1e-3;

/// Vertex colour of an uncoloured mesh: linear value of sRGB 0.5, mid grey on screen.
const UNCOLORED: [f32; 3] = [0.214; 3];

/// What [`rasterize`] saw through each pixel: row-major from the top-left pixel, y down (the
/// pixel layout of [`RgbImage`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Fragments {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Index of the nearest triangle (its position in `indices / 3`), or
    /// [`Fragments::BACKGROUND`].
    pub triangle: Vec<u32>,
    /// Perspective-correct barycentric weights of the triangle's three corners, in index
    /// order, at the pixel centre; they sum to 1. Zero on the background.
    pub barycentric: Vec<[f32; 3]>,
    /// Depth along the camera's view axis at the pixel centre (as [`Camera::project`]
    /// returns it); infinite on the background.
    pub depth: Vec<f32>,
}

impl Fragments {
    /// The triangle id of a pixel that no triangle covers.
    pub const BACKGROUND: u32 = u32::MAX;

    /// Empty fragments: every pixel background.
    fn background(width: u32, height: u32) -> Self {
        let n = width as usize * height as usize;
        Self {
            width,
            height,
            triangle: vec![Self::BACKGROUND; n],
            barycentric: vec![[0.0; 3]; n],
            depth: vec![f32::INFINITY; n],
        }
    }

    /// Number of pixels some triangle covers.
    pub fn covered(&self) -> usize {
        self.triangle
            .iter()
            .filter(|&&t| t != Self::BACKGROUND)
            .count()
    }
}

/// Rasterises `mesh` as `camera` sees it, with a depth buffer: per pixel, the nearest
/// triangle whose interior contains the pixel centre (`x + 0.5`, `y + 0.5`), with its
/// perspective-correct barycentrics and depth.
///
/// Both faces are drawn (no culling). Edges follow the top-left rule, so a pixel centre on an
/// edge two triangles share belongs to exactly one of them. Skipped, never panicking:
/// triangles with an index out of range, a non-finite corner, a corner nearer than
/// [`NEAR_DEPTH`] or behind the camera (no clipping), or no area on screen.
pub fn rasterize(mesh: &TriMesh, camera: &Camera) -> Fragments {
    let (width, height) = (camera.width, camera.height);
    let mut out = Fragments::background(width, height);
    if width == 0 || height == 0 {
        return out;
    }
    for (id, tri) in mesh.indices.chunks_exact(3).enumerate() {
        let Some(corners) = corners(mesh, tri) else {
            continue;
        };
        let mut screen = [[0.0f32; 2]; 3];
        let mut inv_depth = [0.0f32; 3];
        let mut visible = true;
        for (k, p) in corners.iter().enumerate() {
            match camera.project(*p) {
                Some((x, y, d)) if d >= NEAR_DEPTH && x.is_finite() && y.is_finite() => {
                    screen[k] = [x, y];
                    inv_depth[k] = 1.0 / d;
                }
                _ => visible = false,
            }
        }
        if visible {
            draw_triangle(&mut out, id as u32, screen, inv_depth);
        }
    }
    out
}

/// The triangle's corner positions; `None` for an index out of range or a non-finite corner.
fn corners(mesh: &TriMesh, tri: &[u32]) -> Option<[Vec3; 3]> {
    let mut p = [Vec3::ZERO; 3];
    for (k, &i) in tri.iter().enumerate() {
        p[k] = Vec3::from(*mesh.positions.get(i as usize)?);
        if !p[k].is_finite() {
            return None;
        }
    }
    Some(p)
}

/// `(b - a) x (p - a)` in screen coordinates.
fn edge(a: [f32; 2], b: [f32; 2], p: [f32; 2]) -> f32 {
    (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
}

/// Scans the triangle's bounding box and writes the pixels it wins the depth test at.
fn draw_triangle(out: &mut Fragments, id: u32, s: [[f32; 2]; 3], inv_depth: [f32; 3]) {
    let area = edge(s[0], s[1], s[2]);
    // Degenerate or seen edge-on: no area, or so little next to its edges' length (a width
    // under about 1e-6 of its length) that it is rounding error of collinear corners.
    let edges_sq: f32 = (0..3)
        .map(|k| {
            let (a, b) = (s[k], s[(k + 1) % 3]);
            (b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)
        })
        .sum();
    if !area.is_normal() || area.abs() <= 1e-6 * edges_sq {
        return;
    }
    // Orient every edge function positive inside, whichever way the triangle winds.
    let sign = area.signum();
    let inv_area = 1.0 / area.abs();
    // Edge k is opposite corner k. Its ends are taken in a fixed order (the smaller point
    // first) and the sign applied after, so two triangles sharing an edge compute exactly
    // opposite values along it and no pixel centre is drawn by both or missed.
    let edges = [(1, 2), (2, 0), (0, 1)].map(|(a, b)| {
        let (a, b) = (s[a], s[b]);
        if a <= b { (a, b, sign) } else { (b, a, -sign) }
    });
    // A pixel centre exactly on an edge counts only for a top edge (horizontal, interior
    // below) or a left edge (interior to its right); the inside direction is the edge
    // function's gradient, sign * (-dy, dx).
    let top_left = edges.map(|(a, b, sign)| {
        let (gx, gy) = (-sign * (b[1] - a[1]), sign * (b[0] - a[0]));
        gx > 0.0 || (gx == 0.0 && gy > 0.0)
    });

    let (w, h) = (out.width as f32, out.height as f32);
    let lo = |v: f32, size: f32| (v - 0.5).ceil().clamp(0.0, size) as u32;
    let hi = |v: f32, size: f32| ((v - 0.5).floor() + 1.0).clamp(0.0, size) as u32;
    let xs = s.map(|c| c[0]);
    let ys = s.map(|c| c[1]);
    let (x0, x1) = (
        lo(xs[0].min(xs[1]).min(xs[2]), w),
        hi(xs[0].max(xs[1]).max(xs[2]), w),
    );
    let (y0, y1) = (
        lo(ys[0].min(ys[1]).min(ys[2]), h),
        hi(ys[0].max(ys[1]).max(ys[2]), h),
    );

    for y in y0..y1 {
        let row = y as usize * out.width as usize;
        for x in x0..x1 {
            let p = [x as f32 + 0.5, y as f32 + 0.5];
            let mut l = [0.0f32; 3];
            let mut inside = true;
            for (k, &(a, b, sign)) in edges.iter().enumerate() {
                let e = sign * edge(a, b, p);
                inside &= e > 0.0 || (e == 0.0 && top_left[k]);
                l[k] = e * inv_area;
            }
            if !inside {
                continue;
            }
            // Screen-space weights interpolate 1/depth linearly; weighting the corners by
            // them over depth gives the weights in the triangle's own plane.
            let q = [0, 1, 2].map(|k| l[k] * inv_depth[k]);
            let inv = q[0] + q[1] + q[2];
            let depth = 1.0 / inv;
            let i = row + x as usize;
            if depth < out.depth[i] {
                out.depth[i] = depth;
                out.triangle[i] = id;
                out.barycentric[i] = q.map(|v| v * depth);
            }
        }
    }
}

/// Renders `mesh` for a person to look at: rasterised at `supersample` times the camera's
/// size (0 counts as 1) and box-filtered down to it. Each pixel's albedo is `texture` (sRGB,
/// sampled bilinearly at the interpolated UV) when given and the mesh has UVs, else the
/// interpolated vertex colour, else mid grey; lit by a headlight, `0.35 + 0.65 |n.v|` with the
/// interpolated vertex normals (the face normal when the mesh has none), encoded to sRGB and
/// clamped to [0, 1] like the renderers' images; `background` (display values) elsewhere.
pub fn render_mesh(
    mesh: &TriMesh,
    texture: Option<&image::RgbImage>,
    camera: &Camera,
    background: [f32; 3],
    supersample: u32,
) -> RgbImage {
    let n = mesh.positions.len();
    let colors = (mesh.colors.len() == n).then_some(mesh.colors.as_slice());
    let texture = texture.filter(|_| mesh.uvs.len() == n);
    render_shaded(mesh, camera, background, supersample, |t, b, _| {
        let at = |attr: &[[f32; 3]]| {
            (0..3).fold(Vec3::ZERO, |acc, k| {
                acc + Vec3::from(attr[t[k] as usize]) * b[k]
            })
        };
        match (texture, colors) {
            (Some(texture), _) => {
                let uv = (0..3).fold(glam::Vec2::ZERO, |acc, k| {
                    acc + glam::Vec2::from(mesh.uvs[t[k] as usize]) * b[k]
                });
                sample_bilinear(texture, uv).map(srgb_to_linear).into()
            }
            (None, Some(colors)) => at(colors),
            (None, None) => Vec3::from(UNCOLORED),
        }
    })
}

/// Renders `mesh` as [`render_mesh`] does with the linear albedo `albedo(corners, barycentric,
/// surface point)` at each pixel: tests compare a baked texture with the field it came from.
pub fn render_shaded(
    mesh: &TriMesh,
    camera: &Camera,
    background: [f32; 3],
    supersample: u32,
    albedo: impl Fn(&[u32], [f32; 3], Vec3) -> Vec3,
) -> RgbImage {
    let factor = supersample.max(1);
    let fine = Camera {
        width: camera.width * factor,
        height: camera.height * factor,
        ..camera.clone()
    };
    let frags = rasterize(mesh, &fine);
    let mut image = RgbImage::filled(fine.width, fine.height, background);
    let n = mesh.positions.len();
    let normals = (mesh.normals.len() == n).then_some(mesh.normals.as_slice());
    for (i, (&id, b)) in frags.triangle.iter().zip(&frags.barycentric).enumerate() {
        if id == Fragments::BACKGROUND {
            continue;
        }
        // `rasterize` only emits triangles whose indices are in range.
        let t = &mesh.indices[3 * id as usize..][..3];
        let at = |attr: &[[f32; 3]]| {
            (0..3).fold(Vec3::ZERO, |acc, k| {
                acc + Vec3::from(attr[t[k] as usize]) * b[k]
            })
        };
        let point = at(&mesh.positions);
        let face = {
            let [p0, p1, p2] = [0, 1, 2].map(|k| Vec3::from(mesh.positions[t[k] as usize]));
            (p1 - p0).cross(p2 - p0)
        };
        let normal = normals
            .map(at)
            .filter(|v| v.length_squared() > 1e-12)
            .unwrap_or(face)
            .normalize_or_zero();
        let view = (fine.position - point).normalize_or_zero();
        let light = 0.35 + 0.65 * normal.dot(view).abs();
        let lit = (albedo(t, *b, point) * light)
            .to_array()
            .map(|v| linear_to_srgb(v).clamp(0.0, 1.0));
        image.data[3 * i..3 * i + 3].copy_from_slice(&lit);
    }
    if factor > 1 {
        image.downsample(factor)
    } else {
        image
    }
}

/// `texture` at `uv` (glTF convention, clamped to the edge), bilinear, in [0, 1].
pub fn sample_bilinear(texture: &image::RgbImage, uv: glam::Vec2) -> [f32; 3] {
    let (w, h) = texture.dimensions();
    if w == 0 || h == 0 {
        return [0.0; 3];
    }
    // Texel centres sit at half-integers.
    let x = (uv.x * w as f32 - 0.5).clamp(0.0, (w - 1) as f32);
    let y = (uv.y * h as f32 - 0.5).clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let texel = |x, y| texture.get_pixel(x, y).0.map(|c| c as f32 / 255.0);
    let (a, b, c, d) = (texel(x0, y0), texel(x1, y0), texel(x0, y1), texel(x1, y1));
    std::array::from_fn(|k| {
        (a[k] * (1.0 - fx) + b[k] * fx) * (1.0 - fy) + (c[k] * (1.0 - fx) + d[k] * fx) * fy
    })
}

/// The sRGB transfer function (inverse of [`srgb_to_linear`](super::srgb_to_linear)).
fn linear_to_srgb(v: f32) -> f32 {
    if v <= 0.003_130_8 {
        12.92 * v
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cube `[-h, h]^3`, 8 corners, 12 triangles wound counter-clockwise from outside.
    fn cube(h: f32) -> TriMesh {
        let positions = (0..8)
            .map(|i| [i & 1, (i >> 1) & 1, (i >> 2) & 1].map(|b| if b == 1 { h } else { -h }))
            .collect();
        // Corner i has x = bit 0, y = bit 1, z = bit 2.
        let quads = [
            [0, 4, 6, 2], // -x
            [1, 3, 7, 5], // +x
            [0, 1, 5, 4], // -y
            [2, 6, 7, 3], // +y
            [0, 2, 3, 1], // -z
            [4, 5, 7, 6], // +z
        ];
        let indices = quads
            .iter()
            .flat_map(|q| [q[0], q[1], q[2], q[0], q[2], q[3]])
            .collect();
        TriMesh {
            positions,
            indices,
            ..Default::default()
        }
    }

    fn front_camera(distance: f32, size: u32) -> Camera {
        Camera::orbit(0.0, 0.0, distance, 40.0, size, size).unwrap()
    }

    #[test]
    fn cube_helper_is_closed_and_outward() {
        // The helper's own winding, so the other tests rely on a sound mesh.
        let mesh = cube(0.5);
        assert!(mesh.edge_report().is_closed());
        assert!((mesh.volume() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn cube_head_on_covers_its_projected_front_face() {
        let mesh = cube(0.5);
        let cam = front_camera(3.0, 64);
        let frags = rasterize(&mesh, &cam);
        // Only the +z face (triangles 10 and 11) shows; the square it projects to:
        let (x_min, y_min, d) = cam.project(Vec3::new(-0.5, 0.5, 0.5)).unwrap();
        let (x_max, y_max, _) = cam.project(Vec3::new(0.5, -0.5, 0.5)).unwrap();
        let area = (x_max - x_min) * (y_max - y_min);
        // Each side counts the pixel centres within it: at most one more or less than its
        // length.
        let covered = frags.covered() as f32;
        assert!(
            (covered - area).abs() <= 2.0 * (x_max - x_min) + 1.0,
            "{covered} pixels for {area}"
        );
        for y in 0..64 {
            for x in 0..64 {
                let i = y * 64 + x;
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let margin = 1e-3;
                let inside = px > x_min + margin
                    && px < x_max - margin
                    && py > y_min + margin
                    && py < y_max - margin;
                let outside = !(x_min - margin..=x_max + margin).contains(&px)
                    || !(y_min - margin..=y_max + margin).contains(&py);
                if inside {
                    assert!(
                        [10, 11].contains(&frags.triangle[i]),
                        "({x}, {y}): {}",
                        frags.triangle[i]
                    );
                    assert!((frags.depth[i] - d).abs() < 1e-4, "{}", frags.depth[i]);
                } else if outside {
                    assert_eq!(frags.triangle[i], Fragments::BACKGROUND, "({x}, {y})");
                    assert_eq!(frags.depth[i], f32::INFINITY);
                }
            }
        }
    }

    #[test]
    fn barycentrics_are_perspective_correct() {
        let corners = [
            Vec3::new(-1.2, -0.8, 1.5),
            Vec3::new(1.0, -0.6, -2.5),
            Vec3::new(-0.2, 1.1, -0.5),
        ];
        let mesh = TriMesh {
            positions: corners.map(|c| c.to_array()).to_vec(),
            indices: vec![0, 1, 2],
            ..Default::default()
        };
        let cam = Camera::orbit(20.0, 10.0, 4.0, 50.0, 48, 40).unwrap();
        let frags = rasterize(&mesh, &cam);
        assert!(frags.covered() > 200, "{}", frags.covered());
        let screen = corners.map(|c| {
            let (x, y, _) = cam.project(c).unwrap();
            [x, y]
        });
        let mut most_affine_gap = 0.0f32;
        for y in 0..cam.height {
            for x in 0..cam.width {
                let i = (y * cam.width + x) as usize;
                if frags.triangle[i] == Fragments::BACKGROUND {
                    continue;
                }
                assert_eq!(frags.triangle[i], 0);
                let b = frags.barycentric[i];
                assert!((b.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{b:?}");
                assert!(
                    b.iter().all(|&v| (-1e-5..=1.0 + 1e-5).contains(&v)),
                    "{b:?}"
                );
                let point = corners[0] * b[0] + corners[1] * b[1] + corners[2] * b[2];
                let (px, py, depth) = cam.project(point).unwrap();
                let centre = [x as f32 + 0.5, y as f32 + 0.5];
                assert!(
                    (px - centre[0]).abs() < 2e-3 && (py - centre[1]).abs() < 2e-3,
                    "({x}, {y}) -> ({px}, {py})"
                );
                assert!((depth - frags.depth[i]).abs() < 1e-4 * depth);
                // Screen-space (affine) weights of the same pixel.
                let area = edge(screen[0], screen[1], screen[2]);
                let affine = [
                    edge(screen[1], screen[2], centre) / area,
                    edge(screen[2], screen[0], centre) / area,
                    edge(screen[0], screen[1], centre) / area,
                ];
                for (a, v) in affine.iter().zip(b) {
                    most_affine_gap = most_affine_gap.max((a - v).abs());
                }
            }
        }
        // The triangle spans enough depth that affine weights would have failed the above.
        assert!(most_affine_gap > 0.05, "{most_affine_gap}");
    }

    #[test]
    fn nearer_triangle_wins_in_either_draw_order() {
        let near = [[-1.0, -1.0, 0.5], [1.0, -1.0, 0.5], [0.0, 1.0, 0.5]];
        // Larger and behind, wound the other way.
        let far = [[-2.0, -1.5, 0.0], [0.0, 2.0, 0.0], [2.0, -1.5, 0.0]];
        let cam = front_camera(6.0, 32);
        for near_first in [true, false] {
            let positions = if near_first {
                [near, far].concat()
            } else {
                [far, near].concat()
            };
            let mesh = TriMesh {
                positions,
                indices: vec![0, 1, 2, 3, 4, 5],
                ..Default::default()
            };
            let near_id = if near_first { 0 } else { 1 };
            let frags = rasterize(&mesh, &cam);
            let centre = 16 * 32 + 16;
            assert_eq!(frags.triangle[centre], near_id, "near first: {near_first}");
            assert!((frags.depth[centre] - 5.5).abs() < 1e-4);
            // Outside the near triangle only the far one is seen.
            let (x, y, _) = cam.project(Vec3::new(0.0, 1.5, 0.0)).unwrap();
            let i = y as usize * 32 + x as usize;
            assert_eq!(frags.triangle[i], 1 - near_id);
            assert!((frags.depth[i] - 6.0).abs() < 1e-4);
        }
    }

    #[test]
    fn shared_edges_leave_no_gaps_or_overlaps() {
        // A fan of 8 triangles around the origin in the z = 0 plane. Head-on at an odd size
        // the origin and the spokes along x and y project exactly onto pixel centres; each
        // pixel centre inside the outline must still go to exactly one triangle.
        let ring = 8;
        let mut positions = vec![[0.0; 3]];
        positions.extend((0..ring).map(|k| {
            let a = std::f32::consts::TAU * k as f32 / ring as f32;
            [a.cos(), a.sin(), 0.0]
        }));
        let cameras = [
            front_camera(3.0, 33),
            Camera::orbit(25.0, 35.0, 3.0, 60.0, 40, 40).unwrap(),
        ];
        for cam in cameras {
            let (w, h) = (cam.width, cam.height);
            let outline: Vec<[f32; 2]> = positions[1..]
                .iter()
                .map(|&p| {
                    let (x, y, _) = cam.project(Vec3::from(p)).unwrap();
                    [x, y]
                })
                .collect();
            let mut hits = vec![0u32; (w * h) as usize];
            for k in 0..ring as u32 {
                let one = TriMesh {
                    positions: positions.clone(),
                    indices: vec![0, 1 + k, 1 + (k + 1) % ring as u32],
                    ..Default::default()
                };
                for (n, &id) in hits.iter_mut().zip(&rasterize(&one, &cam).triangle) {
                    *n += u32::from(id != Fragments::BACKGROUND);
                }
            }
            let mut inside_count = 0;
            for y in 0..h {
                for x in 0..w {
                    let n = hits[(y * w + x) as usize];
                    assert!(n <= 1, "({x}, {y}) drawn {n} times");
                    // Strictly inside the (convex) outline, whichever way it winds.
                    let p = [x as f32 + 0.5, y as f32 + 0.5];
                    let e: Vec<f32> = (0..ring)
                        .map(|k| edge(outline[k], outline[(k + 1) % ring], p))
                        .collect();
                    let inside = e.iter().all(|&v| v > 1e-3) || e.iter().all(|&v| v < -1e-3);
                    if inside {
                        inside_count += 1;
                        assert_eq!(n, 1, "({x}, {y}) missed");
                    }
                }
            }
            assert!(inside_count > 300, "{inside_count}");
        }
    }

    #[test]
    fn red_cube_renders_red_on_the_background() {
        let mut mesh = cube(0.5);
        mesh.colors = vec![[1.0, 0.0, 0.0]; 8];
        // At this distance the front face's left edge falls mid-pixel.
        let cam = front_camera(3.1, 32);
        let (x_min, ..) = cam.project(Vec3::new(-0.5, 0.5, 0.5)).unwrap();
        assert!((0.52..0.7).contains(&x_min.fract()), "{x_min}");
        let background = [0.1, 0.2, 0.3];
        let one = render_mesh(&mesh, None, &cam, background, 1);
        let two = render_mesh(&mesh, None, &cam, background, 2);
        assert_eq!((two.width, two.height), (32, 32));
        // Head-on, the light is nearly full at the centre.
        let [r, g, b] = one.pixel(16, 16);
        assert!(r > 0.95 && g == 0.0 && b == 0.0, "{:?}", [r, g, b]);
        for image in [&one, &two] {
            for (c, want) in image.pixel(0, 0).iter().zip(background) {
                assert!((c - want).abs() < 1e-6);
            }
        }
        // Inside the front face both agree.
        let start = (x_min + 1.0).ceil() as u32;
        for y in start..32 - start {
            for x in start..32 - start {
                let (p1, p2) = (one.pixel(x, y), two.pixel(x, y));
                for (a, b) in p1.iter().zip(p2) {
                    assert!((a - b).abs() < 0.01, "({x}, {y}): {p1:?} {p2:?}");
                }
            }
        }
        // The pixel the edge crosses: background at one sample, half face at four.
        let edge_x = x_min.floor() as u32;
        assert_eq!(one.pixel(edge_x, 16), background);
        let mixed = two.pixel(edge_x, 16);
        let face = two.pixel(edge_x + 2, 16);
        for ((m, f), bg) in mixed.iter().zip(face).zip(background) {
            assert!((m - 0.5 * (f + bg)).abs() < 0.02, "{mixed:?} vs {face:?}");
        }
    }

    #[test]
    fn uncolored_mesh_is_grey_and_lit_by_its_normals() {
        let mut mesh = cube(0.5);
        let cam = front_camera(3.0, 32);
        let head_on = render_mesh(&mesh, None, &cam, [0.0; 3], 0).pixel(16, 16);
        assert!(head_on[0] == head_on[1] && head_on[1] == head_on[2]);
        assert!((head_on[0] - 0.5).abs() < 0.01, "{head_on:?}");
        // Vertex normals pointing sideways (+x) make the front face dim, to 0.35 ambient.
        mesh.normals = vec![[1.0, 0.0, 0.0]; 8];
        let side = render_mesh(&mesh, None, &cam, [0.0; 3], 1).pixel(16, 16);
        let want = linear_to_srgb(0.214 * 0.35);
        assert!((side[0] - want).abs() < 0.01, "{side:?} vs {want}");
    }

    #[test]
    fn bad_input_draws_nothing_and_never_panics() {
        let cam = front_camera(3.0, 16);
        let empty = rasterize(&TriMesh::default(), &cam);
        assert_eq!(empty.covered(), 0);
        assert_eq!(empty.triangle.len(), 256);
        let image = render_mesh(&TriMesh::default(), None, &cam, [0.5; 3], 0);
        assert_eq!(image, RgbImage::filled(16, 16, [0.5; 3]));

        let good = [[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]];
        let cases: [(&str, Vec<[f32; 3]>, Vec<u32>); 4] = [
            (
                "degenerate",
                vec![
                    [0.013, 0.021, 0.0],
                    [0.313, 0.121, 0.0],
                    [0.613, 0.221, 0.0],
                ],
                vec![0, 1, 2, 0, 0, 1, 2, 2, 2],
            ),
            ("index out of range", good.to_vec(), vec![0, 1, 3, 9, 1, 2]),
            (
                // One corner behind the camera (at z = 3).
                "partly behind",
                vec![[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.0, 5.0]],
                vec![0, 1, 2],
            ),
            (
                "not finite",
                vec![[0.0; 3], [f32::NAN, 0.0, 0.0], [0.0, 0.5, 0.0]],
                vec![0, 1, 2],
            ),
        ];
        for (what, positions, indices) in cases {
            let mesh = TriMesh {
                positions,
                indices,
                colors: vec![[1.0; 3]; 1], // wrong length: treated as uncoloured
                ..Default::default()
            };
            assert_eq!(rasterize(&mesh, &cam).covered(), 0, "{what}");
            let image = render_mesh(&mesh, None, &cam, [0.0; 3], 2);
            assert!(image.data.iter().all(|&v| v == 0.0), "{what}");
        }
        // Trailing indices that make no whole triangle are ignored; the valid one still shows.
        let mesh = TriMesh {
            positions: good.to_vec(),
            indices: vec![7, 0, 1, 2, 0, 1, 2, 5],
            ..Default::default()
        };
        let frags = rasterize(&mesh, &cam);
        assert!(frags.covered() > 10);
        assert!(
            frags
                .triangle
                .iter()
                .all(|&t| t == 1 || t == Fragments::BACKGROUND)
        );
    }

    #[test]
    fn srgb_encoding_inverts_decoding() {
        for v in [0.0, 0.002, 0.01, 0.2, 0.5, 0.9, 1.0] {
            assert!((linear_to_srgb(srgb_to_linear(v)) - v).abs() < 1e-5, "{v}");
        }
    }
}
