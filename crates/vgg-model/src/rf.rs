//! Receptive-field arithmetic: r_out = r_in + (k-1) j_in, j_out = j_in s,
//! start_out = start_in + ((k-1)/2 - p) j_in (the centre of the first output's field, in input pixels).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::SpecError;

/// The receptive field of one unit after a layer, its jump (stride in input pixels) and the centre
/// of the first unit's field in input pixel coordinates (pixel 0 spans [0, 1), so its centre is 0.5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReceptiveField {
    /// Side of the receptive field, in input pixels.
    pub size: usize,
    /// Distance in input pixels between neighbouring units' fields.
    pub jump: usize,
    /// Centre of the first unit's field, in input pixel coordinates.
    pub start: f64,
}

impl ReceptiveField {
    /// The field of one input pixel.
    pub const INPUT: ReceptiveField = ReceptiveField {
        size: 1,
        jump: 1,
        start: 0.5,
    };

    /// The field after a sliding window of `kernel` (at least 1) with `stride` and `padding` on
    /// each side; an error when the size or jump would not fit in 64 bits.
    pub fn then(
        self,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<ReceptiveField, SpecError> {
        let size = kernel
            .checked_sub(1)
            .and_then(|k| k.checked_mul(self.jump))
            .and_then(|grow| grow.checked_add(self.size));
        let jump = self.jump.checked_mul(stride);
        let (Some(size), Some(jump)) = (size, jump) else {
            return Err(SpecError::TooLarge {
                what: "the receptive field".to_string(),
            });
        };
        Ok(ReceptiveField {
            size,
            jump,
            start: self.start + ((kernel as f64 - 1.0) / 2.0 - padding as f64) * self.jump as f64,
        })
    }
}

/// The kind of one layer of an ad-hoc stack given to `vgg rf --layers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StackKind {
    /// A convolution (stride 1 in VGG).
    Conv,
    /// A max-pool.
    Pool,
}

/// One layer of an ad-hoc stack: `convK`, `convK/S`, `poolK`, `poolK/S`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StackLayer {
    /// Convolution or pool.
    pub kind: StackKind,
    /// Side of the window.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
}

impl StackLayer {
    /// Convolutions are "same"-padded ((k-1)/2 each side), as VGG's are; pools are unpadded.
    pub fn padding(&self) -> usize {
        match self.kind {
            StackKind::Conv => (self.kernel - 1) / 2,
            StackKind::Pool => 0,
        }
    }
}

impl fmt::Display for StackLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            StackKind::Conv => "conv",
            StackKind::Pool => "pool",
        };
        write!(f, "{kind}{}/{}", self.kernel, self.stride)
    }
}

const STACK_GRAMMAR: &str =
    "comma-separated convK, convK/S, poolK or poolK/S with K, S >= 1 (e.g. conv3,conv3,pool2)";

impl FromStr for StackLayer {
    type Err = SpecError;

    fn from_str(item: &str) -> Result<Self, Self::Err> {
        let bad = || SpecError::BadLayerStack {
            item: item.to_string(),
            grammar: STACK_GRAMMAR,
        };
        let text = item.trim().to_ascii_lowercase();
        let (kind, rest) = if let Some(rest) = text.strip_prefix("conv") {
            (StackKind::Conv, rest)
        } else if let Some(rest) = text.strip_prefix("pool") {
            (StackKind::Pool, rest)
        } else {
            return Err(bad());
        };
        let (kernel, stride) = match rest.split_once('/') {
            Some((k, s)) => (k, Some(s)),
            None => (rest, None),
        };
        let kernel: usize = kernel.parse().map_err(|_| bad())?;
        let stride: usize = match stride {
            Some(s) => s.parse().map_err(|_| bad())?,
            // A pool's stride defaults to its window, as in VGG's 2x2/2 pools.
            None if kind == StackKind::Pool => kernel,
            None => 1,
        };
        if kernel == 0 || stride == 0 {
            return Err(bad());
        }
        Ok(StackLayer {
            kind,
            kernel,
            stride,
        })
    }
}

/// Parses a whole `--layers` value.
pub fn parse_stack(text: &str) -> Result<Vec<StackLayer>, SpecError> {
    if text.trim().is_empty() {
        return Err(SpecError::BadLayerStack {
            item: text.to_string(),
            grammar: STACK_GRAMMAR,
        });
    }
    text.split(',').map(str::parse).collect()
}

/// The field after each layer of a stack, starting from one input pixel.
pub fn stack_fields(stack: &[StackLayer]) -> Result<Vec<ReceptiveField>, SpecError> {
    let mut rf = ReceptiveField::INPUT;
    stack
        .iter()
        .map(|layer| {
            rf = rf.then(layer.kernel, layer.stride, layer.padding())?;
            Ok(rf)
        })
        .collect()
}

/// Weights of a stack's convolutions per C^2 (C channels in and out, no biases): 27 for three 3x3.
pub fn stack_weights_per_c2(stack: &[StackLayer]) -> Result<usize, SpecError> {
    stack
        .iter()
        .filter(|l| l.kind == StackKind::Conv)
        .try_fold(0usize, |sum, l| {
            l.kernel
                .checked_mul(l.kernel)
                .and_then(|w| sum.checked_add(w))
        })
        .ok_or_else(|| SpecError::TooLarge {
            what: "the stack's weights per C^2".to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_3x3_convs_see_7x7_with_27_c2_weights() {
        let stack = parse_stack("conv3,conv3,conv3").unwrap();
        let sizes: Vec<usize> = stack_fields(&stack)
            .unwrap()
            .iter()
            .map(|r| r.size)
            .collect();
        assert_eq!(sizes, [3, 5, 7]);
        assert_eq!(stack_weights_per_c2(&stack).unwrap(), 27);
    }

    #[test]
    fn strides_multiply_the_jump() {
        let stack = parse_stack("conv3, pool2, conv3/2, pool3/1").unwrap();
        let fields = stack_fields(&stack).unwrap();
        let got: Vec<(usize, usize)> = fields.iter().map(|r| (r.size, r.jump)).collect();
        assert_eq!(got, [(3, 1), (4, 2), (8, 4), (16, 4)]);
    }

    #[test]
    fn fields_that_would_wrap_are_errors() {
        for text in [
            "conv18446744073709551615,conv3",
            "conv3/18446744073709551615,conv3/2,conv3",
            "pool4294967296,pool4294967296,pool3",
        ] {
            let stack = parse_stack(text).unwrap();
            let e = stack_fields(&stack).unwrap_err();
            assert!(matches!(e, SpecError::TooLarge { .. }), "{text}: {e}");
        }
        let wide = parse_stack("conv4294967296,conv4294967296").unwrap();
        assert!(stack_weights_per_c2(&wide).is_err());
    }

    #[test]
    fn pool_stride_defaults_to_its_window() {
        assert_eq!(
            "pool3".parse::<StackLayer>().unwrap(),
            StackLayer {
                kind: StackKind::Pool,
                kernel: 3,
                stride: 3
            }
        );
    }

    #[test]
    fn malformed_items_are_refused_with_the_grammar() {
        for bad in [
            "",
            "conv",
            "conv0",
            "conv3/0",
            "fc3",
            "conv3/x",
            "conv3,,conv3",
            "pool-2",
        ] {
            let err = parse_stack(bad).unwrap_err().to_string();
            assert!(err.contains("convK/S"), "{bad}: {err}");
        }
    }
}
