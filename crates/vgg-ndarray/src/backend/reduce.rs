//! `Reduce`: sums, maxima and minima over axes.

use vgg_tensor::{check_axes, Reduce, ReduceOp, Result};

use super::{CpuBackend, CpuTensor};
use crate::generic;

impl Reduce for CpuBackend {
    fn reduce(&self, op: ReduceOp, x: &CpuTensor, axes: &[usize]) -> Result<CpuTensor> {
        let shape = check_axes(op.name(), &x.shape, axes)?;
        Ok(self.build(shape, |out| generic::reduce(op, x.view(), axes, out)))
    }
}
