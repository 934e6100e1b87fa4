//! The CPU backend against the reference backend: the conformance suite every backend runs, with
//! one thread and with two, on every vector unit this machine has, and with each convolution
//! algorithm; and a backend wrapping it, which keeps its fused kernels through `forward_fused!`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use vgg_ndarray::{ConvAlgorithm, CpuBackend, CpuConfig, CpuPoolIndices, CpuTensor, Isa};
use vgg_tensor::conformance::{assert_conforms, Tolerance};
use vgg_tensor::prelude::*;
use vgg_tensor::{Conv2dParams, Pool2dParams, Result};

#[test]
fn the_cpu_backend_conforms() {
    for threads in [1, 2] {
        assert_conforms(&CpuBackend::new(threads).unwrap(), Tolerance::F32);
    }
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
        if isa > Isa::detected() {
            continue;
        }
        for convolution in [ConvAlgorithm::Auto, ConvAlgorithm::Im2col] {
            let config = CpuConfig {
                isa: Some(isa),
                convolution,
                ..CpuConfig::detect(2)
            };
            assert_conforms(&CpuBackend::with_config(config).unwrap(), Tolerance::F32);
        }
    }
}

/// A backend that wraps the CPU one and counts the convolutions asked of its primitive: a tracer
/// as a user would write it. `forward_fused!` keeps the CPU backend's kernels.
#[derive(Clone, Debug)]
struct Counting<const FORWARD: bool> {
    cpu: CpuBackend,
    convs: Arc<AtomicUsize>,
}

impl<const FORWARD: bool> Device for Counting<FORWARD> {
    type Tensor = CpuTensor;

    fn name(&self) -> String {
        format!("counting ({})", self.cpu.name())
    }

    fn upload(&self, shape: &Shape, data: &[f32]) -> Result<CpuTensor> {
        self.cpu.upload(shape, data)
    }

    fn download(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        self.cpu.download(t)
    }

    fn full(&self, shape: &Shape, value: f32) -> Result<CpuTensor> {
        self.cpu.full(shape, value)
    }

    fn reshape(&self, t: &CpuTensor, shape: &Shape) -> Result<CpuTensor> {
        self.cpu.reshape(t, shape)
    }
}

impl<const FORWARD: bool> Elementwise for Counting<FORWARD> {
    fn unary(&self, op: UnaryOp, x: &CpuTensor) -> Result<CpuTensor> {
        self.cpu.unary(op, x)
    }

    fn binary(&self, op: BinaryOp, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.cpu.binary(op, a, b)
    }
}

impl<const FORWARD: bool> Reduce for Counting<FORWARD> {
    fn reduce(&self, op: ReduceOp, x: &CpuTensor, axes: &[usize]) -> Result<CpuTensor> {
        self.cpu.reduce(op, x, axes)
    }
}

impl<const FORWARD: bool> Layout for Counting<FORWARD> {
    fn permute(&self, x: &CpuTensor, perm: &[usize]) -> Result<CpuTensor> {
        self.cpu.permute(x, perm)
    }

    fn slice(&self, x: &CpuTensor, axis: usize, start: usize, len: usize) -> Result<CpuTensor> {
        self.cpu.slice(x, axis, start, len)
    }

    fn concat(&self, xs: &[&CpuTensor], axis: usize) -> Result<CpuTensor> {
        self.cpu.concat(xs, axis)
    }
}

impl<const FORWARD: bool> Matmul for Counting<FORWARD> {
    fn matmul(&self, a: &CpuTensor, b: &CpuTensor, ta: bool, tb: bool) -> Result<CpuTensor> {
        self.cpu.matmul(a, b, ta, tb)
    }
}

impl<const FORWARD: bool> Convolution for Counting<FORWARD> {
    fn conv2d(&self, x: &CpuTensor, w: &CpuTensor, p: Conv2dParams) -> Result<CpuTensor> {
        self.convs.fetch_add(1, Ordering::SeqCst);
        self.cpu.conv2d(x, w, p)
    }

    fn conv2d_backward_input(
        &self,
        dy: &CpuTensor,
        w: &CpuTensor,
        s: &Shape,
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        self.cpu.conv2d_backward_input(dy, w, s, p)
    }

    fn conv2d_backward_weight(
        &self,
        x: &CpuTensor,
        dy: &CpuTensor,
        s: &Shape,
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        self.cpu.conv2d_backward_weight(x, dy, s, p)
    }
}

impl<const FORWARD: bool> Pooling for Counting<FORWARD> {
    type PoolIndices = CpuPoolIndices;

    fn max_pool2d(&self, x: &CpuTensor, p: Pool2dParams) -> Result<(CpuTensor, CpuPoolIndices)> {
        self.cpu.max_pool2d(x, p)
    }

    fn max_pool2d_backward(
        &self,
        dy: &CpuTensor,
        i: &CpuPoolIndices,
        s: &Shape,
    ) -> Result<CpuTensor> {
        self.cpu.max_pool2d_backward(dy, i, s)
    }

    fn avg_pool2d(&self, x: &CpuTensor, p: Pool2dParams) -> Result<CpuTensor> {
        self.cpu.avg_pool2d(x, p)
    }

    fn avg_pool2d_backward(&self, dy: &CpuTensor, s: &Shape, p: Pool2dParams) -> Result<CpuTensor> {
        self.cpu.avg_pool2d_backward(dy, s, p)
    }
}

/// The wrapper that forwards the kernels.
impl Fused for Counting<true> {
    vgg_tensor::forward_fused!(cpu);
}

/// The wrapper that does not: every composite from the primitives.
impl Fused for Counting<false> {}

impl Backend for Counting<true> {}
impl Backend for Counting<false> {}

fn counting<const FORWARD: bool>() -> Counting<FORWARD> {
    Counting {
        cpu: CpuBackend::new(2).unwrap(),
        convs: Arc::default(),
    }
}

#[test]
fn a_wrapping_backend_conforms_and_keeps_the_fused_kernels() {
    let (forwarding, composing) = (counting::<true>(), counting::<false>());
    assert_conforms(&forwarding, Tolerance::F32);
    assert_conforms(&composing, Tolerance::F32);

    let x = forwarding
        .random_normal(&Shape::from([1, 8, 6, 6]), 0.0, 1.0, 1)
        .unwrap();
    let w = forwarding
        .random_normal(&Shape::from([8, 8, 3, 3]), 0.0, 0.3, 2)
        .unwrap();
    let b = forwarding.zeros(&Shape::from([8])).unwrap();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    // The forwarding wrapper ran the CPU backend's fused kernel, not its own conv2d primitive;
    // the composing one built the op from that primitive.
    forwarding.convs.store(0, Ordering::SeqCst);
    forwarding.conv2d_bias_act(&x, &w, &b, p, true).unwrap();
    assert_eq!(forwarding.convs.load(Ordering::SeqCst), 0);
    composing.convs.store(0, Ordering::SeqCst);
    composing.conv2d_bias_act(&x, &w, &b, p, true).unwrap();
    assert_eq!(composing.convs.load(Ordering::SeqCst), 1);
    // And both compute the same op.
    let fused = forwarding.conv2d_bias_act(&x, &w, &b, p, true).unwrap();
    let composed = composing.conv2d_bias_act(&x, &w, &b, p, true).unwrap();
    let (fused, composed) = (
        forwarding.download(&fused).unwrap(),
        composing.download(&composed).unwrap(),
    );
    let worst = fused
        .iter()
        .zip(&composed)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "fused and composed differ by {worst}");
}
