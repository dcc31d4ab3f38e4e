//! Why a mesh could not be made.

/// A mesh-stage failure; the message names the setting, field or value at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MeshError {
    /// A setting is out of range.
    #[error("mesh setting {name} = {value}: {why}")]
    BadConfig {
        /// The setting's name, as in [`MeshConfig`](super::MeshConfig).
        name: &'static str,
        /// Its value, printed.
        value: String,
        /// What it must be instead.
        why: &'static str,
    },
    /// The sampling box is empty, inverted or not finite.
    #[error("sampling bounds {min:?}..{max:?} must be finite with max > min on every axis")]
    BadBounds {
        /// Lower corner.
        min: [f32; 3],
        /// Upper corner.
        max: [f32; 3],
    },
    /// The field answered with a different number of values than points asked about.
    #[error("{field} field returned {got} values for {expected} points")]
    FieldLength {
        /// Which field: "density" or "albedo".
        field: &'static str,
        /// Points asked about.
        expected: usize,
        /// Values returned.
        got: usize,
    },
    /// The field returned NaN or infinity.
    #[error("{field} field is not finite at {count} of the sampled points (first at {first:?})")]
    NonFinite {
        /// Which field: "density" or "albedo".
        field: &'static str,
        /// How many samples were not finite.
        count: usize,
        /// World position of the first one.
        first: [f32; 3],
    },
    /// Nothing in the sampled box is denser than the iso-level: there is no surface to extract.
    #[error(
        "empty field: no density above the iso-level {iso_level} in the sampled box \
         (largest density {max_density}); lower the iso-level or check that the scene holds an object"
    )]
    EmptyField {
        /// The iso-level used.
        iso_level: f32,
        /// The largest sampled density.
        max_density: f32,
    },
    /// Floater removal or simplification left no triangles (for example a budget of zero).
    #[error("the {stage} stage left no triangles")]
    NoTriangles {
        /// The stage that emptied the mesh.
        stage: &'static str,
    },
    /// The UV unwrapper failed on the mesh.
    #[error("UV unwrap failed: {0}")]
    Unwrap(String),
}
