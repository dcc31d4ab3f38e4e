//! Multiresolution hash encoding (Müller et al. 2022, Instant-NGP).
//!
//! Level `l` has a grid of resolution `R_l = floor(base * b^l)`, with `b` chosen so the last
//! level reaches `max_resolution`. A coarse level whose `(R_l + 1)^3` vertices fit in the table
//! is indexed densely; finer levels hash the vertex `(x, y, z)` as
//! `(x * 1) ^ (y * 2654435761) ^ (z * 805459861) mod T`. Features of the 8 surrounding vertices
//! are blended trilinearly. All levels live in one parameter tensor; the encoding is one custom
//! op that gathers every corner of every level and whose backward scatter-adds into the table
//! (host loops on the CPU, CubeCL kernels on wgpu and CUDA: see `hash_grid_op`).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Distribution, Int, Tensor, TensorPrimitive, backend::Backend};

use super::hash_grid_op::{GridLayout, HashGridBackend, corners_tensor};

/// Hash-grid settings; defaults are threestudio's (16 levels, 2 features, 2^19 entries,
/// resolutions 16 to 4096, i.e. per-level scale 1.4473).
#[derive(Config, Debug, PartialEq)]
pub struct HashGridConfig {
    /// Number of resolution levels.
    #[config(default = 16)]
    pub n_levels: usize,
    /// Features stored per vertex and level.
    #[config(default = 2)]
    pub n_features_per_level: usize,
    /// Entries per level table, log2.
    #[config(default = 19)]
    pub log2_hashmap_size: u32,
    /// Grid resolution of the coarsest level.
    #[config(default = 16)]
    pub base_resolution: u32,
    /// Grid resolution of the finest level.
    #[config(default = 4096)]
    pub max_resolution: u32,
    /// Entries start uniform in `[-init_scale, init_scale]` (Instant-NGP: 1e-4).
    #[config(default = 1e-4)]
    pub init_scale: f64,
}

/// Where one level lives in the shared table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelLayout {
    /// Grid resolution (cells per axis).
    pub resolution: u32,
    /// First row of this level in the table.
    pub offset: usize,
    /// Rows owned by this level.
    pub size: usize,
    /// Dense (collision-free) indexing instead of hashing.
    pub dense: bool,
}

impl HashGridConfig {
    /// Growth factor between levels.
    pub fn per_level_scale(&self) -> f64 {
        if self.n_levels <= 1 {
            return 1.0;
        }
        (f64::from(self.max_resolution) / f64::from(self.base_resolution)).ln()
            / (self.n_levels - 1) as f64
    }

    /// Resolution, table offset and size of every level.
    pub fn layout(&self) -> Vec<LevelLayout> {
        let table = 1usize << self.log2_hashmap_size;
        let scale = self.per_level_scale().exp();
        let mut offset = 0;
        (0..self.n_levels)
            .map(|l| {
                let resolution =
                    (f64::from(self.base_resolution) * scale.powi(l as i32)).floor() as u32;
                let vertices = (resolution as usize + 1).pow(3);
                let dense = vertices <= table;
                let size = if dense { vertices } else { table };
                let level = LevelLayout {
                    resolution,
                    offset,
                    size,
                    dense,
                };
                offset += size;
                level
            })
            .collect()
    }

    /// Output width: `n_levels * n_features_per_level`.
    pub fn output_dim(&self) -> usize {
        self.n_levels * self.n_features_per_level
    }

    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.n_levels == 0 {
            return Err("hash grid n_levels must be at least 1".into());
        }
        if self.n_features_per_level == 0 {
            return Err("hash grid n_features_per_level must be at least 1".into());
        }
        if !(4..=24).contains(&self.log2_hashmap_size) {
            return Err(format!(
                "hash grid log2_hashmap_size {} must lie in [4, 24]",
                self.log2_hashmap_size
            ));
        }
        if self.base_resolution < 2 || self.max_resolution < self.base_resolution {
            return Err(format!(
                "hash grid resolutions base {} / max {}: need 2 <= base <= max",
                self.base_resolution, self.max_resolution
            ));
        }
        if self.max_resolution > 1 << 16 {
            return Err(format!(
                "hash grid max_resolution {} exceeds 65536",
                self.max_resolution
            ));
        }
        Ok(())
    }

    /// A grid with small random entries.
    pub fn init<B: Backend>(&self, device: &B::Device) -> HashGrid<B> {
        let layout = self.layout();
        let rows = layout.iter().map(|l| l.size).sum::<usize>();
        let s = self.init_scale;
        let embeddings = Tensor::random(
            [rows, self.n_features_per_level],
            Distribution::Uniform(-s, s),
            device,
        );
        HashGrid {
            embeddings: Param::from_tensor(embeddings),
            layout: GridLayout {
                levels: layout,
                features: self.n_features_per_level,
                rows,
            },
        }
    }
}

/// The encoding module: one trainable table `[rows, features]` holding every level.
#[derive(Module, Debug)]
pub struct HashGrid<B: Backend> {
    /// All levels' entries, level after level.
    pub embeddings: Param<Tensor<B, 2>>,
    #[module(skip)]
    layout: GridLayout,
}

impl<B: Backend> HashGrid<B> {
    /// Level layout (resolutions, offsets).
    pub fn layout(&self) -> &[LevelLayout] {
        &self.layout.levels
    }

    /// Output width.
    pub fn output_dim(&self) -> usize {
        self.layout.levels.len() * self.layout.features
    }

