//! The conformance suite passes the reference backend, and fails a backend that is wrong in one
//! op only: off by 1e-3 relative in one place, or returning a wrong shape. The broken backends wrap
//! the reference and implement only the primitives, as any new backend would start.

use vgg_tensor::conformance::{self, Tolerance};
use vgg_tensor::prelude::*;
use vgg_tensor::reference::{RefTensor, ReferenceBackend};
use vgg_tensor::{Conv2dParams, Pool2dParams, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Matrix products 1e-3 too large, relatively.
    MatmulOffByRelative1e3,
    /// Concatenation returns its result flattened to one axis.
    ConcatFlattened,
}

#[derive(Clone, Debug)]
struct Broken(Fault);

const R: ReferenceBackend = ReferenceBackend;

impl Device for Broken {
    type Tensor = RefTensor;

    fn name(&self) -> String {
        format!("broken ({:?})", self.0)
    }

    fn upload(&self, shape: &Shape, data: &[f32]) -> Result<RefTensor> {
        R.upload(shape, data)
    }

    fn download(&self, t: &RefTensor) -> Result<Vec<f32>> {
        R.download(t)
    }

    fn full(&self, shape: &Shape, value: f32) -> Result<RefTensor> {
        R.full(shape, value)
    }

    fn reshape(&self, t: &RefTensor, shape: &Shape) -> Result<RefTensor> {
        R.reshape(t, shape)
    }
}

impl Elementwise for Broken {
    fn unary(&self, op: UnaryOp, x: &RefTensor) -> Result<RefTensor> {
        R.unary(op, x)
    }

    fn binary(&self, op: BinaryOp, a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
        R.binary(op, a, b)
    }
}

impl Reduce for Broken {
    fn reduce(&self, op: ReduceOp, x: &RefTensor, axes: &[usize]) -> Result<RefTensor> {
        R.reduce(op, x, axes)
    }
}

impl Layout for Broken {
    fn permute(&self, x: &RefTensor, perm: &[usize]) -> Result<RefTensor> {
        R.permute(x, perm)
    }

    fn slice(&self, x: &RefTensor, axis: usize, start: usize, len: usize) -> Result<RefTensor> {
        R.slice(x, axis, start, len)
    }

    fn concat(&self, xs: &[&RefTensor], axis: usize) -> Result<RefTensor> {
        let y = R.concat(xs, axis)?;
        if self.0 == Fault::ConcatFlattened {
            let flat = Shape::from([y.shape().elements()]);
            return R.reshape(&y, &flat);
        }
        Ok(y)
    }
}

impl Matmul for Broken {
    fn matmul(&self, a: &RefTensor, b: &RefTensor, ta: bool, tb: bool) -> Result<RefTensor> {
        let y = R.matmul(a, b, ta, tb)?;
        if self.0 == Fault::MatmulOffByRelative1e3 {
            return R.scale(&y, 1.0 + 1e-3);
        }
        Ok(y)
    }
}

impl Convolution for Broken {
    fn conv2d(&self, x: &RefTensor, w: &RefTensor, p: Conv2dParams) -> Result<RefTensor> {
        R.conv2d(x, w, p)
    }

    fn conv2d_backward_input(
        &self,
        dy: &RefTensor,
        w: &RefTensor,
        input_shape: &Shape,
        p: Conv2dParams,
    ) -> Result<RefTensor> {
        R.conv2d_backward_input(dy, w, input_shape, p)
    }

    fn conv2d_backward_weight(
        &self,
        x: &RefTensor,
        dy: &RefTensor,
        weight_shape: &Shape,
        p: Conv2dParams,
    ) -> Result<RefTensor> {
        R.conv2d_backward_weight(x, dy, weight_shape, p)
    }
}

impl Pooling for Broken {
    type PoolIndices = <ReferenceBackend as Pooling>::PoolIndices;

    fn max_pool2d(&self, x: &RefTensor, p: Pool2dParams) -> Result<(RefTensor, Self::PoolIndices)> {
        R.max_pool2d(x, p)
    }

    fn max_pool2d_backward(
        &self,
        dy: &RefTensor,
        indices: &Self::PoolIndices,
        input_shape: &Shape,
    ) -> Result<RefTensor> {
        R.max_pool2d_backward(dy, indices, input_shape)
    }

    fn avg_pool2d(&self, x: &RefTensor, p: Pool2dParams) -> Result<RefTensor> {
        R.avg_pool2d(x, p)
    }

    fn avg_pool2d_backward(
        &self,
        dy: &RefTensor,
        input_shape: &Shape,
        p: Pool2dParams,
    ) -> Result<RefTensor> {
        R.avg_pool2d_backward(dy, input_shape, p)
    }
}

impl Fused for Broken {}

impl Backend for Broken {}

#[test]
fn the_reference_conforms_to_itself() {
    conformance::assert_conforms(&ReferenceBackend, Tolerance::F32);
}

#[test]
fn a_backend_off_by_1e3_in_one_op_fails() {
    let found = conformance::check(&Broken(Fault::MatmulOffByRelative1e3), Tolerance::F32);
    assert!(!found.is_empty(), "the broken matmul passed");
    assert!(
        found.iter().all(|m| m.op.starts_with("matmul")),
        "only the matrix products should differ: {found:#?}"
    );
    assert!(found[0].what.contains("differ beyond"), "{}", found[0]);
    // The looser TF32 tolerance lets 1e-3 through, as it should.
    assert!(conformance::check(&Broken(Fault::MatmulOffByRelative1e3), Tolerance::TF32).is_empty());
}

#[test]
fn a_backend_returning_a_wrong_shape_fails() {
    let found = conformance::check(&Broken(Fault::ConcatFlattened), Tolerance::F32);
    assert!(!found.is_empty(), "the broken concat passed");
    assert!(
        found
            .iter()
            .all(|m| m.op.starts_with("concat") && m.what.contains("shape")),
        "{found:#?}"
    );
}
