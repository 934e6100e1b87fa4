//! `Matmul`: matrix products (the GEMM crate, and the skinny kernel for few rows).

use vgg_tensor::{matmul_dims, Matmul, Result, Shape};

use crate::gemm::{sgemm, Mat, MatMut};

use super::{CpuBackend, CpuTensor};
use crate::skinny;

impl Matmul for CpuBackend {
    fn matmul(&self, a: &CpuTensor, b: &CpuTensor, ta: bool, tb: bool) -> Result<CpuTensor> {
        let (m, n, k) = matmul_dims(&a.shape, &b.shape, ta, tb)?;
        let (ar, ac) = a.shape.matrix("matmul")?;
        let (br, bc) = b.shape.matrix("matmul")?;
        let lhs = Mat::row_major(a.as_slice(), ar, ac);
        let rhs = Mat::row_major(b.as_slice(), br, bc);
        let lhs = if ta { lhs.t() } else { lhs };
        let rhs = if tb { rhs.t() } else { rhs };
        Ok(self.build(Shape::from([m, n]), |c| {
            // A linear layer's forward on a small batch reads a large weight once; its own
            // kernel does that faster than the GEMM.
            if m <= skinny::MAX_ROWS && !ta && tb && k > 0 {
                return skinny::a_bt(a.as_slice(), b.as_slice(), m, n, k, c);
            }
            let dst = MatMut {
                data: c,
                offset: 0,
                rows: m,
                cols: n,
                row_stride: n,
            };
            sgemm(dst, lhs, rhs, false, self.threads)
        }))
    }
}
