//! Reading the reference outputs a parity fixture stores in an `io.safetensors` (each test file
//! that needs it includes this with `mod fixture_io;`).
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion as _, Tensor};
use burn_store::{ModuleStore, SafetensorsStore};

/// Named tensors of an `io.safetensors` fixture.
pub struct Io(SafetensorsStore);

impl Io {
    /// The fixture file.
    pub fn open(file: PathBuf) -> Self {
        Self(SafetensorsStore::from_file(file))
    }

    /// The tensor `name` on backend `Bk`; panics naming it when the fixture lacks it.
    pub fn get<Bk: Backend, const D: usize>(&mut self, name: &str) -> Tensor<Bk, D> {
        let data = self
            .0
            .get_snapshot(name)
            .unwrap()
            .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
            .to_data()
            .unwrap();
        Tensor::from_data(data, &Default::default())
    }
}

/// Largest absolute difference of two tensors of the same shape.
pub fn max_abs_diff<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar().elem()
}
