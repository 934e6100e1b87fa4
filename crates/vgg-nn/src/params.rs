//! A parameter store for a network of your own: named tensors that outlive the tapes, the
//! optimiser that updates them, and a safetensors file that holds both. Each step attaches the
//! parameters to a new tape ([`ParamStore::attach`]), builds the loss from them, and hands the
//! gradients back ([`ParamStore::step`]): no bookkeeping by index.
//!
//! ```
//! use vgg_autodiff::Tape;
//! use vgg_ndarray::CpuBackend;
//! use vgg_nn::{Init, OptimizerKind, ParamStore};
//! use vgg_tensor::prelude::*;
//!
//! let b = CpuBackend::new(1).unwrap();
//! let mut store = ParamStore::new(OptimizerKind::adam());
//! let w = store.init(&b, "w", [1, 2], Init::Constant(0.0), 0).unwrap();
//! let x = b.upload(&Shape::from([2, 1]), &[1.0, 2.0]).unwrap();
//! for _ in 0..200 {
//!     let tape = Tape::new(b.clone());
//!     let p = store.attach(&tape);
//!     // Fit w . x to 3.
//!     let y = tape.matmul(&p[w], &tape.constant(x.clone()), false, false).unwrap();
//!     let err = tape.sub(&y, &tape.constant(b.scalar(3.0).unwrap())).unwrap();
//!     let loss = tape.l2_loss(&err).unwrap();
//!     let grads = tape.backward(&loss).unwrap();
//!     store.step(&b, &p, &grads, 0.05).unwrap();
//! }
//! let fitted = b.download(store.value(w)).unwrap();
//! assert!((fitted[0] + 2.0 * fitted[1] - 3.0).abs() < 1e-2);
//! ```

use std::collections::HashMap;
use std::path::Path;

use vgg_autodiff::{Gradients, Tape, Var};
use vgg_tensor::{Backend, DeviceTensor, Shape, TensorError};

use crate::io::{self, HostTensor, IoError, TensorFile};
use crate::optim::{Optimizer, OptimizerKind};
use crate::Init;

/// Metadata key: the optimiser's steps so far, in a store's file.
pub const STEPS_KEY: &str = "params.optimizer_steps";

/// Why a store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    /// A backend op failed (or a shape was refused).
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Two parameters with one name.
    #[error("a parameter named '{0}' is already in the store: give each parameter its own name")]
    Duplicate(String),
    /// A file does not hold the store's parameters.
    #[error("{path} does not fit this store: {problem}")]
    Mismatch {
        /// The file.
        path: String,
        /// What differs.
        problem: String,
    },
}

/// A parameter's place in its store; index an [`Attached`] with it for the tape's variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

/// Named parameters, kept between tapes, and the optimiser that updates them.
pub struct ParamStore<B: Backend> {
    names: Vec<String>,
    values: Vec<B::Tensor>,
    optimizer: Optimizer<B>,
}

/// A store's parameters as variables of one tape, in the store's order.
pub struct Attached<B: Backend> {
    vars: Vec<Var<B>>,
}

impl<B: Backend> std::ops::Index<ParamId> for Attached<B> {
    type Output = Var<B>;

    fn index(&self, id: ParamId) -> &Var<B> {
        &self.vars[id.0]
    }
}

impl<B: Backend> ParamStore<B> {
    /// An empty store whose parameters `optimizer` will update.
    pub fn new(optimizer: OptimizerKind) -> ParamStore<B> {
        ParamStore {
            names: Vec::new(),
            values: Vec::new(),
            optimizer: Optimizer::new(optimizer),
        }
    }

