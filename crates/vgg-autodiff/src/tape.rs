//! The tape, its values and the backward walk.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use vgg_tensor::{Backend, Device, DeviceTensor, Shape};

use crate::recompute::Recipe;
use crate::{AutodiffError, Recompute, Result};

/// A plain tensor of backend `B`, which no tape records: an op's value, a gradient, a constant.
/// Its tracked counterpart is [`Var`], a value recorded on a [`Tape`].
pub type Value<B> = <B as Device>::Tensor;

/// A backward step: given the backend, the output's gradient and which inputs need one, each
/// input's gradient (None where it is not needed), in the order of the op's inputs.
pub type BackwardFn<B> = Box<dyn FnOnce(&B, &Value<B>, &[bool]) -> Result<Vec<Option<Value<B>>>>>;

static NEXT_TAPE: AtomicU64 = AtomicU64::new(1);

/// Marks values that have no node on the tape.
const UNTRACKED: usize = usize::MAX;

/// A value recorded on a tape (tracked: gradients flow back through it); its plain tensor is
/// [`Var::value`]. Cloning shares the tensor.
pub struct Var<B: Backend> {
    pub(crate) id: usize,
    pub(crate) tape: u64,
    pub(crate) value: B::Tensor,
    /// Set where the value is cheap to recompute: ops that use it then keep this instead of the
    /// value for their backward, so the value is freed once forward is done with it.
    pub(crate) recipe: Option<Recipe<B>>,
}

impl<B: Backend> Clone for Var<B> {
    fn clone(&self) -> Self {
        Var {
            id: self.id,
            tape: self.tape,
            value: self.value.clone(),
            recipe: self.recipe.clone(),
        }
    }
}

impl<B: Backend> fmt::Debug for Var<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Var")
            .field("tape", &self.tape)
            .field("tracked", &self.is_tracked())
            .field("shape", self.shape())
            .finish()
    }
}

impl<B: Backend> Var<B> {
    /// The value this variable holds.
    pub fn value(&self) -> &B::Tensor {
        &self.value
    }

    /// The value, taken out of the variable.
    pub fn into_value(self) -> B::Tensor {
        self.value
    }

    /// The shape of the value.
    pub fn shape(&self) -> &Shape {
        self.value.shape()
    }

    /// Whether gradients flow to or through this value.
    pub fn is_tracked(&self) -> bool {
        self.id != UNTRACKED
    }
}

struct Node<B: Backend> {
    op: &'static str,
    inputs: Vec<usize>,
    /// The inputs' shapes, which their gradients must have.
    input_shapes: Vec<Shape>,
    backward: Option<BackwardFn<B>>,
    saved_bytes: usize,
    label: Option<Rc<str>>,
}

struct State<B: Backend> {
    nodes: Vec<Node<B>>,
    /// Parameters by node id, with their names.
    params: HashMap<usize, String>,
    saved_bytes: usize,
}

/// A Wengert list of ops on one backend. A recording tape keeps what backward needs; an
/// inference tape (`Tape::inference`) keeps nothing, so values live only as long as their `Var`s.
pub struct Tape<B: Backend> {
    backend: B,
    id: u64,
    recording: bool,
    state: RefCell<State<B>>,
    /// Parameters are constants: gradients reach only taps (`Tape::frozen`).
    frozen: bool,
    /// Attached to the nodes recorded while it is set (per-layer profiles).
    label: RefCell<Option<Rc<str>>>,
    /// Which ReLU convolutions recompute their output in backward instead of keeping it.
    recompute: Cell<Recompute>,
}

/// Progress of a backward walk, for observers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackwardStep {
    /// Node just processed, counting down to 0.
    pub node: usize,
    /// Bytes still held by backward closures not yet run.
    pub saved_bytes_left: usize,
    /// The label that was set when the node was recorded.
    pub label: Option<Rc<str>>,
}

impl<B: Backend> Tape<B> {
    /// A tape that records for backward.
    pub fn new(backend: B) -> Tape<B> {
        Self::with_mode(backend, true, false)
    }

    /// A tape that records nothing: forward values only, no gradients.
    pub fn inference(backend: B) -> Tape<B> {
        Self::with_mode(backend, false, false)
    }

