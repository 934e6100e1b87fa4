//! Every op of the CUDA backend against the CPU backend on the same inputs, and a small VGG's
//! forward-backward on both: forward values within 1e-4 relative, gradients within 1e-3, with TF32
//! off. They need a GPU (`scripts/gpu-check.sh` runs them with `--ignored`); without one they fail
//! with the error that names what is missing.

use vgg_autodiff::Tape;
use vgg_cuda::{CudaBackend, CudaOptions};
use vgg_model::{ModelSpec, SpecOptions, Vgg, VggConfig};
use vgg_ndarray::CpuBackend;
use vgg_nn::{InitScheme, RunOptions};
use vgg_tensor::prelude::*;
use vgg_tensor::{random, AdamParams, Backend, Conv2dParams, Pool2dParams, Shape};

const FORWARD: f64 = 1e-4;
const GRADIENT: f64 = 1e-3;

fn gpu() -> CudaBackend {
    CudaBackend::new(CudaOptions {
        ordinal: 0,
        allow_tf32: false,
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The same values on both backends.
struct Pair {
    cpu: CpuBackend,
    gpu: CudaBackend,
}

type Both = (
    <CpuBackend as Device>::Tensor,
    <CudaBackend as Device>::Tensor,
);

impl Pair {
    fn new() -> Pair {
        Pair {
            cpu: CpuBackend::new(2).unwrap(),
            gpu: gpu(),
        }
    }

    fn normal(&self, dims: &[usize], seed: u64) -> Both {
        let shape = Shape::from(dims);
        let mut v = vec![0.0f32; shape.elements()];
        random::fill_normal(&mut v, seed, 0, 0.0, 1.0);
        (
            self.cpu.upload(&shape, &v).unwrap(),
            self.gpu.upload(&shape, &v).unwrap(),
        )
    }

    /// Max |gpu - cpu| over max |cpu| (or 1 where that is smaller) is within `tol`.
    #[track_caller]
    fn check(&self, what: &str, t: &Both, tol: f64) {
        let want = self.cpu.download(&t.0).unwrap();
        let got = self.gpu.download(&t.1).unwrap();
        assert_eq!(want.len(), got.len(), "{what}: lengths");
        let scale = want.iter().fold(1.0f64, |m, &v| m.max((v as f64).abs()));
        let worst = want
            .iter()
            .zip(&got)
            .map(|(&w, &g)| (w as f64 - g as f64).abs())
            .fold(0.0, f64::max);
        assert!(
            worst <= tol * scale,
            "{what}: worst difference {worst:e} against scale {scale:e} (tolerance {tol:e})"
        );
    }
}

/// Runs `op` on both backends.
macro_rules! both {
    ($pair:expr, |$b:ident, $t:ident| $body:expr) => {{
        let cpu = {
            let $b = &$pair.cpu;
            let $t = |x: &Both| x.0.clone();
            $body
        };
        let gpu = {
            let $b = &$pair.gpu;
            let $t = |x: &Both| x.1.clone();
            $body
        };
        (cpu, gpu)
    }};
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn convolutions_and_their_gradients_match_the_cpu() {
    let p = Pair::new();
    // (input NCHW, weight OIHW, stride, padding): VGG's 3x3/1/1, odd sizes, stride 2, 1x1, no padding.
    let cases = [
        ([2, 3, 9, 11], [5, 3, 3, 3], 1, 1),
        ([1, 4, 8, 8], [6, 4, 3, 3], 2, 1),
        ([3, 5, 7, 6], [4, 5, 1, 1], 1, 0),
        ([2, 2, 10, 9], [3, 2, 3, 3], 1, 0),
        ([2, 64, 14, 14], [32, 64, 3, 3], 1, 1),
    ];
    for (i, (xd, wd, stride, padding)) in cases.into_iter().enumerate() {
        let cp = Conv2dParams { stride, padding };
        let x = p.normal(&xd, 10 + i as u64);
        let w = p.normal(&wd, 20 + i as u64);
        let bias = p.normal(&[wd[0]], 30 + i as u64);
        let y = both!(p, |b, t| b.conv2d(&t(&x), &t(&w), cp).unwrap());
        p.check(&format!("conv2d case {i}"), &y, FORWARD);
        let fused = both!(p, |b, t| b
            .conv2d_bias_act(&t(&x), &t(&w), &t(&bias), cp, true)
            .unwrap());
        p.check(&format!("conv2d_bias_act case {i}"), &fused, FORWARD);
        let dy_shape: Vec<usize> = {
            use vgg_tensor::DeviceTensor;
            y.0.shape().dims().to_vec()
        };
        let dy = p.normal(&dy_shape, 40 + i as u64);
        let dx = both!(p, |b, t| b
            .conv2d_backward_input(&t(&dy), &t(&w), &Shape::from(xd), cp)
            .unwrap());
        p.check(&format!("conv2d_backward_input case {i}"), &dx, GRADIENT);
        let dw = both!(p, |b, t| b
            .conv2d_backward_weight(&t(&x), &t(&dy), &Shape::from(wd), cp)
            .unwrap());
        p.check(&format!("conv2d_backward_weight case {i}"), &dw, GRADIENT);
        let db = both!(p, |b, t| b.channel_bias_grad(&t(&dy)).unwrap());
        p.check(&format!("channel_bias_grad case {i}"), &db, GRADIENT);
        let biased = both!(p, |b, t| b.add_channel_bias(&t(&y), &t(&bias)).unwrap());
        p.check(&format!("add_channel_bias case {i}"), &biased, FORWARD);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn pooling_and_its_gradient_match_the_cpu() {
    let p = Pair::new();
    for (dims, kernel, stride) in [
        ([2, 3, 8, 8], 2, 2),
        ([1, 2, 9, 7], 3, 2),
        ([2, 2, 5, 5], 2, 1),
    ] {
        let pp = Pool2dParams { kernel, stride };
        let x = p.normal(&dims, 5);
        let cpu = p.cpu.max_pool2d(&x.0, pp).unwrap();
        let gpu = p.gpu.max_pool2d(&x.1, pp).unwrap();
        let y = (cpu.0.clone(), gpu.0.clone());
        p.check(&format!("max_pool2d {kernel}/{stride}"), &y, 0.0);
        let dy_dims: Vec<usize> = {
            use vgg_tensor::DeviceTensor;
            y.0.shape().dims().to_vec()
        };
        let dy = p.normal(&dy_dims, 6);
        let dx = (
            p.cpu
                .max_pool2d_backward(&dy.0, &cpu.1, &Shape::from(dims))
                .unwrap(),
            p.gpu
                .max_pool2d_backward(&dy.1, &gpu.1, &Shape::from(dims))
                .unwrap(),
        );
        // Overlapping windows add in a different order on the GPU.
        p.check(&format!("max_pool2d_backward {kernel}/{stride}"), &dx, 1e-6);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matrix_ops_match_the_cpu() {
    let p = Pair::new();
    let (m, n, k) = (7, 5, 33);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = p.normal(&if ta { [k, m] } else { [m, k] }, 1);
        let b = p.normal(&if tb { [n, k] } else { [k, n] }, 2);
        let c = both!(p, |be, t| be.matmul(&t(&a), &t(&b), ta, tb).unwrap());
        p.check(&format!("matmul ta={ta} tb={tb}"), &c, FORWARD);
    }
    let x = p.normal(&[6, 9], 3);
    let bias = p.normal(&[9], 4);
    let y = both!(p, |b, t| b.add_row_bias(&t(&x), &t(&bias)).unwrap());
    p.check("add_row_bias", &y, FORWARD);
    let s = both!(p, |b, t| b.sum_rows(&t(&x)).unwrap());
    p.check("sum_rows", &s, FORWARD);
    // A linear layer's shapes: batch 4, 512 -> 100.
    let x = p.normal(&[4, 512], 5);
    let w = p.normal(&[100, 512], 6);
    let y = both!(p, |b, t| b.matmul(&t(&x), &t(&w), false, true).unwrap());
    p.check("matmul x w^T", &y, FORWARD);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn activations_losses_and_elementwise_ops_match_the_cpu() {
    let p = Pair::new();
    let x = p.normal(&[4, 10], 1);
    let d = p.normal(&[4, 10], 2);
    let checks: Vec<(&str, Both, f64)> = vec![
        ("relu", both!(p, |b, t| b.relu(&t(&x)).unwrap()), 0.0),
        (
            "relu_backward",
            both!(p, |b, t| b
                .relu_backward(&t(&d), &b.relu(&t(&x)).unwrap())
                .unwrap()),
            0.0,
        ),
        // The same seed drops the same units on both backends.
        (
            "dropout",
            both!(p, |b, t| b.dropout(&t(&x), 0.6, 42).unwrap()),
            0.0,
        ),
        (
            "dropout_backward",
            both!(p, |b, t| b.dropout_backward(&t(&d), 0.6, 42).unwrap()),
            0.0,
        ),
        (
            "softmax_rows",
            both!(p, |b, t| b.softmax_rows(&t(&x)).unwrap()),
            FORWARD,
        ),
        (
            "softmax_rows_backward",
            both!(p, |b, t| b
                .softmax_rows_backward(&t(&d), &b.softmax_rows(&t(&x)).unwrap())
                .unwrap()),
            GRADIENT,
        ),
        (
            "l2_loss",
            both!(p, |b, t| b.l2_loss(&t(&x)).unwrap()),
            FORWARD,
        ),
        (
            "sum_all",
            both!(p, |b, t| b.sum_all(&t(&x)).unwrap()),
            FORWARD,
        ),
        ("add", both!(p, |b, t| b.add(&t(&x), &t(&d)).unwrap()), 0.0),
        ("sub", both!(p, |b, t| b.sub(&t(&x), &t(&d)).unwrap()), 0.0),
        ("mul", both!(p, |b, t| b.mul(&t(&x), &t(&d)).unwrap()), 0.0),
        (
            "scale",
            both!(p, |b, t| b.scale(&t(&x), -1.5).unwrap()),
            0.0,
        ),
        (
            "mul_scalar",
            both!(p, |b, t| b
                .mul_scalar(&t(&x), &b.l2_loss(&t(&d)).unwrap())
                .unwrap()),
            FORWARD,
        ),
        (
            "broadcast_scalar",
            both!(p, |b, t| b
                .broadcast_scalar(&b.sum_all(&t(&d)).unwrap(), &Shape::from([3, 2]))
                .unwrap()),
            FORWARD,
        ),
        (
            "full",
            both!(p, |b, _t| b.full(&Shape::from([5]), 2.5).unwrap()),
            0.0,
        ),
        (
            "reshape",
            both!(p, |b, t| b.reshape(&t(&x), &Shape::from([40])).unwrap()),
            0.0,
        ),
    ];
    for (what, pair, tol) in &checks {
        p.check(what, pair, *tol);
    }
    assert_eq!(
        p.cpu.argmax_rows(&x.0).unwrap(),
        p.gpu.argmax_rows(&x.1).unwrap()
    );

    let labels = [3, 0, 9, 4];
    let (cpu_loss, cpu_probs) = p.cpu.cross_entropy(&x.0, &labels).unwrap();
    let (gpu_loss, gpu_probs) = p.gpu.cross_entropy(&x.1, &labels).unwrap();
    p.check(
        "cross_entropy loss",
        &(cpu_loss.clone(), gpu_loss.clone()),
        FORWARD,
    );
    p.check(
        "cross_entropy probs",
        &(cpu_probs.clone(), gpu_probs.clone()),
        FORWARD,
    );
    let g = (
        p.cpu.full(&Shape::scalar(), 2.0).unwrap(),
        p.gpu.full(&Shape::scalar(), 2.0).unwrap(),
    );
    let dlogits = (
        p.cpu
            .cross_entropy_backward(&cpu_probs, &labels, &g.0)
            .unwrap(),
        p.gpu
            .cross_entropy_backward(&gpu_probs, &labels, &g.1)
            .unwrap(),
    );
    p.check("cross_entropy_backward", &dlogits, GRADIENT);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn in_place_updates_match_the_cpu_and_leave_shared_buffers_alone() {
    let p = Pair::new();
    let param = p.normal(&[300], 1);
    let grad = p.normal(&[300], 2);
    // axpy on a clone must not change the tensor it was cloned from.
    let mut y = param.clone();
    p.cpu.axpy(&mut y.0, 0.5, &grad.0).unwrap();
    p.gpu.axpy(&mut y.1, 0.5, &grad.1).unwrap();
    p.check("axpy", &y, FORWARD);
    p.check("axpy leaves the original", &param, 0.0);
    let originals = (
        p.cpu.download(&param.0).unwrap(),
        p.gpu.download(&param.1).unwrap(),
    );
    assert_eq!(originals.0, originals.1);

    let mut sgd = (param.clone(), p.normal(&[300], 3));
    for _ in 0..3 {
        p.cpu
            .sgd_step(&mut sgd.0 .0, &mut sgd.1 .0, &grad.0, 0.1, 0.9, 1e-4)
            .unwrap();
        p.gpu
            .sgd_step(&mut sgd.0 .1, &mut sgd.1 .1, &grad.1, 0.1, 0.9, 1e-4)
            .unwrap();
    }
    p.check("sgd_step param", &sgd.0, FORWARD);
    p.check("sgd_step velocity", &sgd.1, FORWARD);

    let zeros = || {
        (
            p.cpu.zeros(&Shape::from([300])).unwrap(),
            p.gpu.zeros(&Shape::from([300])).unwrap(),
        )
    };
    let (mut w, mut m, mut v) = (param.clone(), zeros(), zeros());
    for step in 1..=3 {
        let hp = AdamParams {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
            step,
        };
        p.cpu
            .adam_step(&mut w.0, &mut m.0, &mut v.0, &grad.0, hp)
            .unwrap();
        p.gpu
            .adam_step(&mut w.1, &mut m.1, &mut v.1, &grad.1, hp)
            .unwrap();
    }
    p.check("adam_step param", &w, FORWARD);
    p.check("adam_step m", &m, FORWARD);
    p.check("adam_step v", &v, FORWARD);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_operands_get_the_same_errors_as_on_the_cpu() {
    let p = Pair::new();
    let a = p.normal(&[2, 3], 1);
    let b = p.normal(&[4, 5], 2);
    assert_eq!(
        p.cpu.matmul(&a.0, &b.0, false, false).unwrap_err(),
        p.gpu.matmul(&a.1, &b.1, false, false).unwrap_err()
    );
    assert_eq!(
        p.cpu.add(&a.0, &b.0).unwrap_err(),
        p.gpu.add(&a.1, &b.1).unwrap_err()
    );
    assert_eq!(
        p.cpu.cross_entropy(&a.0, &[7, 0]).unwrap_err(),
        p.gpu.cross_entropy(&a.1, &[7, 0]).unwrap_err()
    );
    assert_eq!(
        p.cpu.dropout(&a.0, 1.5, 1).unwrap_err(),
        p.gpu.dropout(&a.1, 1.5, 1).unwrap_err()
    );
    let x = p.normal(&[1, 2, 5, 5], 3);
    let w = p.normal(&[4, 2, 3, 3], 4);
    let conv = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    assert_eq!(
        p.cpu
            .conv2d_bias_act(&x.0, &w.0, &a.0, conv, true)
            .unwrap_err(),
        p.gpu
            .conv2d_bias_act(&x.1, &w.1, &a.1, conv, true)
            .unwrap_err()
    );
    assert!(p.gpu.upload(&Shape::from([3]), &[1.0, 2.0]).is_err());
}

/// A narrow `model` at 32x32 in training mode (dropout on, same masks; BatchNorm on the batch's
/// statistics): the logits, the loss and every parameter's gradient agree with the CPU's.
fn a_small_vgg_matches_the_cpu(model: VggConfig, adaptive_pool: Option<usize>) {
    let p = Pair::new();
    let options = SpecOptions {
        height: 32,
        width: 32,
        in_channels: 3,
        classes: 10,
        width_mult: 0.25,
        hidden: 64,
        adaptive_pool,
    };
    let spec = ModelSpec::new(model, options).unwrap();
    let cpu_vgg = Vgg::init(&p.cpu, spec.clone(), &InitScheme::REFERENCE, 7).unwrap();
    let gpu_vgg = Vgg::init(&p.gpu, spec, &InitScheme::REFERENCE, 7).unwrap();
    let x = p.normal(&[3, 3, 32, 32], 8);
    let run = RunOptions {
        keep_prob: 0.5,
        seed: 9,
        training: true,
    };

    let cpu_tape = Tape::new(p.cpu.clone());
    let cpu_logits = cpu_vgg
        .forward(&cpu_tape, &cpu_tape.constant(x.0.clone()), run)
        .unwrap();
    let cpu_loss = cpu_tape.l2_loss(&cpu_logits).unwrap();
    let gpu_tape = Tape::new(p.gpu.clone());
    let gpu_logits = gpu_vgg
        .forward(&gpu_tape, &gpu_tape.constant(x.1.clone()), run)
        .unwrap();
    let gpu_loss = gpu_tape.l2_loss(&gpu_logits).unwrap();
    p.check(
        "logits",
        &(cpu_logits.value().clone(), gpu_logits.value().clone()),
        FORWARD,
    );
    p.check(
        "l2_loss",
        &(cpu_loss.value().clone(), gpu_loss.value().clone()),
        FORWARD,
    );

    let cpu_grads = cpu_tape.backward(&cpu_loss).unwrap();
    let gpu_grads = gpu_tape.backward(&gpu_loss).unwrap();
    let names: Vec<String> = cpu_vgg.named_params().into_iter().map(|(n, _)| n).collect();
    let convs = 8 * (1 + usize::from(model.batch_norm()));
    assert_eq!(
        names.len(),
        2 * convs + 6,
        "8 convolutions and 3 linear layers"
    );
    // A convolution's bias before BatchNorm in training has a gradient of rounding noise only.
    let noise: Vec<String> = cpu_vgg
        .spec()
        .layers
        .iter()
        .filter(|l| l.batch_norm)
        .filter_map(|l| Some(format!("{}.bias", l.torch_prefix()?)))
        .collect();
    for name in names.into_iter().filter(|n| !noise.contains(n)) {
        let pair = (
            cpu_grads.by_name(&name).unwrap().clone(),
            gpu_grads
                .by_name(&name)
                .unwrap_or_else(|| panic!("no GPU gradient for {name}"))
                .clone(),
        );
        p.check(&format!("gradient of {name}"), &pair, GRADIENT);
    }
    for ((name, c), (_, g)) in cpu_vgg
        .named_buffers(&p.cpu)
        .unwrap()
        .into_iter()
        .zip(gpu_vgg.named_buffers(&p.gpu).unwrap())
    {
        p.check(&format!("{name} after the step"), &(c, g), FORWARD);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_small_vgg_forward_backward_matches_the_cpu() {
    a_small_vgg_matches_the_cpu(VggConfig::Vgg11, None);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_small_vgg_with_batch_norm_and_the_adaptive_pool_matches_the_cpu() {
    a_small_vgg_matches_the_cpu(VggConfig::Vgg11Bn, Some(2));
}

/// NaN propagates through ReLU, the fused bias+ReLU and max-pooling as on the CPU (and in PyTorch).
#[test]
#[ignore = "needs a CUDA GPU"]
fn nan_propagates_as_on_the_cpu() {
    let b = gpu();
    let mut v = vec![0.5f32; 2 * 8 * 8];
    v[9] = f32::NAN;
    let x = b.upload(&Shape::from([1, 2, 8, 8]), &v).unwrap();
    let y = b.download(&b.relu(&x).unwrap()).unwrap();
    assert!(y[9].is_nan() && !y[8].is_nan());
    let w = b.full(&Shape::from([3, 2, 3, 3]), 0.1).unwrap();
    let bias = b.zeros(&Shape::from([3])).unwrap();
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let y = b
        .download(&b.conv2d_bias_act(&x, &w, &bias, p, true).unwrap())
        .unwrap();
    assert!(y[9].is_nan(), "fused bias+ReLU hid a NaN");
    let (pooled, _) = b
        .max_pool2d(
            &x,
            Pool2dParams {
                kernel: 2,
                stride: 2,
            },
        )
        .unwrap();
    let pooled = b.download(&pooled).unwrap();
    assert!(pooled[0].is_nan() && !pooled[1].is_nan(), "{pooled:?}");
}

/// The primitives of the open core: every unary and binary op (with broadcasting), every
/// reduction over several axis sets, permutes, slices, joins and average pooling.
#[test]
#[ignore = "needs a CUDA GPU"]
fn primitives_match_the_cpu() {
    let p = Pair::new();
    let x = p.normal(&[2, 3, 4, 5], 1);
    // Positive values for the ops defined only there.
    let positive = both!(p, |b, t| b
        .add(
            &b.unary(UnaryOp::Abs, &t(&x)).unwrap(),
            &b.scalar(0.5).unwrap()
        )
        .unwrap());
    for op in UnaryOp::ALL {
        let input = if matches!(op, UnaryOp::Log | UnaryOp::Sqrt) {
            &positive
        } else {
            &x
        };
        let y = both!(p, |b, t| b.unary(op, &t(input)).unwrap());
        p.check(&format!("unary {op:?}"), &y, FORWARD);
    }
    let shapes: [&[usize]; 5] = [&[2, 3, 4, 5], &[4, 1], &[3, 1, 5], &[1], &[]];
    for (i, other) in shapes.iter().enumerate() {
        let o = both!(p, |b, _t| b
            .add(
                &p_normal_or_scalar(b, other, 10 + i as u64),
                &b.scalar(3.0).unwrap()
            )
            .unwrap());
        for op in BinaryOp::ALL {
            let y = both!(p, |b, t| b.binary(op, &t(&x), &t(&o)).unwrap());
            p.check(&format!("binary {op:?} with {other:?}"), &y, FORWARD);
            let y = both!(p, |b, t| b.binary(op, &t(&o), &t(&x)).unwrap());
            p.check(&format!("binary {op:?} of {other:?} first"), &y, FORWARD);
        }
    }
    for axes in [
        &[0][..],
        &[1],
        &[3],
        &[0, 2, 3],
        &[1, 3],
        &[0, 1, 2, 3],
        &[],
    ] {
        for op in ReduceOp::ALL {
            let y = both!(p, |b, t| b.reduce(op, &t(&x), axes).unwrap());
            p.check(&format!("reduce {op:?} over {axes:?}"), &y, FORWARD);
        }
    }
    let y = both!(p, |b, t| b.permute(&t(&x), &[2, 0, 3, 1]).unwrap());
    p.check("permute", &y, 0.0);
    let y = both!(p, |b, t| b.slice(&t(&x), 2, 1, 2).unwrap());
    p.check("slice", &y, 0.0);
    let z = p.normal(&[2, 2, 4, 5], 3);
    let y = both!(p, |b, t| b.concat(&[&t(&x), &t(&z), &t(&x)], 1).unwrap());
    p.check("concat", &y, 0.0);
    let img = p.normal(&[2, 3, 9, 8], 4);
    for (kernel, stride) in [(2, 2), (3, 2), (2, 1), (3, 3)] {
        let pp = Pool2dParams { kernel, stride };
        let y = both!(p, |b, t| b.avg_pool2d(&t(&img), pp).unwrap());
        p.check(&format!("avg_pool2d {kernel}/{stride}"), &y, FORWARD);
        let dy_dims: Vec<usize> = y.0.shape().dims().to_vec();
        let dy = p.normal(&dy_dims, 5);
        let dx = both!(p, |b, t| b
            .avg_pool2d_backward(&t(&dy), &Shape::from([2, 3, 9, 8]), pp)
            .unwrap());
        p.check(
            &format!("avg_pool2d_backward {kernel}/{stride}"),
            &dx,
            FORWARD,
        );
    }
}

/// A normal tensor of `dims` (the same values on both backends), or a scalar for `[]`.
fn p_normal_or_scalar<B: Backend>(b: &B, dims: &[usize], seed: u64) -> B::Tensor {
    b.random_normal(&Shape::from(dims), 0.0, 1.0, seed).unwrap()
}
