//! VGG configurations (Simonyan & Zisserman 2014, Table 1), the static layer spec,
//! receptive-field arithmetic, and the network at run time built from that spec.

pub mod config;
pub mod model;
pub mod rf;
pub mod spec;

pub use config::{Stage, VggConfig};
pub use model::{ModelError, PartialOptions, Prediction, Vgg};
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
    UnknownModel { given: String, choices: String },
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error("width multiplier {0} is out of range: use a number in (0, 16], e.g. 0.125")]
    BadWidthMult(f64),
    #[error(
        "input {height}x{width} is too small for {model}: its five 2x2 pools need at least {min}x{min}"
    )]
    InputTooSmall {
        model: &'static str,
        height: usize,
        width: usize,
        min: usize,
    },
    #[error("bad layer '{item}' in the stack: expected {grammar}")]
    BadLayerStack { item: String, grammar: &'static str },
    #[error("{what}: the count does not fit in 64 bits; use smaller sizes")]
    TooLarge { what: String },
    #[error(
        "{what} needs an estimated {needed} of memory (from the spec), but {available} is available{}",
        match largest_batch {
            Some(b) => format!(": the largest batch that fits is {b}"),
            None => ": make the network smaller (fewer classes or hidden units, a smaller width multiplier or input)".to_string(),
        }
    )]
    OutOfMemory {
        what: String,
        needed: String,
        available: String,
        largest_batch: Option<usize>,
    },
}
