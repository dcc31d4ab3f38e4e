//! Per-tile depth sort on the device: one cube per tile list runs a bitonic sort in place over
//! the list's (depth, index) pairs. Ties are broken by index, so the order is the host's
//! (`host::bin`) whatever order the atomics in [`super::bin`] left.
//!
//! The lists vary in length, so each is sorted as if padded to a power of two with +inf keys;
//! the "always ascending" bitonic network (first step of each merge compares mirrored pairs)
//! never needs to move such padding, so comparisons that reach past the list are skipped.

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{Geometry, list_cubes};

/// Threads per list.
const SORT_THREADS: u32 = 256;

/// Orders entries `i < j` of the current list as (key, id) ascending.
#[cube]
fn compare_swap(keys: &mut Tensor<f32>, ids: &mut Tensor<u32>, i: usize, j: usize) {
    let (ki, kj) = (keys[i], keys[j]);
    let (ii, ij) = (ids[i], ids[j]);
    if kj < ki || (kj == ki && ij < ii) {
        keys[i] = kj;
        keys[j] = ki;
        ids[i] = ij;
        ids[j] = ii;
    }
}

#[cube(launch_unchecked)]
fn sort_kernel(
    offsets: &Tensor<u32>,
    keys: &mut Tensor<f32>,
    ids: &mut Tensor<u32>,
    geo: Geometry,
) {
    let list = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    if list >= (geo.views * geo.tiles) as usize {
        terminate!();
    }
    let start = offsets[list] as usize;
    let len = offsets[list + 1] as usize - start;
    let mut padded = 1usize;
    while padded < len {
        padded *= 2;
    }
    let pairs = padded / 2;
    let t = UNIT_POS as usize;
    let threads = SORT_THREADS as usize;
    let mut size = 2usize;
    while size <= padded {
        // Merge step: mirrored pairs inside each block of `size`.
        let half = size / 2;
        let mut q = t;
        while q < pairs {
            let block = q / half;
            let off = q % half;
            let i = block * size + off;
            let j = block * size + size - 1 - off;
            if j < len {
                compare_swap(keys, ids, start + i, start + j);
            }
            q += threads;
        }
        sync_cube();
        // Half-cleaners.
        let mut stride = half / 2;
        while stride > 0 {
            let mut q = t;
            while q < pairs {
                let i = (q / stride) * 2 * stride + q % stride;
                let j = i + stride;
                if j < len {
                    compare_swap(keys, ids, start + i, start + j);
                }
                q += threads;
            }
            sync_cube();
            stride /= 2;
        }
        size *= 2;
    }
}

/// Sorts every list `offsets[l]..offsets[l + 1]` of `keys`/`ids` by (key, id).
pub(crate) fn sort<R: CubeRuntime>(
    offsets: &CubeTensor<R>,
    keys: &CubeTensor<R>,
    ids: &CubeTensor<R>,
    geo: Geometry,
) {
    let client = &offsets.client;
    unsafe {
        sort_kernel::launch_unchecked::<R>(
            client,
            list_cubes(geo),
            CubeDim::new_1d(SORT_THREADS),
            offsets.clone().into_tensor_arg(),
            keys.clone().into_tensor_arg(),
            ids.clone().into_tensor_arg(),
            geo.arg::<R>(),
        );
    }
}
