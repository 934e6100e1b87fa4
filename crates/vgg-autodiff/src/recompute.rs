//! Recomputation: which values the tape computes again in backward instead of keeping, and how
//! an op keeps a value for its backward ([`Saved`]) so that a recomputed one is not held anyway.

use std::rc::Rc;

use vgg_tensor::{Backend, DeviceTensor, Shape};

use crate::tape::{Value, Var};

/// How to compute a value again from what the tape keeps anyway.
pub type Recipe<B> = Rc<dyn Fn(&B) -> vgg_tensor::Result<Value<B>>>;

/// When a ReLU convolution's output is recomputed in backward instead of kept (see
/// [`Tape::set_recompute`](crate::Tape::set_recompute)). Neither the convolution (for its ReLU's mask) nor the convolutions
/// that read its output keep it: each computes it again from the input when its backward runs,
/// so it is freed as soon as forward is done with it instead of living through all of backward.
/// In a VGG the first layer's output is the largest activation, and the peak of backward is
/// where the layer above's gradients meet it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recompute {
    /// Only convolutions whose inner dimension (input channels x kernel height x kernel width)
    /// is at most this: cheap to run again (a first layer on RGB images: 27).
    pub max_inner: usize,
    /// Only outputs of at least this many bytes: where the memory is worth the time.
    pub min_output_bytes: usize,
}

impl Recompute {
    /// Never recompute: every ReLU convolution keeps its output.
    pub const NEVER: Recompute = Recompute {
        max_inner: 0,
        min_output_bytes: usize::MAX,
    };

    /// Whether a convolution of weight shape `w` (OIHW) whose output takes `output_bytes` is
    /// recomputed.
    pub fn applies(&self, w: &Shape, output_bytes: usize) -> bool {
        let inner: usize = w.dims().iter().skip(1).product();
        w.rank() == 4 && inner <= self.max_inner && output_bytes >= self.min_output_bytes
    }
}

impl Default for Recompute {
    /// A first layer on RGB images (27) with 64 MiB of output or more: VGG-16's conv1_1 from
    /// batch 6 at 224x224 (411 MB at batch 32, which comes off the forward-backward peak), for
    /// two runs of that layer in backward (under 1% of a step); small images and batches are
    /// untouched.
    fn default() -> Self {
        Recompute {
            max_inner: 32,
            min_output_bytes: 64 << 20,
        }
    }
}

/// A value an op keeps for its backward: the value, or, where the tape recomputes it (see
/// [`Recompute`]), how to compute it again. Any op, custom ones included, keeps its inputs this
/// way (`Saved::of` in forward, `get` in backward), so a recomputed value is not held through
/// backward by the ops that read it.
#[derive(Clone)]
pub enum Saved<B: Backend> {
    /// The value itself, shared with whatever else holds it.
    Value(Value<B>),
    /// How to compute it again, and its shape.
    Recipe(Recipe<B>, Shape),
}

impl<B: Backend> Saved<B> {
    /// What keeps `x` for backward: its recipe where the tape recomputes it, else the value.
    pub fn of(x: &Var<B>) -> Saved<B> {
        match &x.recipe {
            Some(recipe) => Saved::Recipe(recipe.clone(), x.shape().clone()),
            None => Saved::Value(x.value.clone()),
        }
    }

    /// Bytes held until backward.
    pub fn bytes(&self) -> usize {
        match self {
            Saved::Value(t) => t.bytes(),
            Saved::Recipe(..) => 0,
        }
    }

    /// The value's shape, known without computing it.
    pub fn shape(&self) -> &Shape {
        match self {
            Saved::Value(t) => t.shape(),
            Saved::Recipe(_, shape) => shape,
        }
    }

    /// The value: shared where kept, computed where not.
    pub fn get(&self, b: &B) -> vgg_tensor::Result<Value<B>> {
        match self {
            Saved::Value(t) => Ok(t.clone()),
            Saved::Recipe(recipe, _) => recipe(b),
        }
    }
}
