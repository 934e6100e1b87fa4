//! Seeded initialisers, drawn on the host with ndarray-rand's distributions from a counter-based
//! generator (`vgg_tensor::random::bits`), so the same seed gives the same weights on every
//! backend and thread count, then uploaded. Fans follow the usual conventions: for a conv weight
//! [O, I, KH, KW], fan_in = I*KH*KW and fan_out = O*KH*KW; for a linear weight [out, in],
//! fan_in = in, fan_out = out.

use ndarray::{ArrayD, IxDyn};
use ndarray_rand::rand::RngCore;
use ndarray_rand::rand_distr::{Distribution, Normal, Uniform};
use ndarray_rand::RandomExt;
use vgg_tensor::{Backend, Result, Shape, TensorError};

/// A portable seeded generator: output i of stream `seed` is `random::bits(seed, i)`, the same
/// on every platform and version (rand's own small generators promise neither).
#[derive(Debug, Clone)]
pub struct CounterRng {
    seed: u64,
    index: u64,
    /// The low half of the last 64 bits, when `next_u32` has used only the high half.
    spare: Option<u32>,
}

impl CounterRng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> CounterRng {
        CounterRng {
            seed,
            index: 0,
            spare: None,
        }
    }
}

impl RngCore for CounterRng {
    /// Both halves of each 64 bits serve: the high half, then the low one.
    fn next_u32(&mut self) -> u32 {
        if let Some(low) = self.spare.take() {
            return low;
        }
        let bits = self.next_u64();
        self.spare = Some(bits as u32);
        (bits >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.spare = None;
        let bits = vgg_tensor::random::bits(self.seed, self.index);
        self.index = self.index.wrapping_add(1);
        bits
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// `shape`'s values drawn from `dist` with stream `seed`, uploaded.
fn draw<B: Backend>(
    backend: &B,
    shape: &Shape,
    dist: impl Distribution<f32>,
    seed: u64,
) -> Result<B::Tensor> {
    shape.checked_elements()?;
    let values = ArrayD::random_using(IxDyn(shape.dims()), dist, &mut CounterRng::new(seed));
    let values = values.as_slice().expect("a new array is contiguous");
    backend.upload(shape, values)
}

fn bad_parameters(what: String) -> TensorError {
    TensorError::InvalidArgument {
        op: "init",
        message: what,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
/// How a parameter tensor's initial values are drawn.
pub enum Init {
    /// Glorot & Bengio: uniform on +-sqrt(6 / (fan_in + fan_out)); TensorFlow's xavier_initializer.
    XavierUniform,
    /// He et al.: normal with std sqrt(2 / fan_out), as torchvision initialises VGG's convolutions.
    KaimingNormalFanOut,
    /// He et al.: normal with std sqrt(2 / fan_in).
    KaimingNormalFanIn,
    /// Normal with mean 0 and standard deviation `std`.
    Normal {
        /// The standard deviation.
        std: f32,
    },
    /// Every value the same.
    Constant(f32),
}

/// (fan_in, fan_out) of a weight shape.
pub fn fans(shape: &Shape) -> (usize, usize) {
    match shape.dims() {
        [out, inp] => (*inp, *out),
        [out, inp, rest @ ..] => {
            let field: usize = rest.iter().product();
            (inp * field, out * field)
        }
        [n] => (*n, *n),
        _ => (1, 1),
    }
}

impl Init {
    /// A tensor of `shape` drawn on `backend`; the same seed gives the same values on every backend.
    pub fn tensor<B: Backend>(self, backend: &B, shape: &Shape, seed: u64) -> Result<B::Tensor> {
        let (fan_in, fan_out) = fans(shape);
        let normal = |std: f32| {
            Normal::new(0.0, std).map_err(|e| bad_parameters(format!("normal with std {std}: {e}")))
        };
        match self {
            Init::XavierUniform => {
                let limit = (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
                let dist = Uniform::new(-limit, limit)
                    .map_err(|e| bad_parameters(format!("uniform on +-{limit}: {e}")))?;
                draw(backend, shape, dist, seed)
            }
            Init::KaimingNormalFanOut => {
                let std = (2.0 / fan_out.max(1) as f32).sqrt();
                draw(backend, shape, normal(std)?, seed)
            }
            Init::KaimingNormalFanIn => {
                let std = (2.0 / fan_in.max(1) as f32).sqrt();
                draw(backend, shape, normal(std)?, seed)
            }
            Init::Normal { std } => draw(backend, shape, normal(std)?, seed),
            Init::Constant(v) => backend.full(shape, v),
        }
    }
}

/// How a network's weights and biases start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InitScheme {
    /// Initialiser of convolution weights.
    pub conv_weight: Init,
    /// Initialiser of convolution biases.
    pub conv_bias: Init,
    /// Initialiser of fully connected weights.
    pub linear_weight: Init,
    /// Initialiser of fully connected biases.
    pub linear_bias: Init,
}

impl InitScheme {
    /// The reference program's: Xavier weights, conv biases 0, fully connected biases 0.1.
    pub const REFERENCE: InitScheme = InitScheme {
        conv_weight: Init::XavierUniform,
        conv_bias: Init::Constant(0.0),
        linear_weight: Init::XavierUniform,
        linear_bias: Init::Constant(0.1),
    };

    /// torchvision's VGG: Kaiming-normal (fan out) convolutions, N(0, 0.01) linear layers, zero biases.
    pub const KAIMING: InitScheme = InitScheme {
        conv_weight: Init::KaimingNormalFanOut,
        conv_bias: Init::Constant(0.0),
        linear_weight: Init::Normal { std: 0.01 },
        linear_bias: Init::Constant(0.0),
    };
}

/// A seed for parameter `index` of a network seeded with `seed`, so each tensor gets its own stream.
pub fn param_seed(seed: u64, index: usize) -> u64 {
    vgg_tensor::random::bits(seed, index as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgg_tensor::prelude::*;
    use vgg_tensor::reference::ReferenceBackend;

    #[test]
    fn fans_follow_the_conventions() {
        assert_eq!(fans(&Shape::from([64, 3, 3, 3])), (27, 576));
        assert_eq!(fans(&Shape::from([10, 20])), (20, 10));
        assert_eq!(fans(&Shape::from([7])), (7, 7));
    }

    #[test]
    fn draws_are_seeded_bounded_and_of_the_right_spread() {
        let b = ReferenceBackend;
        let shape = Shape::from([256, 128]);
        let x1 = b
            .download(&Init::XavierUniform.tensor(&b, &shape, 3).unwrap())
            .unwrap();
        let x2 = b
            .download(&Init::XavierUniform.tensor(&b, &shape, 3).unwrap())
            .unwrap();
        let other = b
            .download(&Init::XavierUniform.tensor(&b, &shape, 4).unwrap())
            .unwrap();
        assert_eq!(x1, x2);
        assert_ne!(x1, other);
        let limit = (6.0f32 / 384.0).sqrt();
        assert!(x1.iter().all(|v| v.abs() <= limit));
        let k = b
            .download(
                &Init::KaimingNormalFanOut
                    .tensor(&b, &Shape::from([64, 32, 3, 3]), 5)
                    .unwrap(),
            )
            .unwrap();
        let n = k.len() as f64;
        let mean = k.iter().map(|&v| v as f64).sum::<f64>() / n;
        let sd = (k.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let want = (2.0f64 / (64.0 * 9.0)).sqrt();
        assert!(mean.abs() < 0.01 * want * 10.0, "{mean}");
        assert!((sd / want - 1.0).abs() < 0.03, "sd {sd}, want {want}");
        let c = b
            .download(
                &Init::Constant(0.1)
                    .tensor(&b, &Shape::from([3]), 0)
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(c, [0.1; 3]);
    }

    #[test]
    fn the_same_seed_gives_the_same_weights_on_every_backend_and_thread_count() {
        let shape = Shape::from([64, 32, 3, 3]);
        let want = ReferenceBackend
            .download(
                &Init::KaimingNormalFanIn
                    .tensor(&ReferenceBackend, &shape, 9)
                    .unwrap(),
            )
            .unwrap();
        for threads in [1, 2] {
            let cpu = vgg_ndarray::CpuBackend::new(threads).unwrap();
            let got = cpu
                .download(&Init::KaimingNormalFanIn.tensor(&cpu, &shape, 9).unwrap())
                .unwrap();
            assert_eq!(got, want, "{threads} threads");
        }
    }
}