    /// A recording tape on which parameters are constants: backward computes gradients only
    /// towards taps ([`Tape::tap`]), never a weight's. For questions about the inputs and the
    /// activations (saliency, Grad-CAM), which would otherwise pay for every weight gradient.
    pub fn frozen(backend: B) -> Tape<B> {
        Self::with_mode(backend, true, true)
    }

    fn with_mode(backend: B, recording: bool, frozen: bool) -> Tape<B> {
        Tape {
            backend,
            id: NEXT_TAPE.fetch_add(1, Ordering::Relaxed),
            recording,
            frozen,
            state: RefCell::new(State {
                nodes: Vec::new(),
                params: HashMap::new(),
                saved_bytes: 0,
            }),
            label: RefCell::new(None),
            recompute: Cell::new(Recompute::default()),
        }
    }

    /// Labels the ops recorded from now on (None: no label), e.g. with the layer they belong to.
    pub fn set_label(&self, label: Option<&str>) {
        *self.label.borrow_mut() = label.map(Rc::from);
    }

    /// Which ReLU convolutions recorded from now on recompute their output in backward instead
    /// of keeping it ([`Recompute::default`] unless set; [`Recompute::NEVER`] keeps every one).
    /// The gradients are the same either way.
    pub fn set_recompute(&self, policy: Recompute) {
        self.recompute.set(policy);
    }

    /// The recompute policy in force.
    pub fn recompute(&self) -> Recompute {
        self.recompute.get()
    }

    /// The backend the tape's ops run on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Whether ops are recorded for backward (false in inference mode).
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Ops recorded so far (leaves included).
    pub fn len(&self) -> usize {
        self.state.borrow().nodes.len()
    }

    /// Whether nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of tensors held for backward.
    pub fn saved_bytes(&self) -> usize {
        self.state.borrow().saved_bytes
    }

    /// A value that needs no gradient: inputs, targets, frozen parameters.
    pub fn constant(&self, value: B::Tensor) -> Var<B> {
        Var {
            id: UNTRACKED,
            tape: self.id,
            value,
            recipe: None,
        }
    }

    /// A parameter whose gradient `backward` returns under `name` (untracked on an inference or
    /// a frozen tape).
    pub fn param(&self, name: impl Into<String>, value: B::Tensor) -> Var<B> {
        if !self.recording || self.frozen {
            return self.constant(value);
        }
        let mut state = self.state.borrow_mut();
        let id = state.nodes.len();
        state.nodes.push(Node {
            op: "param",
            inputs: Vec::new(),
            input_shapes: Vec::new(),
            backward: None,
            saved_bytes: 0,
            label: None,
        });
        state.params.insert(id, name.into());
        Var {
            id,
            tape: self.id,
            value,
            recipe: None,
        }
    }

    /// Whether `v` is a parameter of this tape (its gradient lives to the end of backward).
    pub(crate) fn is_param(&self, v: &Var<B>) -> bool {
        v.tape == self.id && self.state.borrow().params.contains_key(&v.id)
    }

    pub(crate) fn check(&self, op: &'static str, v: &Var<B>) -> Result<()> {
        if v.tape == self.id {
            Ok(())
        } else {
            Err(AutodiffError::ForeignValue {
                op,
                found: v.tape,
                expected: self.id,
            })
        }
    }

    /// Records an op computed outside the tape, as the built-in ops record themselves: `value` is
    /// its result on `inputs`, and `backward` gives each input's gradient from the output's
    /// gradient, computing only those whose `needs` flag is set. `saved_bytes` is what `backward`
    /// keeps (it counts in `saved_bytes()`). When no input is tracked, or the tape does not record,
    /// `backward` is dropped at once and the result is a constant. The gradients `backward`
    /// returns are checked: one per input, each of its input's shape. [`CustomOp`](crate::CustomOp) and
    /// [`Tape::apply`] do the bookkeeping for ops that keep their inputs and output. A closure
    /// keeps an input as [`Saved::of`](crate::Saved::of) and calls `get` in backward, so an
    /// input the tape recomputes is not held through backward.
    pub fn custom_op(
        &self,
        op: &'static str,
        inputs: &[&Var<B>],
        value: B::Tensor,
        saved_bytes: usize,
        backward: impl FnOnce(&B, &Value<B>, &[bool]) -> Result<Vec<Option<Value<B>>>> + 'static,
    ) -> Result<Var<B>> {
        self.record(op, inputs, value, saved_bytes, Box::new(backward))
    }