    /// Table rows (indices) and trilinear weights of the 8 corners at every level, computed
    /// with tensor ops: indices `[points * levels * 8]`, weights `[points, levels, 8]`.
    pub fn corners(&self, x: Tensor<B, 2>) -> (Tensor<B, 1, Int>, Tensor<B, 3>) {
        corners_tensor(x, &self.layout)
    }
}

impl<B: HashGridBackend> HashGrid<B> {
    /// Encodes points.
    ///
    /// # Shapes
    /// - `x`: `[points, 3]` in `[0, 1]` (clamped)
    /// - returns `[points, levels * features]`, level-major.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let table = self.embeddings.val().into_primitive().tensor();
        let out = B::hash_grid_encode(table, x.into_primitive().tensor(), &self.layout);
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn small() -> HashGridConfig {
        HashGridConfig::new()
            .with_n_levels(4)
            .with_log2_hashmap_size(10)
            .with_base_resolution(4)
            .with_max_resolution(32)
    }

    #[test]
    fn layout_packs_dense_then_hashed_levels() {
        let layout = small().layout();
        assert_eq!(
            layout.iter().map(|l| l.resolution).collect::<Vec<_>>(),
            vec![4, 8, 16, 32]
        );
        assert_eq!(layout[0].size, 125);
        assert!(layout[0].dense && layout[1].dense); // 9^3 = 729 <= 1024
        assert!(!layout[2].dense && layout[2].size == 1024);
        assert_eq!(layout[3].offset, 125 + 729 + 1024);
        let threestudio = HashGridConfig::new();
        assert!((threestudio.per_level_scale().exp() - 1.447269237440378).abs() < 1e-6);
    }

    #[test]
    fn indices_stay_in_their_level_and_weights_sum_to_one() {
        let device = Default::default();
        let grid = small().init::<B>(&device);
        let x = Tensor::<B, 2>::random([257, 3], Distribution::Uniform(-0.1, 1.1), &device);
        let (index, weights) = grid.corners(x);
        let index: Vec<i64> = index.into_data().to_vec().unwrap();
        for (i, &row) in index.iter().enumerate() {
            let level = &grid.layout()[(i / 8) % 4];
            let row = row as usize;
            assert!(
                row >= level.offset && row < level.offset + level.size,
                "row {row} outside level {level:?}"
            );
        }
        let sums: Vec<f32> = weights.sum_dim(2).into_data().to_vec().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
    }

    /// The custom op (host loops) agrees with the tensor formulation, forward and backward.
    #[test]
    fn custom_op_matches_tensor_reference() {
        use burn::backend::Autodiff;
        type A = Autodiff<B>;
        let device = Default::default();
        let grid = small().with_init_scale(0.5).init::<A>(&device);
        let x = Tensor::<A, 2>::random([300, 3], Distribution::Uniform(0.0, 1.0), &device);
        let probe = Tensor::<A, 2>::random([300, 8], Distribution::Uniform(-1.0, 1.0), &device);

        let fast = grid.forward(x.clone());
        let (index, weights) = grid.corners(x.clone());
        let reference = (grid
            .embeddings
            .val()
            .select(0, index)
            .reshape([300, 4, 8, 2])
            * weights.unsqueeze_dim::<4>(3))
        .sum_dim(2)
        .reshape([300, 8]);
        let err = (fast.clone() - reference.clone()).abs().max().into_scalar();
        assert!(err < 1e-6, "forward max abs error {err}");

        let g_fast = grid
            .embeddings
            .grad(&(fast * probe.clone()).sum().backward())
            .unwrap();
        let g_ref = grid
            .embeddings
            .grad(&(reference * probe).sum().backward())
            .unwrap();
        let err = (g_fast - g_ref).abs().max().into_scalar();
        assert!(err < 1e-5, "backward max abs error {err}");
    }

    #[test]
    fn vertices_reproduce_their_entries_and_hash_matches_instant_ngp() {
        let device = Default::default();
        let grid = small().init::<B>(&device);
        // A point on a vertex of every level (resolutions 4, 8, 16, 32).
        let x = Tensor::<B, 2>::from_floats([[0.25, 0.5, 0.75]], &device);
        let (index, weights) = grid.corners(x.clone());
        let index: Vec<i64> = index.into_data().to_vec().unwrap();
        let weights: Vec<f32> = weights.into_data().to_vec().unwrap();
        let table: Vec<f32> = grid.embeddings.val().into_data().to_vec().unwrap();
        let out: Vec<f32> = grid.forward(x).into_data().to_vec().unwrap();
        for (l, level) in grid.layout().iter().enumerate() {
            let r = level.resolution as u64;
            let v = [r / 4, r / 2, 3 * r / 4];
            let expected = if level.dense {
                v[0] + v[1] * (r + 1) + v[2] * (r + 1) * (r + 1)
            } else {
                let h = (v[0] as u32)
                    ^ (v[1] as u32).wrapping_mul(2_654_435_761)
                    ^ (v[2] as u32).wrapping_mul(805_459_861);
                u64::from(h) % level.size as u64
            } as usize
                + level.offset;
            // Corner 0 carries all the weight.
            assert!(
                (weights[l * 8] - 1.0).abs() < 1e-6,
                "level {l} weights {:?}",
                &weights[l * 8..l * 8 + 8]
            );
            assert_eq!(index[l * 8] as usize, expected, "level {l}");
            for f in 0..2 {
                assert!((out[l * 2 + f] - table[expected * 2 + f]).abs() < 1e-7);
            }
        }
    }
}
