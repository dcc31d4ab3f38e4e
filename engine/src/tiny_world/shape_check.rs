//! A check of a generated Tiny World asset that goes through no CLIP: which shape each colour
//! of the prompt took in the mesh.
//!
//! The mesh's vertices are sorted by their nearest world colour (allowing for the shading the
//! prior's images bake in), and each prompt object's vertices are fitted by every world shape's
//! own SDF ([`Shape::distance`]: centre, size, yaw); the shape that fits best is the one the
//! generator made. The reward and the judge are CLIPs trained on the same renders, so a
//! texture both read as "cube" passes them; this check reads geometry only.

use std::fmt;

use glam::{Quat, Vec3};

use super::captions::{Composition, Item};
use crate::mesh::TriMesh;
use crate::procedural::{Color, Shape};

/// Fewer vertices of a colour than this and the object counts as missing.
pub const MIN_POINTS: usize = 24;

/// Vertices fitted per object (an even subsample beyond): enough to tell the shapes apart,
/// few enough that a check takes well under a second.
const MAX_POINTS: usize = 600;

/// Share of the worst-fitting vertices left out of a fit's error (stray bits of the same
/// colour, the seam where two objects touch).
const TRIM: f32 = 0.1;

/// The range of shading the world's renders multiply albedo by (ambient 0.4 to full light),
/// with a margin: a vertex colour is an albedo seen under some light in it.
const SHADING: (f32, f32) = (0.3, 1.1);

/// One shape fitted to one object's vertices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShapeFit {
    /// The shape.
    pub shape: Shape,
    /// Trimmed mean distance of the vertices to its surface, over the vertices' largest
    /// extent (scale-free: 0 is a perfect fit).
    pub error: f32,
    /// Where it was placed.
    pub center: Vec3,
    /// Its size ([`Shape::distance`]'s).
    pub size: f32,
    /// Its turn about +Y, radians.
    pub yaw: f32,
}

/// What one object of the prompt became.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectShape {
    /// The object the prompt asked for.
    pub item: Item,
    /// Mesh vertices nearest its colour.
    pub points: usize,
    /// Every shape's fit, best first; empty when fewer than [`MIN_POINTS`] vertices have the
    /// colour.
    pub fits: Vec<ShapeFit>,
}

impl ObjectShape {
    /// The shape that fits best, `None` when the colour is missing.
    pub fn shape(&self) -> Option<Shape> {
        self.fits.first().map(|f| f.shape)
    }

    /// Whether the object of this colour has the asked-for shape.
    pub fn is_correct(&self) -> bool {
        self.shape() == Some(self.item.shape)
    }

    /// How far the vertices lie from the asked-for shape at its best fit (the scale-free
    /// [`ShapeFit::error`]); `None` when the colour is missing.
    pub fn asked_error(&self) -> Option<f32> {
        self.fits
            .iter()
            .find(|f| f.shape == self.item.shape)
            .map(|f| f.error)
    }
}

impl fmt::Display for ObjectShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fits.as_slice() {
            [] => write!(f, "{}: missing ({} vertices)", self.item, self.points),
            [best, rest @ ..] => {
                write!(
                    f,
                    "{} -> {} ({:.3}",
                    self.item,
                    best.shape.name(),
                    best.error
                )?;
                // The margin: the asked-for shape's error when it lost, else the runner-up's.
                let other = if best.shape == self.item.shape {
                    rest.first()
                } else {
                    rest.iter().find(|r| r.shape == self.item.shape)
                };
                if let Some(o) = other {
                    write!(f, "; {} {:.3}", o.shape.name(), o.error)?;
                }
                write!(f, ")")
            }
        }
    }
}

/// The shapes of all the prompt's objects.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeCheck {
    /// One per object of the prompt, in the prompt's order.
    pub objects: Vec<ObjectShape>,
}

impl ShapeCheck {
    /// Objects with the asked-for shape.
    pub fn correct(&self) -> usize {
        self.objects.iter().filter(|o| o.is_correct()).count()
    }
}

impl fmt::Display for ShapeCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.objects.iter().map(|o| o.to_string()).collect();
        write!(
            f,
            "{} of {} shapes right: {}",
            self.correct(),
            self.objects.len(),
            parts.join("; ")
        )
    }
}

/// Why a mesh cannot be checked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapeCheckError {
    /// The mesh carries no vertex colours.
    #[error("the mesh has no vertex colours: the shape check sorts vertices by colour")]
    NoColors,
    /// Two objects share a colour.
    #[error("{0} and {1} are both {2}: colours cannot tell them apart")]
    SharedColor(Item, Item, &'static str),
}

/// Fits every world shape to each object of `composition`, found in `mesh` by its colour
/// (`mesh.colors`, linear RGB as exported). Only the up axis is assumed (+Y, as the world's);
/// position, size and the turn about +Y are fitted.
pub fn check_shapes(
    mesh: &TriMesh,
    composition: &Composition,
) -> Result<ShapeCheck, ShapeCheckError> {
    let items = match *composition {
        Composition::Single(a) => vec![a],
        Composition::And(a, b) | Composition::OnTopOf(a, b) => vec![a, b],
    };
    check_items(mesh, &items)
}