    /// Records an op's result. `backward` owns what it saved (`saved_bytes` of it) and is dropped
    /// at once when no input is tracked or the tape does not record.
    pub(crate) fn record(
        &self,
        op: &'static str,
        inputs: &[&Var<B>],
        value: B::Tensor,
        saved_bytes: usize,
        backward: BackwardFn<B>,
    ) -> Result<Var<B>> {
        for v in inputs {
            self.check(op, v)?;
        }
        if !self.recording || !inputs.iter().any(|v| v.is_tracked()) {
            return Ok(self.constant(value));
        }
        Ok(self.push_node(op, inputs, value, saved_bytes, backward))
    }

    /// Appends a node: the op's result, tracked.
    fn push_node(
        &self,
        op: &'static str,
        inputs: &[&Var<B>],
        value: B::Tensor,
        saved_bytes: usize,
        backward: BackwardFn<B>,
    ) -> Var<B> {
        let mut state = self.state.borrow_mut();
        let id = state.nodes.len();
        state.saved_bytes += saved_bytes;
        state.nodes.push(Node {
            op,
            inputs: inputs.iter().map(|v| v.id).collect(),
            input_shapes: inputs.iter().map(|v| v.shape().clone()).collect(),
            backward: Some(backward),
            saved_bytes,
            label: self.label.borrow().clone(),
        });
        Var {
            id,
            tape: self.id,
            value,
            recipe: None,
        }
    }

    /// Records a node on `input` even when `input` is untracked, so that gradients reach it:
    /// the start of a tap. Fails on a tape that does not record.
    pub(crate) fn record_leaf(
        &self,
        op: &'static str,
        input: &Var<B>,
        value: B::Tensor,
        backward: BackwardFn<B>,
    ) -> Result<Var<B>> {
        self.check(op, input)?;
        if !self.recording {
            return Err(AutodiffError::NotRecording(op));
        }
        Ok(self.push_node(op, &[input], value, 0, backward))
    }

    /// Gradients of the scalar `loss` with respect to every parameter, walking the tape once in
    /// reverse. Consumes the tape: each backward closure, and what it saved, is dropped as soon
    /// as it has run.
    pub fn backward(self, loss: &Var<B>) -> Result<Gradients<B>> {
        self.backward_observed(loss, |_| {})
    }

    /// `backward`, calling `observe` after each node.
    pub fn backward_observed(
        self,
        loss: &Var<B>,
        observe: impl FnMut(BackwardStep),
    ) -> Result<Gradients<B>> {
        self.backward_streaming(loss, observe, |_, _| Ok::<(), AutodiffError>(()))
    }

    /// `backward_observed`, also handing each parameter's gradient to `on_param` (with the
    /// parameter's name) as soon as it is final: the walk has passed every op that used the
    /// parameter. Gradients arrive while the rest of the walk is still to run, so work on them
    /// (sending them to other processes, say) can overlap it. An error from `on_param` stops the
    /// walk and is returned.
    pub fn backward_streaming<E: From<AutodiffError>>(
        self,
        loss: &Var<B>,
        mut observe: impl FnMut(BackwardStep),
        mut on_param: impl FnMut(&str, &B::Tensor) -> std::result::Result<(), E>,
    ) -> std::result::Result<Gradients<B>, E> {
        self.check("backward", loss)?;
        if loss.shape().elements() != 1 {
            return Err(AutodiffError::NotScalar(loss.shape().clone()).into());
        }
        if !loss.is_tracked() {
            return Err(AutodiffError::LossUntracked.into());
        }
        let State {
            mut nodes,
            params,
            mut saved_bytes,
        } = self.state.into_inner();
        let backend = self.backend;
        // Ops recorded after the loss cannot influence it.
        for dropped in nodes.drain(loss.id + 1..) {
            saved_bytes -= dropped.saved_bytes;
        }
        let mut grads: Vec<Option<B::Tensor>> = (0..nodes.len()).map(|_| None).collect();
        grads[loss.id] = Some(
            backend
                .full(loss.shape(), 1.0)
                .map_err(AutodiffError::from)?,
        );
        let mut param_grads = HashMap::new();
        while let Some(node) = nodes.pop() {
            let id = nodes.len();
            saved_bytes -= node.saved_bytes;
            let grad = grads[id].take();
            match (node.backward, grad) {
                (Some(backward), Some(grad)) => {
                    // Every node is tracked; untracked inputs (constants) have no node and get no gradient.
                    let needs: Vec<bool> = node.inputs.iter().map(|&i| i != UNTRACKED).collect();
                    let input_grads = backward(&backend, &grad, &needs)?;
                    drop(grad);
                    check_gradients_returned(node.op, &node.input_shapes, &input_grads)?;
                    for ((&input, g), need) in node.inputs.iter().zip(input_grads).zip(needs) {
                        if let (Some(g), true) = (g, need) {
                            accumulate(&backend, &mut grads[input], g)?;
                        }
                    }
                }
                (None, Some(grad)) if params.contains_key(&id) => {
                    // A parameter's node comes before every op that uses it: its sum is complete.
                    on_param(&params[&id], &grad)?;
                    param_grads.insert(id, grad);
                }
                // A closure whose output got no gradient is dropped unrun.
                _ => {}
            }
            observe(BackwardStep {
                node: id,
                saved_bytes_left: saved_bytes,
                label: node.label,
            });
        }
        Ok(Gradients {
            backend,
            tape: self.id,
            grads: param_grads,
            names: params,
        })
    }
}

