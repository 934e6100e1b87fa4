//! A finite-difference gradient checker for any function built on a tape.

use vgg_tensor::{Backend, DeviceTensor};

use crate::tape::{Tape, Var};
use crate::{AutodiffError, Result};

/// Settings of `check_gradients`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradCheck {
    /// Step of the central differences.
    pub eps: f32,
    /// A coordinate passes when |analytic - numeric| <= atol + rtol |numeric|.
    pub atol: f64,
    /// Relative tolerance, scaled by the numeric gradient's magnitude.
    pub rtol: f64,
    /// Check at most this many coordinates per input (spread evenly), for large inputs.
    pub max_coords: usize,
    /// Seed of the random projection that turns a non-scalar output into a scalar.
    pub seed: u64,
}

impl Default for GradCheck {
    /// Tuned for f32 backends: the function is evaluated in f32, and the differences are taken in
    /// f64 with a fourth-order stencil, so eps can be large enough for f32 rounding not to matter.
    fn default() -> Self {
        GradCheck {
            eps: 1e-2,
            atol: 1e-3,
            rtol: 1e-2,
            max_coords: 256,
            seed: 0x5eed,
        }
    }
}

/// The worst disagreement found, per input.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCheckReport {
    /// (input index, coordinate, analytic, numeric) of the worst coordinate of each input.
    pub worst: Vec<(usize, usize, f64, f64)>,
    /// How many coordinates were compared, over all inputs.
    pub coords_checked: usize,
}

impl std::fmt::Display for GradCheckReport {
    /// "N coordinates checked; worst per input: input 0, coordinate 3: analytic 1.2e0, numeric ..."
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} coordinates checked", self.coords_checked)?;
        for (i, &(input, coord, analytic, numeric)) in self.worst.iter().enumerate() {
            let lead = if i == 0 { "; worst per input: " } else { "; " };
            write!(
                f,
                "{lead}input {input}, coordinate {coord}: analytic {analytic:e}, numeric {numeric:e}"
            )?;
        }
        Ok(())
    }
}

/// Compares the tape's gradients of `f` with central differences, for every input.
///
/// `f` builds its output from the given `Var`s on the given tape; a non-scalar output is reduced
/// to `sum(output * r)` with a fixed random `r`. The numeric gradient uses the fourth-order stencil
/// (8 f(x+h) - 8 f(x-h) - f(x+2h) + f(x-2h)) / 12h, evaluated on inference tapes. Inputs near a kink
/// (ReLU at 0, ties in a max) can fail for any eps: keep test inputs away from them.
pub fn check_gradients<B, F>(
    backend: &B,
    inputs: &[B::Tensor],
    f: F,
    cfg: &GradCheck,
) -> Result<GradCheckReport>
where
    B: Backend,
    F: Fn(&Tape<B>, &[Var<B>]) -> Result<Var<B>>,
{
    let scalar = |tape: &Tape<B>, vars: &[Var<B>]| -> Result<Var<B>> {
        let out = f(tape, vars)?;
        if out.shape().elements() == 1 {
            return Ok(out);
        }
        let r = tape.constant(backend.random_normal(out.shape(), 0.0, 1.0, cfg.seed)?);
        tape.sum(&tape.mul(&out, &r)?)
    };
    // Analytic.
    let tape = Tape::new(backend.clone());
    let vars: Vec<Var<B>> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| tape.param(format!("input{i}"), t.clone()))
        .collect();
    let loss = scalar(&tape, &vars)?;
    let grads = tape.backward(&loss)?;
    let analytic: Vec<Vec<f32>> = vars
        .iter()
        .map(|v| grads.get(v).and_then(|g| Ok(backend.download(&g)?)))
        .collect::<Result<_>>()?;
    // Numeric.
    let host: Vec<Vec<f32>> = inputs
        .iter()
        .map(|t| backend.download(t))
        .collect::<vgg_tensor::Result<_>>()?;
    let eval = |which: usize, values: &[f32]| -> Result<f64> {
        let tape = Tape::inference(backend.clone());
        let vars: Vec<Var<B>> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let value = if i == which {
                    backend.upload(t.shape(), values)?
                } else {
                    t.clone()
                };
                Ok(tape.constant(value))
            })
            .collect::<Result<_>>()?;
        let out = scalar(&tape, &vars)?;
        Ok(backend.scalar_value(out.value())? as f64)
    };
    let mut report = GradCheckReport {
        worst: Vec::new(),
        coords_checked: 0,
    };
    let h = cfg.eps as f64;
    for (which, x) in host.iter().enumerate() {
        let step = x.len().div_ceil(cfg.max_coords.max(1)).max(1);
        let mut worst = (which, 0, 0.0, 0.0);
        let mut worst_excess = f64::NEG_INFINITY;
        let mut values = x.clone();
        for coord in (0..x.len()).step_by(step) {
            let at = |delta: f64, values: &mut Vec<f32>| -> Result<f64> {
                values[coord] = (x[coord] as f64 + delta) as f32;
                let v = eval(which, values);
                values[coord] = x[coord];
                v
            };
            let numeric = (8.0 * at(h, &mut values)?
                - 8.0 * at(-h, &mut values)?
                - at(2.0 * h, &mut values)?
                + at(-2.0 * h, &mut values)?)
                / (12.0 * h);
            let got = analytic[which][coord] as f64;
            let excess = (got - numeric).abs() - (cfg.atol + cfg.rtol * numeric.abs());
            if excess > worst_excess {
                worst_excess = excess;
                worst = (which, coord, got, numeric);
            }
            report.coords_checked += 1;
        }
        if worst_excess > 0.0 {
            let (_, coord, got, numeric) = worst;
            return Err(AutodiffError::GradientMismatch(format!(
                "input {which} (shape {}), coordinate {coord}: analytic {got:.6e}, numeric {numeric:.6e} (atol {}, rtol {})",
                inputs[which].shape(),
                cfg.atol,
                cfg.rtol
            )));
        }
        report.worst.push(worst);
    }
    Ok(report)
}
