//! The CPU tensor: a shape over a shared, recycled buffer (copied on write), and max-pooling's
//! indices.

use std::sync::Arc;

use vgg_tensor::{DeviceTensor, PoolGeometry, Shape};

use crate::buffer::Buffer;

/// A tensor in host memory.
#[derive(Clone, Debug)]
pub struct CpuTensor {
    pub(crate) shape: Shape,
    pub(crate) buf: Arc<Buffer>,
}

impl CpuTensor {
    /// The values in row-major order.
    pub fn as_slice(&self) -> &[f32] {
        self.buf.as_slice()
    }

    /// Mutable values; copies the buffer first if another tensor shares it.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        if Arc::get_mut(&mut self.buf).is_none() {
            let mut copy = Buffer::uninit(self.buf.accounting(), self.shape.elements());
            copy.as_mut_slice().copy_from_slice(self.buf.as_slice());
            self.buf = Arc::new(copy);
        }
        Arc::get_mut(&mut self.buf)
            .expect("unique after the copy")
            .as_mut_slice()
    }

    /// The buffer as an ndarray view of this tensor's shape.
    pub fn view(&self) -> ndarray::ArrayViewD<'_, f32> {
        ndarray::ArrayViewD::from_shape(self.shape.dims(), self.as_slice())
            .expect("shape matches the buffer")
    }
}

/// A buffer being filled, as an ndarray view of `shape`.
pub(crate) fn view_mut<'a>(shape: &Shape, out: &'a mut [f32]) -> ndarray::ArrayViewMutD<'a, f32> {
    ndarray::ArrayViewMutD::from_shape(shape.dims(), out).expect("shape matches the buffer")
}

impl DeviceTensor for CpuTensor {
    fn shape(&self) -> &Shape {
        &self.shape
    }
}

/// Each pool output's maximum's position within its window, and the geometry it belongs to.
#[derive(Clone, Debug)]
pub struct CpuPoolIndices {
    pub(crate) geometry: PoolGeometry,
    pub(crate) indices: Arc<Vec<u8>>,
}
