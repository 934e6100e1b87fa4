//! A small ResNet (residual blocks with batch norm, a projection shortcut, global average pooling
//! and a custom activation) trained on the digits shipped in `data/digits`: proof that the tape
//! and the backends serve networks other than VGG. It uses only vgg-tensor, vgg-autodiff and a
//! backend; the same code runs on any of them.
//!
//! `cargo run --release -p vgg-autodiff --example resnet_digits [-- --backend cuda]`

use std::path::Path;

use vgg_autodiff::{CustomOp, Result, Tape, Value, Var};
use vgg_tensor::prelude::*;
use vgg_tensor::{AdamParams, Conv2dParams};

/// The network's own activation, added to the tape from outside: swish(x) = x sigmoid(x).
#[derive(Clone, Copy)]
pub struct Swish;

impl<B: Backend> CustomOp<B> for Swish {
    fn name(&self) -> &'static str {
        "swish"
    }

    fn forward(&self, b: &B, x: &[&Value<B>]) -> Result<Value<B>> {
        Ok(b.mul(x[0], &b.unary(UnaryOp::Sigmoid, x[0])?)?)
    }

    /// d swish / dx = s + x s (1 - s), with s = sigmoid(x).
    fn backward(
        &self,
        b: &B,
        x: &[Value<B>],
        _y: &Value<B>,
        dy: &Value<B>,
        _needs: &[bool],
    ) -> Result<Vec<Option<Value<B>>>> {
        let s = b.unary(UnaryOp::Sigmoid, &x[0])?;
        let slope = b.add(
            &s,
            &b.mul(&b.mul(&x[0], &s)?, &b.sub(&b.scalar(1.0)?, &s)?)?,
        )?;
        Ok(vec![Some(b.mul(dy, &slope)?)])
    }
}

/// Labelled 8x8 grey images.
pub struct Digits {
    /// Images, NCHW f32, one after another.
    pub images: Vec<f32>,
    /// The class of each image.
    pub labels: Vec<usize>,
}

