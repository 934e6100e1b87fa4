//! Optimisers (SGD with momentum and weight decay, Adam) and learning-rate schedules. Each step
//! is one fused in-place pass per parameter on the backend; the state can be saved and restored.

use std::collections::{BTreeMap, HashMap};

use vgg_tensor::{AdamParams, Backend, DeviceTensor, Result, Shape, TensorError};

use crate::io::HostTensor;

#[derive(Debug, Clone, Copy, PartialEq)]
/// The update rule of an optimiser, with its hyper-parameters.
pub enum OptimizerKind {
    /// Stochastic gradient descent, as PyTorch's SGD.
    Sgd {
        /// Weight of the previous update (0 for plain SGD).
        momentum: f32,
        /// L2 penalty added to the gradient.
        weight_decay: f32,
    },
    /// Adam (Kingma & Ba 2015), as PyTorch's Adam.
    Adam {
        /// Decay of the first-moment estimate.
        beta1: f32,
        /// Decay of the second-moment estimate.
        beta2: f32,
        /// Added to the denominator for stability.
        eps: f32,
        /// L2 penalty added to the gradient.
        weight_decay: f32,
    },
}

impl OptimizerKind {
    /// Adam with PyTorch's defaults: betas 0.9 and 0.999, eps 1e-8, no weight decay.
    pub fn adam() -> OptimizerKind {
        OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }

    /// SGD with `momentum` (0: plain) and no weight decay.
    pub fn sgd(momentum: f32) -> OptimizerKind {
        OptimizerKind::Sgd {
            momentum,
            weight_decay: 0.0,
        }
    }

    /// The optimiser's name (`sgd`, `adam`).
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::Sgd { .. } => "sgd",
            OptimizerKind::Adam { .. } => "adam",
        }
    }

    /// Whether a state slot can only hold values >= 0 (Adam's second moment).
    fn non_negative(&self, slot: &str) -> bool {
        matches!(self, OptimizerKind::Adam { .. }) && slot == "v"
    }

    /// Names of the per-parameter state tensors.
    fn slots(&self) -> &'static [&'static str] {
        match self {
            OptimizerKind::Sgd { .. } => &["velocity"],
            OptimizerKind::Adam { .. } => &["m", "v"],
        }
    }
}

/// How the learning rate changes with the epoch (counted from 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        /// Epochs between reductions.
        every: usize,
        /// Factor of each reduction.
        gamma: f32,
    },
    /// Cosine decay from the base rate to 0 over `epochs`.
    Cosine {
        /// Epochs over which the rate falls to 0.
        epochs: usize,
    },
}

impl Schedule {
    /// The rate for `epoch` (from 0) when the base rate is `base`.
    pub fn lr(&self, base: f32, epoch: usize) -> f32 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            Schedule::Cosine { epochs } => {
                let t = (epoch as f32 / epochs.max(1) as f32).min(1.0);
                0.5 * base * (1.0 + (std::f32::consts::PI * t).cos())
            }
        }
    }
}

/// An optimiser and its state (one set of slots per parameter, created on first use).
pub struct Optimizer<B: Backend> {
    /// The update rule.
    pub kind: OptimizerKind,
    /// Steps taken so far.
    pub steps: u64,
    state: BTreeMap<String, Vec<B::Tensor>>,
}

impl<B: Backend> Optimizer<B> {
    /// An optimiser with no state yet; state is made on the first step.
    pub fn new(kind: OptimizerKind) -> Optimizer<B> {
        Optimizer {
            kind,
            steps: 0,
            state: BTreeMap::new(),
        }
    }

