//! `Layout`: permute, slice, concat.

use vgg_tensor::{check_concat, check_permutation, check_slice, Layout, Result, Shape};

use super::tensor::view_mut;
use super::{CpuBackend, CpuTensor};
use crate::generic;

impl Layout for CpuBackend {
    fn permute(&self, x: &CpuTensor, perm: &[usize]) -> Result<CpuTensor> {
        let shape = check_permutation("permute", &x.shape, perm)?;
        Ok(self.build(shape.clone(), |out| {
            generic::permute(x.view(), perm, view_mut(&shape, out))
        }))
    }

    fn slice(&self, x: &CpuTensor, axis: usize, start: usize, len: usize) -> Result<CpuTensor> {
        let shape = check_slice("slice", &x.shape, axis, start, len)?;
        Ok(self.build(shape.clone(), |out| {
            generic::slice(x.view(), axis, start, len, view_mut(&shape, out))
        }))
    }

    fn concat(&self, xs: &[&CpuTensor], axis: usize) -> Result<CpuTensor> {
        let shapes: Vec<&Shape> = xs.iter().map(|x| &x.shape).collect();
        let shape = check_concat("concat", &shapes, axis)?;
        shape.checked_elements()?;
        let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
        Ok(self.build(shape.clone(), |out| {
            generic::concat(&views, axis, view_mut(&shape, out))
        }))
    }
}
