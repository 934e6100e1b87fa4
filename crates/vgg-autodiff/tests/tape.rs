//! The tape's guarantees: no gradient work for constants, memory released during backward and
//! nothing held after it, inference mode, and errors for misuse.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use vgg_autodiff::{AutodiffError, Tape, Var};
use vgg_ndarray::{CpuBackend, CpuPoolIndices, CpuTensor};
use vgg_tensor::prelude::*;
use vgg_tensor::{Conv2dParams, Pool2dParams, Result};

/// The CPU backend's primitives, counting the input-gradient convolutions and the products for
/// parameters' gradients it is asked for; every composite comes from `Backend`'s defaults.
#[derive(Clone, Debug)]
struct Spy {
    cpu: CpuBackend,
    input_grads: Arc<AtomicUsize>,
    /// Calls of `matmul_gradient`.
    param_products: Arc<AtomicUsize>,
    /// The input gradients it returns are this many times the true ones (1: right).
    skew: f32,
}

macro_rules! delegate {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> $ret { self.cpu.$name($($arg),*) })*
    };
}

impl Device for Spy {
    type Tensor = CpuTensor;

    fn name(&self) -> String {
        "spy".into()
    }

    // On the CPU backend's workers, as its own loops run: ops started from outside its pool
    // hand their work across threads.
    fn execute<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.cpu.execute(f)
    }

    delegate! {
        upload(shape: &Shape, data: &[f32]) -> Result<CpuTensor>;
        download(t: &CpuTensor) -> Result<Vec<f32>>;
        full(shape: &Shape, value: f32) -> Result<CpuTensor>;
        reshape(t: &CpuTensor, shape: &Shape) -> Result<CpuTensor>;
    }
}

impl Elementwise for Spy {
    delegate! {
        unary(op: UnaryOp, x: &CpuTensor) -> Result<CpuTensor>;
        binary(op: BinaryOp, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor>;
    }
}

impl Reduce for Spy {
    delegate! {
        reduce(op: ReduceOp, x: &CpuTensor, axes: &[usize]) -> Result<CpuTensor>;
    }
}

impl Layout for Spy {
    delegate! {
        permute(x: &CpuTensor, perm: &[usize]) -> Result<CpuTensor>;
        slice(x: &CpuTensor, axis: usize, start: usize, len: usize) -> Result<CpuTensor>;
        concat(xs: &[&CpuTensor], axis: usize) -> Result<CpuTensor>;
    }
}

impl Matmul for Spy {
    fn matmul_gradient(
        &self,
        a: &CpuTensor,
        b: &CpuTensor,
        ta: bool,
        tb: bool,
    ) -> Result<CpuTensor> {
        self.param_products.fetch_add(1, Ordering::SeqCst);
        self.cpu.matmul_gradient(a, b, ta, tb)
    }

    delegate! {
        matmul(a: &CpuTensor, b: &CpuTensor, ta: bool, tb: bool) -> Result<CpuTensor>;
    }
}

impl Convolution for Spy {
    fn conv2d_backward_input(
        &self,
        dy: &CpuTensor,
        w: &CpuTensor,
        s: &Shape,
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        self.input_grads.fetch_add(1, Ordering::SeqCst);
        let dx = self.cpu.conv2d_backward_input(dy, w, s, p)?;
        if self.skew == 1.0 {
            return Ok(dx);
        }
        self.cpu.scale(&dx, self.skew)
    }

    delegate! {
        conv2d(x: &CpuTensor, w: &CpuTensor, p: Conv2dParams) -> Result<CpuTensor>;
        conv2d_backward_weight(x: &CpuTensor, dy: &CpuTensor, s: &Shape, p: Conv2dParams) -> Result<CpuTensor>;
    }
}

impl Pooling for Spy {
    type PoolIndices = CpuPoolIndices;