    /// One step on every parameter that has a gradient.
    pub fn step(
        &mut self,
        backend: &B,
        params: Vec<(String, &mut B::Tensor)>,
        grads: &HashMap<String, B::Tensor>,
        lr: f32,
    ) -> Result<()> {
        self.steps += 1;
        for (name, param) in params {
            let Some(grad) = grads.get(&name) else {
                continue;
            };
            if !self.state.contains_key(&name) {
                let zeros = self
                    .kind
                    .slots()
                    .iter()
                    .map(|_| backend.zeros(param.shape()))
                    .collect::<Result<Vec<_>>>()?;
                self.state.insert(name.clone(), zeros);
            }
            let slots = self.state.get_mut(&name).expect("inserted above");
            match self.kind {
                OptimizerKind::Sgd {
                    momentum,
                    weight_decay,
                } => backend.sgd_step(param, &mut slots[0], grad, lr, momentum, weight_decay)?,
                OptimizerKind::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let (m, v) = slots.split_at_mut(1);
                    let hp = AdamParams {
                        lr,
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                        step: self.steps,
                    };
                    backend.adam_step(param, &mut m[0], &mut v[0], grad, hp)?
                }
            }
        }
        Ok(())
    }

    /// The state as named host tensors: `optimizer.{param}.{slot}`.
    pub fn state_tensors(&self, backend: &B) -> Result<Vec<(String, HostTensor)>> {
        let mut out = Vec::new();
        for (name, slots) in &self.state {
            for (slot, t) in self.kind.slots().iter().zip(slots) {
                out.push((
                    format!("optimizer.{name}.{slot}"),
                    HostTensor::download(backend, t)?,
                ));
            }
        }
        Ok(out)
    }

    /// Restores the state written by `state_tensors` for the parameters `params` (names and
    /// shapes); tensors not named `optimizer.*` are ignored. Refused, naming what is wrong:
    /// state for a parameter not in `params`, a slot this optimiser does not have, a shape that
    /// is not the parameter's, and, after any step, a parameter without its full state (a resumed
    /// run would silently differ from an uninterrupted one).
    pub fn load_state(
        &mut self,
        backend: &B,
        tensors: &[(String, HostTensor)],
        steps: u64,
        params: &[(String, Shape)],
    ) -> Result<()> {
        let refuse = |message: String| TensorError::InvalidArgument {
            op: "Optimizer::load_state",
            message,
        };
        let shapes: BTreeMap<&str, &Shape> = params.iter().map(|(n, s)| (n.as_str(), s)).collect();
        self.steps = steps;
        self.state.clear();
        let slots = self.kind.slots();
        let mut by_param: BTreeMap<String, Vec<Option<B::Tensor>>> = BTreeMap::new();
        for (name, t) in tensors {
            let Some(rest) = name.strip_prefix("optimizer.") else {
                continue;
            };
            let (param, slot) = rest
                .rsplit_once('.')
                .ok_or_else(|| refuse(format!("'{name}' names no parameter and slot")))?;
            let index = slots.iter().position(|s| *s == slot).ok_or_else(|| {
                refuse(format!(
                    "'{name}' is not state of a {} optimiser",
                    self.kind.name()
                ))
            })?;
            let shape = Shape::from(t.shape.clone());
            match shapes.get(param) {
                None => {
                    return Err(refuse(format!(
                        "'{name}' is state of '{param}', which the network does not have"
                    )))
                }
                Some(want) if **want != shape => {
                    return Err(refuse(format!(
                        "'{name}' has shape {shape}, but '{param}' is {want}"
                    )))
                }
                Some(_) => {}
            }
            let non_finite = t.non_finite();
            if non_finite > 0 {
                return Err(refuse(format!(
                    "'{name}' holds {non_finite} NaN or infinite values: the optimiser would turn \
                     the weights into NaN or stop them moving; the checkpoint is corrupt or comes \
                     from a run that diverged"
                )));
            }
            if self.kind.non_negative(slot) {
                let negative = t.data.iter().filter(|v| **v < 0.0).count();
                if negative > 0 {
                    return Err(refuse(format!(
                        "'{name}' holds {negative} negative values, but it is a mean of squared \
                         gradients, never negative: the checkpoint is corrupt"
                    )));
                }
            }
            let tensor = backend.upload(&shape, &t.data)?;
            let entry = by_param
                .entry(param.to_string())
                .or_insert_with(|| vec![None; slots.len()]);
            if entry[index].replace(tensor).is_some() {
                return Err(refuse(format!("'{name}' appears twice")));
            }
        }
        let missing: Vec<String> = params
            .iter()
            .flat_map(|(param, _)| {
                let have = by_param.get(param);
                slots
                    .iter()
                    .enumerate()
                    .filter(move |(i, _)| have.is_none_or(|h| h[*i].is_none()))
                    .map(move |(_, slot)| format!("optimizer.{param}.{slot}"))
            })
            .collect();
        if steps > 0 && !missing.is_empty() {
            return Err(refuse(format!(
                "after {steps} steps the state lacks {} of {} tensors ({}{})",
                missing.len(),
                params.len() * slots.len(),
                missing[..missing.len().min(3)].join(", "),
                if missing.len() > 3 { ", ..." } else { "" }
            )));
        }
        if steps == 0 && !by_param.is_empty() {
            return Err(refuse(
                "the state says no step was taken, yet holds tensors".to_string(),
            ));
        }
        for (param, tensors) in by_param {
            let complete: Vec<B::Tensor> = tensors.into_iter().flatten().collect();
            self.state.insert(param, complete);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Constant.lr(0.1, 7), 0.1);
        let step = Schedule::Step {
            every: 2,
            gamma: 0.5,
        };
        assert_eq!(
            [
                step.lr(1.0, 0),
                step.lr(1.0, 1),
                step.lr(1.0, 2),
                step.lr(1.0, 5)
            ],
            [1.0, 1.0, 0.5, 0.25]
        );
        let cos = Schedule::Cosine { epochs: 4 };
        assert_eq!(cos.lr(1.0, 0), 1.0);
        assert!((cos.lr(1.0, 2) - 0.5).abs() < 1e-6);
        assert!(cos.lr(1.0, 4).abs() < 1e-6);
    }
}
