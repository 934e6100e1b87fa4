//! Permute, slice and concat: one gather and one scatter kernel through a strided view
//! (layout.cu's `Strided`), which moves any axis arrangement of up to `MAX_RANK` dimensions.

use cudarc::driver::{DeviceRepr, PushKernelArg};
use vgg_tensor::{
    check_concat, check_permutation, check_slice, Layout, Result, Shape, TensorError,
};

use crate::backend::{elementwise, launch, CudaBackend, CudaTensor};
use crate::device_error;

/// The largest rank the strided kernels index (common.cuh's MAX_RANK).
pub(crate) const MAX_RANK: usize = 8;

/// The rank of `shape` as the kernels take it, refusing ranks they cannot index.
pub(crate) fn rank_checked(op: &'static str, shape: &Shape) -> Result<i32> {
    if shape.rank() > MAX_RANK {
        return Err(TensorError::InvalidArgument {
            op,
            message: format!(
                "the CUDA backend indexes at most {MAX_RANK} dimensions, not {} ({shape})",
                shape.rank()
            ),
        });
    }
    Ok(shape.rank() as i32)
}

/// `Strided` of common.cuh: element i of a contiguous tensor of `dims` is element
/// `offset + sum(index[d] * strides[d])` of the viewed buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided {
    rank: i32,
    dims: [i64; MAX_RANK],
    strides: [i64; MAX_RANK],
    offset: i64,
}

// SAFETY: a plain #[repr(C)] struct of integers, laid out as the kernel's `Strided`.
unsafe impl DeviceRepr for Strided {}

impl Strided {
    /// A view of `dims` through `strides` from `offset`.
    pub(crate) fn new(
        op: &'static str,
        dims: &Shape,
        strides: &[usize],
        offset: usize,
    ) -> Result<Strided> {
        let rank = rank_checked(op, dims)?;
        let mut s = Strided {
            rank,
            dims: [1; MAX_RANK],
            strides: [0; MAX_RANK],
            offset: offset as i64,
        };
        for (i, (&d, &st)) in dims.dims().iter().zip(strides).enumerate() {
            s.dims[i] = d as i64;
            s.strides[i] = st as i64;
        }
        Ok(s)
    }
}

impl CudaBackend {
    /// A new tensor of `shape` holding the elements of `x` seen through `view`.
    pub(crate) fn gather(&self, x: &CudaTensor, shape: Shape, view: Strided) -> Result<CudaTensor> {
        let n = shape.checked_elements()? as i64;
        self.build(shape, |out| {
            launch!(
                self,
                "gather_strided",
                elementwise(n as usize),
                x.slice(),
                out,
                &n,
                &view
            );
            Ok(())
        })
    }
}

impl Layout for CudaBackend {
    fn permute(&self, x: &CudaTensor, perm: &[usize]) -> Result<CudaTensor> {
        let shape = check_permutation("permute", &x.shape, perm)?;
        let strides = x.shape.strides();
        let permuted: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
        let view = Strided::new("permute", &shape, &permuted, 0)?;
        self.gather(x, shape, view)
    }

    fn slice(&self, x: &CudaTensor, axis: usize, start: usize, len: usize) -> Result<CudaTensor> {
        let shape = check_slice("slice", &x.shape, axis, start, len)?;
        let strides = x.shape.strides();
        let view = Strided::new("slice", &shape, &strides, start * strides[axis])?;
        self.gather(x, shape, view)
    }

    fn concat(&self, xs: &[&CudaTensor], axis: usize) -> Result<CudaTensor> {
        let shapes: Vec<&Shape> = xs.iter().map(|x| &x.shape).collect();
        let shape = check_concat("concat", &shapes, axis)?;
        shape.checked_elements()?;
        let out_strides = shape.strides();
        let views = xs
            .iter()
            .scan(0usize, |at, x| {
                let view = Strided::new("concat", &x.shape, &out_strides, *at * out_strides[axis]);
                *at += x.shape.dims()[axis];
                Some(view)
            })
            .collect::<Result<Vec<_>>>()?;
        self.build(shape, |out| {
            for (x, view) in xs.iter().zip(&views) {
                let n = x.shape.elements() as i64;
                if n > 0 {
                    let target = &mut *out;
                    launch!(
                        self,
                        "scatter_strided",
                        elementwise(n as usize),
                        x.slice(),
                        target,
                        &n,
                        view
                    );
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgg_tensor::reference::ReferenceBackend;
    use vgg_tensor::{Device, DeviceTensor};

    /// common.cuh's `strided_offset`, line for line: the tests check the views built here move
    /// the same elements as the reference backend (no GPU needed).
    pub(crate) fn strided_offset(mut i: i64, s: &Strided) -> usize {
        let mut o = s.offset;
        for d in (0..s.rank as usize).rev() {
            let idx = i % s.dims[d];
            i /= s.dims[d];
            o += idx * s.strides[d];
        }
        o as usize
    }

    fn values(dims: &[usize]) -> Vec<f32> {
        (0..dims.iter().product::<usize>())
            .map(|i| i as f32)
            .collect()
    }

    #[test]
    fn views_move_the_elements_the_reference_backend_does() {
        let r = ReferenceBackend;
        let dims = [2, 3, 4, 5];
        let host = values(&dims);
        let x = r.upload(&Shape::from(dims), &host).unwrap();
        let strides = x.shape().strides();
        // Permute.
        let perm = [2, 0, 3, 1];
        let want = r.permute(&x, &perm).unwrap();
        let permuted: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
        let view = Strided::new("t", want.shape(), &permuted, 0).unwrap();
        let got: Vec<f32> = (0..want.shape().elements() as i64)
            .map(|i| host[strided_offset(i, &view)])
            .collect();
        assert_eq!(got, want.values());
        // Slice.
        let want = r.slice(&x, 2, 1, 2).unwrap();
        let view = Strided::new("t", want.shape(), &strides, strides[2]).unwrap();
        let got: Vec<f32> = (0..want.shape().elements() as i64)
            .map(|i| host[strided_offset(i, &view)])
            .collect();
        assert_eq!(got, want.values());
        // Concat: each part scattered into the joined tensor.
        let parts = [x.clone(), r.slice(&x, 1, 0, 1).unwrap()];
        let want = r.concat(&[&parts[0], &parts[1]], 1).unwrap();
        let out_strides = want.shape().strides();
        let mut got = vec![f32::NAN; want.shape().elements()];
        let mut at = 0;
        for part in &parts {
            let view = Strided::new("t", part.shape(), &out_strides, at * out_strides[1]).unwrap();
            for (i, &v) in part.values().iter().enumerate() {
                got[strided_offset(i as i64, &view)] = v;
            }
            at += part.shape().dims()[1];
        }
        assert_eq!(got, want.values());
    }

    #[test]
    fn ranks_beyond_the_kernels_are_refused() {
        assert!(rank_checked("t", &Shape::from(vec![1; MAX_RANK])).is_ok());
        let e = rank_checked("t", &Shape::from(vec![1; MAX_RANK + 1])).unwrap_err();
        assert!(e.to_string().contains("at most 8"), "{e}");
    }
}