/// [`check_shapes`] for any list of objects of distinct colours (a scene of more than two,
/// such as [`crate::procedural::SdfScene::example`]).
pub fn check_items(mesh: &TriMesh, items: &[Item]) -> Result<ShapeCheck, ShapeCheckError> {
    if mesh.colors.len() != mesh.positions.len() || mesh.positions.is_empty() {
        return Err(ShapeCheckError::NoColors);
    }
    for (i, a) in items.iter().enumerate() {
        if let Some(b) = items[i + 1..].iter().find(|b| b.color == a.color) {
            return Err(ShapeCheckError::SharedColor(*a, *b, a.color.name()));
        }
    }
    let nearest: Vec<Color> = mesh
        .colors
        .iter()
        .map(|c| nearest_color(Vec3::from(c.map(linear_to_srgb))))
        .collect();
    let objects = items
        .iter()
        .map(|&item| {
            let points: Vec<Vec3> = mesh
                .positions
                .iter()
                .zip(&nearest)
                .filter(|(_, c)| **c == item.color)
                .map(|(p, _)| Vec3::from(*p))
                .collect();
            let fits = if points.len() < MIN_POINTS {
                Vec::new()
            } else {
                fit_all(&subsample(&points, MAX_POINTS))
            };
            ObjectShape {
                item,
                points: points.len(),
                fits,
            }
        })
        .collect();
    Ok(ShapeCheck { objects })
}

/// The world colour whose albedo, under some shading in `SHADING`, is closest to `srgb`.
pub fn nearest_color(srgb: Vec3) -> Color {
    let distance = |c: Color| {
        let a = c.albedo();
        let k = (srgb.dot(a) / a.dot(a)).clamp(SHADING.0, SHADING.1);
        (srgb - a * k).length_squared()
    };
    Color::ALL
        .into_iter()
        .min_by(|a, b| distance(*a).total_cmp(&distance(*b)))
        .expect("the world has colours")
}

/// sRGB encoding of a linear value (the inverse of [`crate::mesh::srgb_to_linear`]).
fn linear_to_srgb(v: f32) -> f32 {
    let v = v.clamp(0.0, 1.0);
    if v <= 0.003_130_8 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    }
}

fn subsample(points: &[Vec3], n: usize) -> Vec<Vec3> {
    let stride = points.len().div_ceil(n).max(1);
    points.iter().step_by(stride).copied().collect()
}

/// Every shape's best fit, best first.
fn fit_all(points: &[Vec3]) -> Vec<ShapeFit> {
    let (lo, hi) = points.iter().fold(
        (Vec3::splat(f32::INFINITY), Vec3::splat(f32::NEG_INFINITY)),
        |(lo, hi), p| (lo.min(*p), hi.max(*p)),
    );
    let extent = (hi - lo).max_element().max(1e-6);
    let mut fits: Vec<ShapeFit> = Shape::ALL
        .into_iter()
        .map(|shape| fit(shape, points, (lo + hi) * 0.5, extent))
        .collect();
    fits.sort_by(|a, b| a.error.total_cmp(&b.error));
    fits
}

/// The shape's widest extent per unit size (its bounding box, from [`Shape::distance`]).
fn widest(shape: Shape) -> f32 {
    if shape == Shape::Cube { 0.8 } else { 1.0 }
}

/// Compass search over centre, log size and yaw from the bounding box's centre and size, a
/// few yaws for the cube (the only shape not symmetric about +Y). Hand-written: five
/// parameters, a cheap objective, no gradient; an optimisation crate would be a heavy
/// dependency for this.
fn fit(shape: Shape, points: &[Vec3], center: Vec3, extent: f32) -> ShapeFit {
    let size0 = extent / widest(shape);
    // Size stays within a third of the bounding box's: a huge shape would pass near any
    // small patch of points.
    let (log_lo, log_hi) = ((size0 * 0.75).ln(), (size0 * 1.33).ln());
    let error = |x: &[f32; 5]| {
        let c = Vec3::new(x[0], x[1], x[2]);
        let size = x[3].clamp(log_lo, log_hi).exp();
        let turn = Quat::from_rotation_y(-x[4]);
        let mut d: Vec<f32> = points
            .iter()
            .map(|p| shape.distance(turn * (*p - c), size).abs())
            .collect();
        let keep = ((1.0 - TRIM) * d.len() as f32).ceil().max(1.0) as usize;
        d.select_nth_unstable_by(keep - 1, f32::total_cmp);
        d[..keep].iter().sum::<f32>() / keep as f32 / extent
    };
    let yaws: &[f32] = if shape == Shape::Cube {
        &[0.0, 0.4, 0.8, 1.2]
    } else {
        &[0.0]
    };
    let mut best = ([0.0; 5], f32::INFINITY);
    for &yaw in yaws {
        let mut x = [center.x, center.y, center.z, size0.ln(), yaw];
        let mut e = error(&x);
        let mut step = [0.1 * extent, 0.1 * extent, 0.1 * extent, 0.1, 0.2];
        for _ in 0..200 {
            let mut improved = false;
            for i in 0..5 {
                for sign in [1.0, -1.0] {
                    let mut y = x;
                    y[i] += sign * step[i];
                    let ey = error(&y);
                    if ey < e {
                        (x, e, improved) = (y, ey, true);
                    }
                }
            }
            if !improved {
                step.iter_mut().for_each(|s| *s *= 0.5);
                if step[3] < 1e-3 {
                    break;
                }
            }
        }
        if e < best.1 {
            best = (x, e);
        }
    }
    let (x, error) = best;
    ShapeFit {
        shape,
        error,
        center: Vec3::new(x[0], x[1], x[2]),
        size: x[3].clamp(log_lo, log_hi).exp(),
        yaw: x[4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaded_world_colours_are_found_and_survive_the_srgb_round_trip() {
        for color in Color::ALL {
            for shade in [0.4, 0.7, 1.0] {
                let seen = color.albedo() * shade;
                let exported = seen.to_array().map(crate::mesh::srgb_to_linear);
                let back = Vec3::from(exported.map(linear_to_srgb));
                assert!((back - seen).abs().max_element() < 1e-4, "{color:?}");
                assert_eq!(nearest_color(back), color, "{color:?} at shade {shade}");
            }
        }
    }
}
