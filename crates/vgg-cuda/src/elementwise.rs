//! The elementwise primitives: the op-coded kernels of elementwise.cu, with NumPy broadcasting
//! through per-operand strides that are 0 on broadcast axes.

use cudarc::driver::{DeviceRepr, PushKernelArg};
use vgg_tensor::{broadcast_shapes, BinaryOp, Elementwise, Result, Shape, UnaryOp};

use crate::backend::{elementwise, launch, CudaBackend, CudaTensor};
use crate::device_error;
use crate::layout::{rank_checked, MAX_RANK};

/// The code of a `UnaryOp` in `unary_value` (elementwise.cu).
fn unary_code(op: UnaryOp) -> i32 {
    match op {
        UnaryOp::Neg => 0,
        UnaryOp::Abs => 1,
        UnaryOp::Exp => 2,
        UnaryOp::Log => 3,
        UnaryOp::Sqrt => 4,
        UnaryOp::Recip => 5,
        UnaryOp::Square => 6,
        UnaryOp::Tanh => 7,
        UnaryOp::Sigmoid => 8,
        UnaryOp::Relu => 9,
    }
}

/// The code of a `BinaryOp` in `binary_value` (elementwise.cu).
fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Max => 4,
        BinaryOp::Min => 5,
        BinaryOp::Greater => 6,
        BinaryOp::Equal => 7,
    }
}

/// `Broadcast` of elementwise.cu: the output's dimensions and each operand's strides over them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Broadcast {
    rank: i32,
    dims: [i64; MAX_RANK],
    a_strides: [i64; MAX_RANK],
    b_strides: [i64; MAX_RANK],
}

// SAFETY: a plain #[repr(C)] struct of integers, laid out as the kernel's `Broadcast`.
unsafe impl DeviceRepr for Broadcast {}

/// An operand's strides over the broadcast `out` shape: 0 on its missing and length-1 axes.
fn broadcast_strides(operand: &Shape, out: &Shape) -> [i64; MAX_RANK] {
    let mut strides = [0i64; MAX_RANK];
    let offset = out.rank() - operand.rank();
    for (i, (&d, s)) in operand.dims().iter().zip(operand.strides()).enumerate() {
        if d != 1 {
            strides[i + offset] = s as i64;
        }
    }
    strides
}

impl Elementwise for CudaBackend {
    fn unary(&self, op: UnaryOp, x: &CudaTensor) -> Result<CudaTensor> {
        let n = x.shape.elements() as i64;
        let code = unary_code(op);
        self.build(x.shape.clone(), |out| {
            launch!(
                self,
                "unary_op",
                elementwise(n as usize),
                x.slice(),
                out,
                &n,
                &code
            );
            Ok(())
        })
    }

    fn binary(&self, op: BinaryOp, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        let shape = broadcast_shapes(op.name(), &a.shape, &b.shape)?;
        let rank = rank_checked(op.name(), &shape)?;
        let mut dims = [1i64; MAX_RANK];
        for (d, &v) in dims.iter_mut().zip(shape.dims()) {
            *d = v as i64;
        }
        let geometry = Broadcast {
            rank,
            dims,
            a_strides: broadcast_strides(&a.shape, &shape),
            b_strides: broadcast_strides(&b.shape, &shape),
        };
        let n = shape.checked_elements()? as i64;
        let code = binary_code(op);
        self.build(shape, |out| {
            launch!(
                self,
                "binary_op",
                elementwise(n as usize),
                a.slice(),
                b.slice(),
                out,
                &n,
                &code,
                &geometry
            );
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_strides_are_zero_on_broadcast_axes() {
        let out = Shape::from([4, 3, 5]);
        assert_eq!(
            broadcast_strides(&Shape::from([3, 1]), &out)[..3],
            [0, 1, 0]
        );
        assert_eq!(
            broadcast_strides(&Shape::from([4, 3, 5]), &out)[..3],
            [15, 5, 1]
        );
        assert_eq!(broadcast_strides(&Shape::scalar(), &out)[..3], [0, 0, 0]);
    }

    #[test]
    fn every_op_has_its_own_code() {
        let mut codes: Vec<i32> = UnaryOp::ALL.iter().map(|&o| unary_code(o)).collect();
        codes.dedup();
        assert_eq!(codes.len(), UnaryOp::ALL.len());
        let codes: std::collections::BTreeSet<i32> =
            BinaryOp::ALL.iter().map(|&o| binary_code(o)).collect();
        assert_eq!(codes.len(), BinaryOp::ALL.len());
    }
}

#[cfg(test)]
mod mirror {
    use super::*;
    use vgg_tensor::reference::ReferenceBackend;
    use vgg_tensor::{Device, DeviceTensor};

    /// elementwise.cu's `binary_op` indexing, line for line, checked against the reference
    /// backend's broadcasting (no GPU needed).
    #[test]
    fn broadcast_indexing_matches_the_reference_backend() {
        let r = ReferenceBackend;
        for (da, db) in [
            (vec![2, 3, 4], vec![3, 1]),
            (vec![1, 4], vec![3, 1]),
            (vec![5], vec![]),
        ] {
            let ha: Vec<f32> = (0..da.iter().product::<usize>())
                .map(|i| i as f32)
                .collect();
            let hb: Vec<f32> = (0..db.iter().product::<usize>())
                .map(|i| 100.0 * i as f32)
                .collect();
            let a = r.upload(&Shape::from(da.clone()), &ha).unwrap();
            let b = r.upload(&Shape::from(db.clone()), &hb).unwrap();
            let want = r.binary(BinaryOp::Add, &a, &b).unwrap();
            let out = want.shape().clone();
            let (sa, sb) = (
                broadcast_strides(a.shape(), &out),
                broadcast_strides(b.shape(), &out),
            );
            let got: Vec<f32> = (0..out.elements() as i64)
                .map(|i| {
                    let (mut rest, mut oa, mut ob) = (i, 0i64, 0i64);
                    for d in (0..out.rank()).rev() {
                        let dim = out.dims()[d] as i64;
                        let idx = rest % dim;
                        rest /= dim;
                        oa += idx * sa[d];
                        ob += idx * sb[d];
                    }
                    ha[oa as usize] + hb[ob as usize]
                })
                .collect();
            assert_eq!(got, want.values(), "{da:?} + {db:?}");
        }
    }
}
