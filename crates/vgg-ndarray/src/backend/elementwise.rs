//! `Elementwise`: unary and broadcasting binary ops.

use vgg_tensor::{broadcast_shapes, BinaryOp, Elementwise, Result, UnaryOp};

use super::tensor::view_mut;
use super::{CpuBackend, CpuTensor};
use crate::generic;

impl Elementwise for CpuBackend {
    fn unary(&self, op: UnaryOp, x: &CpuTensor) -> Result<CpuTensor> {
        if op == UnaryOp::Relu {
            return Ok(self.map(x, vgg_tensor::relu));
        }
        Ok(self.build(x.shape.clone(), |out| {
            generic::unary(op, x.view(), view_mut(&x.shape, out))
        }))
    }

    fn binary(&self, op: BinaryOp, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        let shape = broadcast_shapes(op.name(), &a.shape, &b.shape)?;
        shape.checked_elements()?;
        if a.shape == b.shape {
            return Ok(self.zip_map(a, b, move |a, b| op.apply(a, b)));
        }
        Ok(self.build(shape.clone(), |out| {
            generic::binary(op, a.view(), b.view(), view_mut(&shape, out))
        }))
    }
}
