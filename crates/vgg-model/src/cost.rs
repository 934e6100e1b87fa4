//! What each layer costs for a batch, by the direct method in f32: the FLOPs of its forward pass,
//! of its input gradient and of its weight gradient, the bytes each pass must move at least (every
//! tensor it reads or writes, once), and so its arithmetic intensity, FLOPs per byte, which a
//! roofline compares with a machine's balance (peak FLOP/s over memory bytes/s): below it a layer
//! is bound by memory, above it by arithmetic.
//!
//! Conventions, as `vgg bench` counts its rates: 2 FLOPs per multiply-accumulate of the spec;
//! bias, ReLU and max-pool (comparisons) count none; the first convolution's input gradient is
//! never computed (the image needs none), so it costs nothing.

use serde::Serialize;

use crate::spec::{too_large, ModelSpec, F32_BYTES};
use crate::SpecError;

/// One layer's arithmetic and traffic for a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerCost {
    /// The layer (conv1_1 ... fc8).
    pub layer: String,
    /// FLOPs of the forward pass.
    pub forward_flops: u64,
    /// FLOPs of the gradient with respect to the layer's input.
    pub input_gradient_flops: u64,
    /// FLOPs of the gradient with respect to its weights.
    pub weight_gradient_flops: u64,
    /// Bytes of its weights and biases.
    pub weight_bytes: u64,
    /// Bytes of its input, for the batch.
    pub input_bytes: u64,
    /// Bytes of its output, for the batch.
    pub output_bytes: u64,
}

/// Which roof limits a layer on a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// Its intensity is below the machine's balance: bytes limit it.
    Memory,
    /// At or above the balance: arithmetic limits it.
    Compute,
}

impl Bound {
    /// The word for tables.
    pub fn word(self) -> &'static str {
        match self {
            Bound::Memory => "memory",
            Bound::Compute => "compute",
        }
    }
}

/// Arithmetic intensity: FLOPs over bytes; 0 where nothing is moved.
pub fn intensity(flops: u64, bytes: u64) -> f64 {
    if bytes == 0 {
        0.0
    } else {
        flops as f64 / bytes as f64
    }
}

impl LayerCost {
    /// Bytes the forward pass moves: it reads the input and the weights, writes the output.
    pub fn forward_bytes(&self) -> u64 {
        self.weight_bytes
            .saturating_add(self.input_bytes)
            .saturating_add(self.output_bytes)
    }

    /// FLOPs of the backward pass: input and weight gradients.
    pub fn backward_flops(&self) -> u64 {
        self.input_gradient_flops
            .saturating_add(self.weight_gradient_flops)
    }

    /// Bytes the backward pass moves: the input gradient reads the output's gradient and the
    /// weights and writes the input's gradient (where computed); the weight gradient reads the
    /// input and the output's gradient and writes the weights' gradient (where there are weights).
    pub fn backward_bytes(&self) -> u64 {
        let computed = |yes: bool| if yes { self.forward_bytes() } else { 0 };
        // Each gradient touches the three tensors the forward pass does (a pool has no weights).
        computed(self.input_gradient_flops > 0 || self.weight_bytes == 0)
            .saturating_add(computed(self.weight_bytes > 0))
    }

    /// Forward FLOPs per byte moved.
    pub fn forward_intensity(&self) -> f64 {
        intensity(self.forward_flops, self.forward_bytes())
    }

    /// Backward FLOPs per byte moved.
    pub fn backward_intensity(&self) -> f64 {
        intensity(self.backward_flops(), self.backward_bytes())
    }

    /// The roof that limits an intensity on a machine of `balance` FLOPs per byte.
    pub fn bound(intensity: f64, balance: f64) -> Bound {
        if intensity >= balance {
            Bound::Compute
        } else {
            Bound::Memory
        }
    }
}

impl ModelSpec {
    /// Every layer's cost for a batch of `batch`, or an error naming the batch where a count
    /// would not fit in 64 bits.
    pub fn costs(&self, batch: usize) -> Result<Vec<LayerCost>, SpecError> {
        let overflow = || too_large(format!("the FLOPs and bytes of a batch of {batch}"));
        let b = batch as u64;
        let times = |v: u64, k: u64| v.checked_mul(k).ok_or_else(overflow);
        let first_conv = self.layers.iter().position(|l| l.is_conv());
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let flops = times(times(l.macs, 2)?, b)?;
                let has_weights = l.has_params();
                Ok(LayerCost {
                    layer: l.name.clone(),
                    forward_flops: flops,
                    input_gradient_flops: if Some(i) == first_conv { 0 } else { flops },
                    weight_gradient_flops: if has_weights { flops } else { 0 },
                    weight_bytes: times(l.params, F32_BYTES)?,
                    input_bytes: times(times(l.input.elements(), b)?, F32_BYTES)?,
                    output_bytes: times(times(l.output.elements(), b)?, F32_BYTES)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SpecOptions, VggConfig};

    #[test]
    fn a_pool_moves_bytes_and_computes_nothing() {
        let spec = ModelSpec::new(VggConfig::Vgg11, SpecOptions::default()).unwrap();
        let costs = spec.costs(2).unwrap();
        let pool1 = costs.iter().find(|c| c.layer == "pool1").unwrap();
        assert_eq!((pool1.forward_flops, pool1.backward_flops()), (0, 0));
        assert_eq!(pool1.input_bytes, 2 * 64 * 224 * 224 * 4);
        assert_eq!(pool1.output_bytes, 2 * 64 * 112 * 112 * 4);
        // Its backward reads the output's gradient and writes the input's.
        assert_eq!(
            pool1.backward_bytes(),
            pool1.input_bytes + pool1.output_bytes
        );
        assert_eq!(pool1.forward_intensity(), 0.0);
    }

    #[test]
    fn the_bound_is_the_roof_below_the_intensity() {
        assert_eq!(LayerCost::bound(0.5, 10.0), Bound::Memory);
        assert_eq!(LayerCost::bound(12.9, 10.0), Bound::Compute);
        assert_eq!(LayerCost::bound(10.0, 10.0), Bound::Compute);
        assert_eq!(LayerCost::bound(0.0, 1e-9), Bound::Memory);
    }
}