impl Digits {
    fn subset(&self, indices: &[usize]) -> Digits {
        Digits {
            images: indices
                .iter()
                .flat_map(|&i| self.images[i * 64..(i + 1) * 64].iter().copied())
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}

/// The values of one of the shipped `.npy` files (little-endian float32, as
/// `scripts/convert_digits.py` writes them).
fn read_npy(path: &Path) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let header = bytes
        .get(8..10)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        .filter(|_| bytes.starts_with(b"\x93NUMPY\x01"))
        .ok_or_else(|| format!("{} is not a version-1 .npy file", path.display()))?;
    let text = String::from_utf8_lossy(&bytes[10..(10 + header).min(bytes.len())]);
    if !text.contains("'descr': '<f4'") {
        return Err(format!("{} does not hold float32 values", path.display()));
    }
    Ok(bytes[(10 + header).min(bytes.len())..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The 1,797 digits (grey levels 0..16 mapped to [-1, 1]), split into (train, test) by a seeded
/// shuffle with `test_fraction` held out.
pub fn load_digits(dir: &Path, test_fraction: f64) -> Result<(Digits, Digits), String> {
    let images: Vec<f32> = read_npy(&dir.join("digits-images.npy"))?
        .into_iter()
        .map(|v| v / 8.0 - 1.0)
        .collect();
    let labels: Vec<usize> = read_npy(&dir.join("digits-labels.npy"))?
        .into_iter()
        .map(|l| l as usize)
        .collect();
    if images.len() != labels.len() * 64 || labels.iter().any(|&l| l > 9) {
        return Err(format!("{} does not hold the digits", dir.display()));
    }
    let all = Digits { images, labels };
    let mut order: Vec<usize> = (0..all.labels.len()).collect();
    for i in (1..order.len()).rev() {
        let j = (vgg_tensor::random::bits(17, i as u64) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let test = (all.labels.len() as f64 * test_fraction).round() as usize;
    Ok((all.subset(&order[test..]), all.subset(&order[..test])))
}

/// A convolution without bias (batch norm follows) and its batch norm's parameters and running
/// statistics.
struct ConvBn<B: Backend> {
    weight: usize,
    gamma: usize,
    beta: usize,
    stride: usize,
    running_mean: Value<B>,
    running_var: Value<B>,
}

/// conv-bn-swish-conv-bn, plus the input (or its 1x1 projection when the shape changes), then
/// swish.
struct Block<B: Backend> {
    first: ConvBn<B>,
    second: ConvBn<B>,
    shortcut: Option<ConvBn<B>>,
}

/// A ResNet for 8x8 images: a stem, residual blocks and a linear classifier on the global
/// average of the last block.
pub struct ResNet<B: Backend> {
    /// Every parameter, by name, in the order the optimiser state follows.
    pub params: Vec<(String, Value<B>)>,
    stem: ConvBn<B>,
    blocks: Vec<Block<B>>,
    fc: (usize, usize),
}

/// What batch norm keeps between batches.
const MOMENTUM: f32 = 0.1;
const EPS: f32 = 1e-5;

impl<B: Backend> ResNet<B> {
    /// Channels per stage, e.g. [16, 32]; each stage after the first halves the size.
    pub fn new(b: &B, stages: &[usize], classes: usize, seed: u64) -> vgg_tensor::Result<Self> {
        let mut params: Vec<(String, Value<B>)> = Vec::new();
        let mut conv_bn = |name: String, cin: usize, cout: usize, k: usize, stride: usize| {
            let std = (2.0 / (cin * k * k) as f32).sqrt();
            let seed = seed + params.len() as u64;
            let w = b.random_normal(&Shape::from([cout, cin, k, k]), 0.0, std, seed)?;
            let c = Shape::from([cout]);
            let index = params.len();
            params.push((format!("{name}.weight"), w));
            params.push((format!("{name}.bn.gamma"), b.full(&c, 1.0)?));
            params.push((format!("{name}.bn.beta"), b.zeros(&c)?));
            Ok::<_, vgg_tensor::TensorError>(ConvBn {
                weight: index,
                gamma: index + 1,
                beta: index + 2,
                stride,
                running_mean: b.zeros(&c)?,
                running_var: b.full(&c, 1.0)?,
            })
        };
        let stem = conv_bn("stem".into(), 1, stages[0], 3, 1)?;
        let mut blocks = Vec::new();
        let mut cin = stages[0];
        for (s, &cout) in stages.iter().enumerate() {
            let stride = if s == 0 { 1 } else { 2 };
            for i in 0..2 {
                let (stride, from) = if i == 0 { (stride, cin) } else { (1, cout) };
                let name = format!("stage{s}.{i}");
                let first = conv_bn(format!("{name}.conv1"), from, cout, 3, stride)?;
                let second = conv_bn(format!("{name}.conv2"), cout, cout, 3, 1)?;
                let shortcut = if stride != 1 || from != cout {
                    Some(conv_bn(format!("{name}.shortcut"), from, cout, 1, stride)?)
                } else {
                    None
                };
                blocks.push(Block {
                    first,
                    second,
                    shortcut,
                });
            }
            cin = cout;
        }
        let fc = params.len();
        let std = (1.0 / cin as f32).sqrt();
        params.push((
            "fc.weight".into(),
            b.random_normal(&Shape::from([classes, cin]), 0.0, std, seed + 999)?,
        ));
        params.push(("fc.bias".into(), b.zeros(&Shape::from([classes]))?));
        Ok(ResNet {
            params,
            stem,
            blocks,
            fc: (fc, fc + 1),
        })
    }

    /// Logits of `x` ([N, 1, 8, 8]) and the tape's parameter variables (in `params` order). In
    /// training, batch norm uses (and updates the running averages from) the batch's statistics.
    pub fn forward(
        &mut self,
        tape: &Tape<B>,
        x: &Var<B>,
        training: bool,
    ) -> vgg_autodiff::Result<(Var<B>, Vec<Var<B>>)> {
        let vars: Vec<Var<B>> = self
            .params
            .iter()
            .map(|(n, t)| tape.param(n.clone(), t.clone()))
            .collect();
        let b = tape.backend().clone();
        let apply = |layer: &mut ConvBn<B>, h: &Var<B>| -> vgg_autodiff::Result<Var<B>> {
            let w = &vars[layer.weight];
            let k = w.shape().dims()[2];
            let p = Conv2dParams {
                stride: layer.stride,
                padding: k / 2,
            };
            let z = tape.conv2d(h, w, p)?;
            let (gamma, beta) = (&vars[layer.gamma], &vars[layer.beta]);
            if !training {
                return tape.batch_norm_eval(
                    &z,
                    &layer.running_mean,
                    &layer.running_var,
                    gamma,
                    beta,
                    EPS,
                );
            }
            let out = tape.batch_norm(&z, gamma, beta, EPS)?;
            // Running averages with the unbiased variance, as PyTorch keeps them.
            let n = (z.shape().elements() / z.shape().dims()[1]) as f32;
            let unbiased = b.scale(&out.var, n / (n - 1.0).max(1.0))?;
            let blend = |running: &Value<B>, batch: &Value<B>| {
                b.add(
                    &b.scale(running, 1.0 - MOMENTUM)?,
                    &b.scale(batch, MOMENTUM)?,
                )
            };
            layer.running_mean = blend(&layer.running_mean, &out.mean)?;
            layer.running_var = blend(&layer.running_var, &unbiased)?;
            Ok(out.y)
        };
        let mut h = tape.apply(Swish, &[&apply(&mut self.stem, x)?])?;
        for block in &mut self.blocks {
            let inner = tape.apply(Swish, &[&apply(&mut block.first, &h)?])?;
            let inner = apply(&mut block.second, &inner)?;
            let skip = match &mut block.shortcut {
                Some(projection) => apply(projection, &h)?,
                None => h.clone(),
            };
            h = tape.apply(Swish, &[&tape.add(&inner, &skip)?])?;
        }
        let pooled = tape.global_avg_pool(&h)?;
        let logits = tape.linear(&pooled, &vars[self.fc.0], &vars[self.fc.1])?;
        Ok((logits, vars))
    }
}

/// Settings of a training run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Residual blocks in each of the two stages.
    pub stages: [usize; 2],
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Learning rate of SGD.
    pub lr: f32,
    /// Seed of the initial weights and of the shuffling.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stages: [16, 32],
            epochs: 8,
            batch: 64,
            lr: 3e-3,
            seed: 1,
        }
    }
}

/// Accuracy of `net` on `data`, with batch norm's running statistics.
pub fn accuracy<B: Backend>(
    b: &B,
    net: &mut ResNet<B>,
    data: &Digits,
) -> vgg_autodiff::Result<f64> {
    let mut correct = 0;
    for (images, labels) in data.images.chunks(256 * 64).zip(data.labels.chunks(256)) {
        let tape = Tape::inference(b.clone());
        let x = b.upload(&Shape::from([labels.len(), 1, 8, 8]), images)?;
        let (logits, _) = net.forward(&tape, &tape.constant(x), false)?;
        let predicted = b.argmax_rows(logits.value())?;
        correct += predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    }
    Ok(correct as f64 / data.labels.len().max(1) as f64)
}

/// Trains with Adam on `train` and returns the network and (final epoch's mean loss, held-out
/// accuracy) after each epoch.
pub fn train<B: Backend>(
    b: &B,
    train: &Digits,
    test: &Digits,
    s: Settings,
    mut report: impl FnMut(usize, f64, f64),
) -> vgg_autodiff::Result<ResNet<B>> {
    let mut net = ResNet::new(b, &s.stages, 10, s.seed)?;
    let mut moments: Vec<(Value<B>, Value<B>)> = net
        .params
        .iter()
        .map(|(_, p)| Ok((b.zeros(p.shape())?, b.zeros(p.shape())?)))
        .collect::<vgg_tensor::Result<_>>()?;
    let mut step = 0u64;
    for epoch in 0..s.epochs {
        let mut order: Vec<usize> = (0..train.labels.len()).collect();
        for i in (1..order.len()).rev() {
            let j = (vgg_tensor::random::bits(s.seed + epoch as u64, i as u64) % (i as u64 + 1))
                as usize;
            order.swap(i, j);
        }
        let mut loss_sum = 0.0;
        for chunk in order.chunks(s.batch) {
            let batch = train.subset(chunk);
            let tape = Tape::new(b.clone());
            let x = b.upload(&Shape::from([chunk.len(), 1, 8, 8]), &batch.images)?;
            let (logits, vars) = net.forward(&tape, &tape.constant(x), true)?;
            let loss = tape.cross_entropy(&logits, &batch.labels)?;
            loss_sum += b.scalar_value(loss.value())? as f64 * chunk.len() as f64;
            let grads = tape.backward(&loss)?;
            step += 1;
            // Cosine decay of the rate over the run.
            let progress = (epoch as f32 + 0.5) / s.epochs as f32;
            let lr = s.lr * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
            let hp = AdamParams {
                lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                step,
            };
            for (((_, param), (m, v)), var) in net.params.iter_mut().zip(&mut moments).zip(&vars) {
                b.adam_step(param, m, v, &grads.get(var)?, hp)?;
            }
        }
        let held_out = accuracy(b, &mut net, test)?;
        report(epoch + 1, loss_sum / train.labels.len() as f64, held_out);
    }
    Ok(net)
}

/// The repository's digits: where the build found them, else `data/digits` under the current
/// directory (for binaries moved to another machine, run from the repository's root).
pub fn digits_dir() -> std::path::PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits");
    if built.is_dir() {
        built
    } else {
        std::path::PathBuf::from("data/digits")
    }
}

fn run<B: Backend>(b: &B) -> Result<(), String> {
    let (train_set, test_set) = load_digits(&digits_dir(), 0.2)?;
    println!(
        "ResNet on {}: {} training and {} held-out digits",
        b.name(),
        train_set.labels.len(),
        test_set.labels.len()
    );
    let start = std::time::Instant::now();
    b.execute(|| {
        train(
            b,
            &train_set,
            &test_set,
            Settings::default(),
            |e, loss, acc| {
                println!(
                    "epoch {e}: train loss {loss:.4}, held-out accuracy {:.2}% ({:.1} s)",
                    100.0 * acc,
                    start.elapsed().as_secs_f64()
                )
            },
        )
        .map(drop)
    })
    .map_err(|e| e.to_string())
}

#[allow(dead_code)]
fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .position(|a| a == "--backend")
        .map(|i| args.get(i + 1))
    {
        Some(Some(b)) if b == "cuda" => {
            let gpu = vgg_cuda::CudaBackend::new(vgg_cuda::CudaOptions::default())
                .map_err(|e| e.to_string())?;
            run(&gpu)
        }
        Some(Some(b)) if b != "cpu" => Err(format!("unknown backend '{b}': use cpu or cuda")),
        Some(None) => Err("--backend needs a value: cpu or cuda".into()),
        _ => run(&vgg_ndarray::CpuBackend::new(0).map_err(|e| e.to_string())?),
    }
}
