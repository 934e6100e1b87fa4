//! Reductions over any axes: the reduced axes are moved last (a strided gather, skipped when they
//! already are), then one block reduces each contiguous run (reduce.cu's `reduce_rows`).

use cudarc::driver::PushKernelArg;
use vgg_tensor::{check_axes, Device, Reduce, ReduceOp, Result, Shape};

use crate::backend::{launch, per_row, CudaBackend, CudaTensor};
use crate::device_error;
use crate::layout::Strided;

/// The code of a `ReduceOp` in `reduce_rows`.
fn reduce_code(op: ReduceOp) -> i32 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Max => 1,
        ReduceOp::Min => 2,
    }
}

impl Reduce for CudaBackend {
    fn reduce(&self, op: ReduceOp, x: &CudaTensor, axes: &[usize]) -> Result<CudaTensor> {
        let out = check_axes(op.name(), &x.shape, axes)?;
        let kept = (0..x.shape.rank()).filter(|a| !axes.contains(a));
        let perm: Vec<usize> = kept.chain(axes.iter().copied()).collect();
        let run: usize = axes.iter().map(|&a| x.shape.dims()[a]).product();
        let rows = out.elements();
        if run == 0 || rows == 0 {
            return self.full(&out, op.apply(std::iter::empty()));
        }
        let arranged = if perm.iter().enumerate().all(|(i, &p)| i == p) {
            x.clone()
        } else {
            let dims = Shape::from(perm.iter().map(|&p| x.shape.dims()[p]).collect::<Vec<_>>());
            let strides = x.shape.strides();
            let permuted: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
            self.gather(
                x,
                dims.clone(),
                Strided::new(op.name(), &dims, &permuted, 0)?,
            )?
        };
        let (run, code) = (run as i64, reduce_code(op));
        self.build(out, |y| {
            launch!(
                self,
                "reduce_rows",
                per_row(rows)?,
                arranged.slice(),
                y,
                &run,
                &code
            );
            Ok(())
        })
    }
}