/// A backward step must return one gradient per input, each of its input's shape: what a
/// custom op gets wrong is named instead of corrupting the sums.
fn check_gradients_returned<T: DeviceTensor>(
    op: &'static str,
    shapes: &[Shape],
    grads: &[Option<T>],
) -> Result<()> {
    if grads.len() != shapes.len() {
        return Err(AutodiffError::BadBackward {
            op,
            problem: format!("{} gradients for {} inputs", grads.len(), shapes.len()),
        });
    }
    for (i, (g, shape)) in grads.iter().zip(shapes).enumerate() {
        if let Some(g) = g {
            if g.shape() != shape {
                return Err(AutodiffError::BadBackward {
                    op,
                    problem: format!(
                        "the gradient of input {i} has shape {}, the input {shape}",
                        g.shape()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Adds `g` into an accumulated gradient (a value used twice gets both contributions).
fn accumulate<B: Backend>(backend: &B, slot: &mut Option<B::Tensor>, g: B::Tensor) -> Result<()> {
    match slot {
        Some(acc) => backend.axpy(acc, 1.0, &g)?,
        None => *slot = Some(g),
    }
    Ok(())
}

/// The gradients of one backward pass, by parameter.
pub struct Gradients<B: Backend> {
    backend: B,
    tape: u64,
    grads: HashMap<usize, B::Tensor>,
    names: HashMap<usize, String>,
}

impl<B: Backend> fmt::Debug for Gradients<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self
            .grads
            .keys()
            .filter_map(|id| self.names.get(id))
            .collect();
        names.sort();
        f.debug_struct("Gradients")
            .field("tape", &self.tape)
            .field("params", &names)
            .finish()
    }
}

impl<B: Backend> Gradients<B> {
    /// The gradient of a parameter; zeros if the loss did not depend on it.
    pub fn get(&self, param: &Var<B>) -> Result<B::Tensor> {
        if param.tape != self.tape {
            return Err(AutodiffError::ForeignValue {
                op: "Gradients::get",
                found: param.tape,
                expected: self.tape,
            });
        }
        if !self.names.contains_key(&param.id) {
            return Err(AutodiffError::Untracked(format!(
                "a value of shape {}",
                param.shape()
            )));
        }
        match self.grads.get(&param.id) {
            Some(g) => Ok(g.clone()),
            None => Ok(self.backend.zeros(param.shape())?),
        }
    }

    /// The gradient of the parameter registered as `name`, if the loss depended on it.
    pub fn by_name(&self, name: &str) -> Option<&B::Tensor> {
        let id = self.names.iter().find(|(_, n)| n.as_str() == name)?.0;
        self.grads.get(id)
    }

    /// Every parameter's (name, gradient), the untouched ones left out, sorted by name.
    pub fn into_named(self) -> Vec<(String, B::Tensor)> {
        let mut names = self.names;
        let mut out: Vec<(String, B::Tensor)> = self
            .grads
            .into_iter()
            .filter_map(|(id, g)| Some((names.remove(&id)?, g)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// How many values have a gradient.
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    /// Whether no value has a gradient.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }
}
