//! Moving a module's parameters between backends (CPU <-> GPU checks, device moves) without
//! files: collect every float parameter's data in visiting order, then assign it in the same
//! order into a module of the same structure on the other backend.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData, backend::Backend};

struct Collect(Vec<TensorData>);

impl<B: Backend> ModuleVisitor<B> for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().into_data());
    }
}

struct Assign<'a, B: Backend> {
    data: std::vec::IntoIter<TensorData>,
    device: &'a B::Device,
}

impl<B: Backend> ModuleMapper<B> for Assign<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let data = self.data.next().expect("modules have the same structure");
        assert_eq!(
            data.shape.as_slice(),
            param.shape().as_slice(),
            "modules have the same parameter shapes"
        );
        param.map(|t| Tensor::from_data(data, self.device).require_grad_if(t.is_require_grad()))
    }
}

trait RequireGradIf {
    fn require_grad_if(self, yes: bool) -> Self;
}

impl<B: Backend, const D: usize> RequireGradIf for Tensor<B, D> {
    fn require_grad_if(self, yes: bool) -> Self {
        if yes { self.require_grad() } else { self }
    }
}

/// Copies every float parameter of `from` into `into` (same module type on another backend),
/// on `device`. Panics if the two differ in structure: that is a programming error.
pub fn copy_params<B1: Backend, B2: Backend, M1: Module<B1>, M2: Module<B2>>(
    from: &M1,
    into: M2,
    device: &B2::Device,
) -> M2 {
    let mut collect = Collect(Vec::new());
    from.visit(&mut collect);
    let count = collect.0.len();
    let mut assign = Assign::<B2> {
        data: collect.0.into_iter(),
        device,
    };
    let out = into.map(&mut assign);
    assert_eq!(
        assign.data.len(),
        0,
        "target module has fewer than {count} parameters"
    );
    out
}
