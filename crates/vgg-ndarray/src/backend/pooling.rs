//! `Pooling`: max and average pooling and their gradients, through the `pool` kernels.

use std::sync::Arc;

use vgg_tensor::{same_shape, Pool2dParams, PoolGeometry, Pooling, Result, Shape, TensorError};

use super::{CpuBackend, CpuPoolIndices, CpuTensor};
use crate::pooling;

impl Pooling for CpuBackend {
    type PoolIndices = CpuPoolIndices;

    fn max_pool2d(&self, x: &CpuTensor, p: Pool2dParams) -> Result<(CpuTensor, CpuPoolIndices)> {
        let g = PoolGeometry::new(&x.shape, p)?;
        if g.kernel > pooling::MAX_WINDOW {
            return Err(TensorError::InvalidArgument {
                op: "max_pool2d",
                message: format!(
                    "{0}x{0} windows are not supported; the largest is 16x16",
                    g.kernel
                ),
            });
        }
        let mut indices = vec![0u8; g.output_shape().elements()];
        let y = self.build(g.output_shape(), |y| {
            pooling::forward(x.as_slice(), &g, y, &mut indices)
        });
        Ok((
            y,
            CpuPoolIndices {
                geometry: g,
                indices: Arc::new(indices),
            },
        ))
    }

    fn max_pool2d_backward(
        &self,
        dy: &CpuTensor,
        indices: &CpuPoolIndices,
        input_shape: &Shape,
    ) -> Result<CpuTensor> {
        let g = &indices.geometry;
        same_shape("max_pool2d_backward", &g.input_shape(), input_shape)?;
        same_shape("max_pool2d_backward", &dy.shape, &g.output_shape())?;
        Ok(self.build(input_shape.clone(), |dx| {
            pooling::backward(dy.as_slice(), &indices.indices, g, dx)
        }))
    }

    fn avg_pool2d(&self, x: &CpuTensor, p: Pool2dParams) -> Result<CpuTensor> {
        let g = PoolGeometry::for_op("avg_pool2d", &x.shape, p)?;
        Ok(self.build(g.output_shape(), |y| {
            pooling::avg_forward(x.as_slice(), &g, y)
        }))
    }

    fn avg_pool2d_backward(
        &self,
        dy: &CpuTensor,
        input_shape: &Shape,
        p: Pool2dParams,
    ) -> Result<CpuTensor> {
        let g = PoolGeometry::for_op("avg_pool2d_backward", input_shape, p)?;
        same_shape("avg_pool2d_backward", &dy.shape, &g.output_shape())?;
        Ok(self.build(input_shape.clone(), |dx| {
            pooling::avg_backward(dy.as_slice(), &g, dx)
        }))
    }
}
