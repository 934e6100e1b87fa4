//! Seeded initialisers. Fans follow the usual conventions: for a conv weight [O, I, KH, KW],
//! fan_in = I*KH*KW and fan_out = O*KH*KW; for a linear weight [out, in], fan_in = in, fan_out = out.

use vgg_tensor::{Backend, Result, Shape};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Glorot & Bengio: uniform on +-sqrt(6 / (fan_in + fan_out)); TensorFlow's xavier_initializer.
    XavierUniform,
    /// He et al.: normal with std sqrt(2 / fan_out), as torchvision initialises VGG's convolutions.
    KaimingNormalFanOut,
    /// He et al.: normal with std sqrt(2 / fan_in).
    KaimingNormalFanIn,
    Normal {
        std: f32,
    },
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
    pub fn tensor<B: Backend>(self, backend: &B, shape: &Shape, seed: u64) -> Result<B::Tensor> {
        let (fan_in, fan_out) = fans(shape);
        match self {
            Init::XavierUniform => {
                let limit = (6.0 / (fan_in + fan_out) as f32).sqrt();
                backend.random_uniform(shape, -limit, limit, seed)
            }
            Init::KaimingNormalFanOut => {
                backend.random_normal(shape, 0.0, (2.0 / fan_out as f32).sqrt(), seed)
            }
            Init::KaimingNormalFanIn => {
                backend.random_normal(shape, 0.0, (2.0 / fan_in as f32).sqrt(), seed)
            }
            Init::Normal { std } => backend.random_normal(shape, 0.0, std, seed),
            Init::Constant(v) => backend.full(shape, v),
        }
    }
}

/// How a network's weights and biases start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InitScheme {
    pub conv_weight: Init,
    pub conv_bias: Init,
    pub linear_weight: Init,
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