    delegate! {
        max_pool2d(x: &CpuTensor, p: Pool2dParams) -> Result<(CpuTensor, CpuPoolIndices)>;
        max_pool2d_backward(dy: &CpuTensor, i: &CpuPoolIndices, s: &Shape) -> Result<CpuTensor>;
        avg_pool2d(x: &CpuTensor, p: Pool2dParams) -> Result<CpuTensor>;
        avg_pool2d_backward(dy: &CpuTensor, s: &Shape, p: Pool2dParams) -> Result<CpuTensor>;
    }
}

impl Fused for Spy {}

impl Backend for Spy {}

fn cpu() -> CpuBackend {
    CpuBackend::new(2).unwrap()
}

const SAME: Conv2dParams = Conv2dParams {
    stride: 1,
    padding: 1,
};

/// Three conv layers on a constant input: the model's shape in miniature.
fn three_convs<B: Backend>(tape: &Tape<B>, x: &Var<B>, params: &[(Var<B>, Var<B>)]) -> Var<B> {
    let mut h = x.clone();
    for (w, b) in params {
        h = tape.conv2d_bias_act(&h, w, b, SAME, true).unwrap();
    }
    tape.l2_loss(&h).unwrap()
}

fn conv_params<B: Backend>(tape: &Tape<B>, b: &B, channels: &[usize]) -> Vec<(Var<B>, Var<B>)> {
    channels
        .windows(2)
        .enumerate()
        .map(|(i, c)| {
            let w = b
                .random_normal(&Shape::from([c[1], c[0], 3, 3]), 0.0, 0.1, i as u64)
                .unwrap();
            let bias = b.zeros(&Shape::from([c[1]])).unwrap();
            (
                tape.param(format!("w{i}"), w),
                tape.param(format!("b{i}"), bias),
            )
        })
        .collect()
}

#[test]
fn constants_cost_no_gradient_work() {
    let spy = Spy {
        cpu: cpu(),
        input_grads: Arc::new(AtomicUsize::new(0)),
        param_products: Arc::new(AtomicUsize::new(0)),
        skew: 1.0,
    };
    let tape = Tape::new(spy.clone());
    let x = tape.constant(
        spy.random_normal(&Shape::from([1, 2, 6, 6]), 0.0, 1.0, 1)
            .unwrap(),
    );
    let params = conv_params(&tape, &spy, &[2, 3, 3, 3]);
    let loss = three_convs(&tape, &x, &params);
    let grads = tape.backward(&loss).unwrap();
    // Three convolutions, but the first one's input is a constant: two input gradients.
    assert_eq!(spy.input_grads.load(Ordering::SeqCst), 2);
    assert_eq!(grads.len(), 6);
    assert!(matches!(grads.get(&x), Err(AutodiffError::Untracked(_))));
}

#[test]
fn a_products_parameter_gets_its_gradient_from_matmul_gradient() {
    let spy = Spy {
        cpu: cpu(),
        input_grads: Arc::new(AtomicUsize::new(0)),
        param_products: Arc::new(AtomicUsize::new(0)),
        skew: 1.0,
    };
    let upload = |dims: &[usize], seed| {
        spy.random_normal(&Shape::from(dims), 0.0, 1.0, seed)
            .unwrap()
    };
    let tape = Tape::new(spy.clone());
    // x [2, 5] tracked but not a parameter (computed from one), w [3, 5] a parameter.
    let x0 = tape.param("x0", upload(&[2, 5], 1));
    let x = tape.scale(&x0, 2.0).unwrap();
    let w = tape.param("w", upload(&[3, 5], 2));
    let bias = tape.param("b", upload(&[3], 3));
    let y = tape.linear(&x, &w, &bias).unwrap();
    let loss = tape.l2_loss(&y).unwrap();
    let grads = tape.backward(&loss).unwrap();
    // One product for w's gradient; x's gradient is an ordinary one.
    assert_eq!(spy.param_products.load(Ordering::SeqCst), 1);
    let plain = |v: &Var<Spy>| spy.download(&grads.get(v).unwrap()).unwrap();
    // The same values as the ordinary product: dW = dY^T x with dY = y.
    let (dy, xv) = (y.value(), x.value());
    let expected = spy
        .download(&spy.matmul(dy, xv, true, false).unwrap())
        .unwrap();
    assert_eq!(plain(&w), expected);
    assert_eq!(grads.len(), 3);
}

#[test]
fn backward_frees_saved_activations_as_it_goes_and_keeps_nothing() {
    let b = cpu();
    let x_host = b
        .random_normal(&Shape::from([2, 4, 32, 32]), 0.0, 1.0, 1)
        .unwrap();
    let before = b.memory_stats().live_bytes;
    let tape = Tape::new(b.clone());
    let x = tape.constant(x_host.clone());
    let params = conv_params(&tape, &b, &[4, 16, 16, 16, 16]);
    let param_bytes: usize = params
        .iter()
        .map(|(w, c)| (w.shape().elements() + c.shape().elements()) * 4)
        .sum();
    let loss = three_convs(&tape, &x, &params);
    let after_forward = b.memory_stats().live_bytes;
    let activation = 2 * 16 * 32 * 32 * 4;
    assert!(
        after_forward >= before + 4 * activation,
        "the tape holds four activations"
    );
    assert!(tape.saved_bytes() >= 4 * activation);

    let mut live_during = Vec::new();
    let mut saved_left = Vec::new();
    let grads = tape
        .backward_observed(&loss, |step| {
            live_during.push(b.memory_stats().live_bytes);
            saved_left.push(step.saved_bytes_left);
        })
        .unwrap();
    assert_eq!(*saved_left.last().unwrap(), 0);
    assert!(
        saved_left.windows(2).all(|w| w[1] <= w[0]),
        "saved bytes only go down"
    );
    // Activations are released while backward runs: once the last closure has run (the walk
    // still has the parameter leaves to visit), the memory in use is well under what the forward
    // pass left, though the gradients are alive by then.
    let all_run = saved_left.iter().position(|&s| s == 0).unwrap();
    assert!(
        all_run < saved_left.len() - 1,
        "the walk goes on to the leaves"
    );
    assert!(
        live_during[all_run] + 2 * activation < after_forward,
        "{} should be below {after_forward} minus two activations",
        live_during[all_run]
    );
    // After backward: only the parameters, their gradients, the loss and the input remain.
    drop((params, x));
    let after_backward = b.memory_stats().live_bytes;
    assert!(
        after_backward <= before + 2 * param_bytes + 64,
        "{after_backward} > {before} + 2 x {param_bytes}"
    );
    drop((grads, loss));
    assert_eq!(
        b.memory_stats().live_bytes,
        before,
        "nothing of the tape is left"
    );
}

#[test]
fn inference_mode_records_nothing_and_keeps_only_live_values() {
    let b = cpu();
    let tape = Tape::inference(b.clone());
    let before = b.memory_stats().live_bytes;
    let x = tape.constant(
        b.random_normal(&Shape::from([2, 4, 32, 32]), 0.0, 1.0, 1)
            .unwrap(),
    );
    let params = conv_params(&tape, &b, &[4, 16, 16, 16]);
    assert!(params.iter().all(|(w, _)| !w.is_tracked()));
    let with_params = b.memory_stats().live_bytes;
    let mut h = x;
    for (w, c) in &params {
        h = tape.conv2d_bias_act(&h, w, c, SAME, true).unwrap();
    }
    assert_eq!(tape.len(), 0);
    assert_eq!(tape.saved_bytes(), 0);
    // Only the last activation is alive.
    assert_eq!(
        b.memory_stats().live_bytes,
        with_params - 2 * 4 * 32 * 32 * 4 + 2 * 16 * 32 * 32 * 4
    );
    let loss = tape.l2_loss(&h).unwrap();
    assert_eq!(
        tape.backward(&loss).unwrap_err(),
        AutodiffError::LossUntracked
    );
    drop((h, params, loss));
    assert_eq!(b.memory_stats().live_bytes, before);
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let b = cpu();
    let square = || b.full(&Shape::from([2, 2]), 1.0).unwrap();
    let tape = Tape::new(b.clone());
    let other = Tape::new(b.clone());
    let w = tape.param("w", square());
    let foreign = other.param("v", square());

    // A value from another tape, in an op and as a loss.
    let e = tape.add(&w, &foreign).unwrap_err();
    assert!(
        matches!(e, AutodiffError::ForeignValue { op: "add", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("another tape"));
    let e = other.backward(&tape.sum(&w).unwrap()).unwrap_err();
    assert!(
        matches!(e, AutodiffError::ForeignValue { op: "backward", .. }),
        "{e}"
    );

    // Backward of a non-scalar.
    let tape = Tape::new(b.clone());
    let w = tape.param("w", square());
    let e = tape.backward(&w).unwrap_err();
    assert_eq!(e, AutodiffError::NotScalar(Shape::from([2, 2])));
    assert!(e.to_string().contains("[2, 2]"));

    // Shape errors come through with both shapes.
    let tape = Tape::new(b.clone());
    let w = tape.param("w", square());
    let c = tape.constant(b.full(&Shape::from([3]), 1.0).unwrap());
    let e = tape.add(&w, &c).unwrap_err().to_string();
    assert!(e.contains("[2, 2]") && e.contains("[3]"), "{e}");

    // A gradient asked for an untracked value or a value of another tape.
    let loss = tape.sum(&w).unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert!(matches!(grads.get(&c), Err(AutodiffError::Untracked(_))));
    assert!(matches!(
        grads.get(&foreign),
        Err(AutodiffError::ForeignValue { .. })
    ));
    assert_eq!(b.download(&grads.get(&w).unwrap()).unwrap(), [1.0; 4]);
    assert!(grads.by_name("w").is_some() && grads.by_name("nope").is_none());
}

/// `backward_streaming` hands each parameter's gradient over once, final, as soon as the walk
/// has passed its last use: the parameter used last comes first, long before the walk ends.
#[test]
fn parameter_gradients_stream_out_as_soon_as_they_are_final() {
    let b = cpu();
    let tape = Tape::new(b.clone());
    let x = tape.constant(b.upload(&Shape::from([2]), &[1.0, -2.0]).unwrap());
    let first = tape.param("first", b.upload(&Shape::from([2]), &[0.5, 0.25]).unwrap());
    let h = tape.relu(&tape.mul(&x, &first).unwrap()).unwrap();
    // `first` is used twice: its gradient is final only after both uses.
    let h = tape.mul(&h, &first).unwrap();
    let second = tape.param("second", b.upload(&Shape::from([2]), &[3.0, 4.0]).unwrap());
    let loss = tape.sum(&tape.mul(&h, &second).unwrap()).unwrap();
    let mut seen: Vec<(String, Vec<f32>, usize)> = Vec::new();
    let nodes_left = std::cell::Cell::new(usize::MAX);
    let grads = tape
        .backward_streaming(
            &loss,
            |step| nodes_left.set(step.node),
            |name, g| {
                seen.push((name.to_string(), b.download(g).unwrap(), nodes_left.get()));
                Ok::<(), AutodiffError>(())
            },
        )
        .unwrap();
    let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["second", "first"]);
    for (name, g, _) in &seen {
        assert_eq!(
            &b.download(grads.by_name(name).unwrap()).unwrap(),
            g,
            "{name}"
        );
    }
    // second: h = relu(x*first)*first = [0.25, 0]; d/dfirst = 2*x*first*second where open.
    assert_eq!(seen[0].1, [0.25, 0.0]);
    assert_eq!(seen[1].1, [2.0 * 1.0 * 0.5 * 3.0, 0.0]);
    // `second` came out while most of the walk was still ahead.
    assert!(seen[0].2 > 2, "{seen:?}");

    // An error from the callback stops the walk and is returned.
    let tape = Tape::new(b.clone());
    let w = tape.param("w", b.upload(&Shape::from([1]), &[1.0]).unwrap());
    let loss = tape.sum(&w).unwrap();
    let e = tape
        .backward_streaming(&loss, |_| {}, |_, _| Err(AutodiffError::LossUntracked))
        .unwrap_err();
    assert_eq!(e, AutodiffError::LossUntracked);
}

#[test]
fn the_gradient_suite_passes_a_right_backend_and_fails_a_wrong_input_gradient() {
    let spy = |skew| Spy {
        cpu: cpu(),
        input_grads: Arc::new(AtomicUsize::new(0)),
        param_products: Arc::new(AtomicUsize::new(0)),
        skew,
    };
    // Every composite from the primitives: the suite checks the backward rules on its kernels.
    vgg_autodiff::conformance::assert_conforms(&spy(1.0));
    // Input gradients 10% off: the convolutions' cases fail, and only theirs.
    let failures = vgg_autodiff::conformance::check(&spy(1.1));
    assert!(!failures.is_empty());
    assert!(
        failures
            .iter()
            .all(|f| f.starts_with("conv2d") || f.starts_with("a small convnet")),
        "{failures:#?}"
    );
    assert!(
        failures.iter().any(|f| f.starts_with("conv2d 5x5/3 p2")),
        "{failures:#?}"
    );
}