    /// Adds a parameter with its starting value.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        value: B::Tensor,
    ) -> Result<ParamId, ParamError> {
        let name = name.into();
        if self.names.contains(&name) {
            return Err(ParamError::Duplicate(name));
        }
        self.names.push(name);
        self.values.push(value);
        Ok(ParamId(self.values.len() - 1))
    }

    /// Adds a parameter of `shape` drawn by `init` (the same seed gives the same values on every
    /// backend).
    pub fn init(
        &mut self,
        backend: &B,
        name: impl Into<String>,
        shape: impl Into<Shape>,
        init: Init,
        seed: u64,
    ) -> Result<ParamId, ParamError> {
        let value = init.tensor(backend, &shape.into(), seed)?;
        self.add(name, value)
    }

    /// Every parameter as a variable of `tape`, under its name.
    pub fn attach(&self, tape: &Tape<B>) -> Attached<B> {
        let vars = self
            .names
            .iter()
            .zip(&self.values)
            .map(|(name, value)| tape.param(name.clone(), value.clone()))
            .collect();
        Attached { vars }
    }

    /// One optimiser step at learning rate `lr` on every parameter that `grads` (from the tape
    /// `attached` was made on) has a gradient for.
    pub fn step(
        &mut self,
        backend: &B,
        attached: &Attached<B>,
        grads: &Gradients<B>,
        lr: f32,
    ) -> Result<(), ParamError> {
        let mut by_name = HashMap::new();
        for (name, var) in self.names.iter().zip(&attached.vars) {
            if let Ok(g) = grads.get(var) {
                by_name.insert(name.clone(), g);
            }
        }
        let params = self
            .names
            .iter()
            .cloned()
            .zip(self.values.iter_mut())
            .collect();
        Ok(self.optimizer.step(backend, params, &by_name, lr)?)
    }

    /// A parameter's current value.
    pub fn value(&self, id: ParamId) -> &B::Tensor {
        &self.values[id.0]
    }

    /// The parameters' names and values, in the order they were added.
    pub fn named(&self) -> impl Iterator<Item = (&str, &B::Tensor)> {
        self.names.iter().map(String::as_str).zip(&self.values)
    }

    /// Parameters in the store.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the store has no parameter.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Writes the parameters (under their names) and the optimiser's state to a safetensors file.
    pub fn save(&self, backend: &B, path: &Path) -> Result<(), ParamError> {
        let mut tensors = Vec::new();
        for (name, value) in self.named() {
            tensors.push((name.to_string(), HostTensor::download(backend, value)?));
        }
        tensors.extend(self.optimizer.state_tensors(backend)?);
        let metadata = HashMap::from([(STEPS_KEY.to_string(), self.optimizer.steps.to_string())]);
        io::save_safetensors(path, &TensorFile { tensors, metadata })?;
        Ok(())
    }

    /// Reads back a file `save` wrote: every parameter of the store, by name and shape, and the
    /// optimiser's state. Refused, naming what differs, where the file does not fit.
    pub fn load(&mut self, backend: &B, path: &Path) -> Result<(), ParamError> {
        let file = io::load_safetensors(path)?;
        let mismatch = |problem: String| ParamError::Mismatch {
            path: path.display().to_string(),
            problem,
        };
        let steps = match file.metadata.get(STEPS_KEY) {
            Some(s) => s
                .parse()
                .map_err(|_| mismatch(format!("{STEPS_KEY} is '{s}', not a count")))?,
            None => 0,
        };
        let mut values = Vec::with_capacity(self.values.len());
        for (name, current) in self.names.iter().zip(&self.values) {
            let (_, t) = file
                .tensors
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| mismatch(format!("it has no tensor named '{name}'")))?;
            if t.shape != current.shape().dims() {
                return Err(mismatch(format!(
                    "'{name}' has shape {:?}, the store's is {}",
                    t.shape,
                    current.shape()
                )));
            }
            values.push(backend.upload(&Shape::from(t.shape.clone()), &t.data)?);
        }
        let shapes: Vec<(String, Shape)> = self
            .names
            .iter()
            .cloned()
            .zip(self.values.iter().map(|v| v.shape().clone()))
            .collect();
        self.optimizer
            .load_state(backend, &file.tensors, steps, &shapes)?;
        self.values = values;
        Ok(())
    }
}
