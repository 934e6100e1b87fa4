//! VGG configurations (Simonyan & Zisserman 2014, Table 1), the static layer spec,
//! receptive-field arithmetic, and the network at run time built from that spec.

pub mod config;
pub mod cost;
pub mod explain;
pub mod imagenet;
pub mod model;
pub mod rf;
pub mod spec;

pub use config::{Stage, VggConfig};
pub use cost::{Bound, LayerCost};
pub use explain::{Explanation, Question, SmoothGrad};
pub use model::{ModelError, PartialOptions, Prediction, SettingDiffers, Vgg};
pub use rf::{
    parse_stack, stack_fields, stack_weights_per_c2, ReceptiveField, StackKind, StackLayer,
};
pub use spec::{
    smallest_input, Chw, LayerOp, LayerSpec, MemoryEstimate, ModelSpec, SpecOptions, Workload,
    F32_BYTES,
};

/// Why a spec could not be computed. Each message names the problem and what would work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown model '{given}': choose one of {choices}")]
    /// The model name is none of the known ones.
    UnknownModel {
        /// The name given.
        given: String,
        /// The known names.
        choices: String,
    },
    #[error("{what} must be at least 1")]
    /// A size that must be at least 1 is 0.
    Zero {
        /// The size, in words.
        what: &'static str,
    },
    #[error("width multiplier {0} is out of range: use a number in (0, 16], e.g. 0.125")]
    /// The width multiplier is outside (0, 16].
    BadWidthMult(f64),
    #[error(
        "input {height}x{width} is too small for {model}: its five 2x2 pools need at least {min}x{min}"
    )]
    /// The input is smaller than the network's five pools allow.
    InputTooSmall {
        /// The configuration's name.
        model: &'static str,
        /// The input height given.
        height: usize,
        /// The input width given.
        width: usize,
        /// The smallest height and width the network accepts.
        min: usize,
    },
    #[error("bad layer '{item}' in the stack: expected {grammar}")]
    /// An entry of a layer stack (for `rf`) could not be parsed.
    BadLayerStack {
        /// The entry.
        item: String,
        /// What entries look like.
        grammar: &'static str,
    },
    #[error("{what}: the count does not fit in 64 bits; use smaller sizes")]
    /// A count (parameters, operations, bytes) does not fit in 64 bits.
    TooLarge {
        /// The count, in words.
        what: String,
    },
    #[error(
        "{what} needs an estimated {needed} of memory (from the spec), but {available} is available{}",
        match largest_batch {
            Some(b) => format!(": the largest batch that fits is {b}"),
            None => ": make the network smaller (fewer classes or hidden units, a smaller width multiplier or input)".to_string(),
        }
    )]
    /// The work would need more memory than is available.
    OutOfMemory {
        /// What would be allocated, in words.
        what: String,
        /// The bytes it needs, formatted.
        needed: String,
        /// The bytes available, formatted.
        available: String,
        /// The largest batch that would fit, where the batch is what grows.
        largest_batch: Option<usize>,
    },
}
