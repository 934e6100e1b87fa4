//! Which method a backend computes a convolution's pass by, so that a harness can count the
//! products it actually executes beside the direct method's: Winograd F(m x m, r x r) does
//! (m + r - 1)^2 multiplications per m x m block and channel pair where the direct method does
//! m^2 r^2 (F(4x4, 3x3): 36 against 144).

use crate::ConvGeometry;

/// One of a convolution's three passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvPass {
    /// y = conv(x, w).
    Forward,
    /// dx, the gradient with respect to the input.
    InputGradient,
    /// dw, the gradient with respect to the weights.
    WeightGradient,
}

/// How a backend computes one pass of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvMethod {
    /// Every product of the definition (im2col and a matrix product, direct loops): the direct
    /// method's count.
    Direct,
    /// Winograd F(output x output, kernel x kernel): the outputs in square blocks of `output`,
    /// each block and channel pair costing `(output + kernel - 1)^2` products in the element-wise
    /// stage (the transforms, which add and scale, are not counted).
    Winograd {
        /// Side of an output block.
        output: usize,
        /// Side of the kernel.
        kernel: usize,
    },
    /// The backend does not say (a library that picks its own algorithm, such as cuDNN).
    Unreported,
}

impl ConvMethod {
    /// FLOPs (2 per multiply-accumulate) this method executes for `pass` of the convolution `g`
    /// (the forward geometry for every pass); None where the method is unreported or the count
    /// does not fit in 64 bits. Every pass of the direct method costs what the forward does.
    pub fn executed_flops(&self, g: &ConvGeometry, pass: ConvPass) -> Option<u64> {
        let channel_pairs = (g.in_channels as u64).checked_mul(g.out_channels as u64)?;
        let per_image = match *self {
            ConvMethod::Direct => (g.out_h as u64)
                .checked_mul(g.out_w as u64)?
                .checked_mul((g.kernel_h * g.kernel_w) as u64)?,
            ConvMethod::Winograd { output, kernel } => {
                // The input gradient runs as a convolution whose output is the input's size.
                let (h, w) = match pass {
                    ConvPass::InputGradient => (g.in_h, g.in_w),
                    ConvPass::Forward | ConvPass::WeightGradient => (g.out_h, g.out_w),
                };
                let tile = (output + kernel).checked_sub(1)? as u64;
                let blocks = (h.div_ceil(output.max(1)) as u64)
                    .checked_mul(w.div_ceil(output.max(1)) as u64)?;
                blocks.checked_mul(tile.checked_mul(tile)?)?
            }
            ConvMethod::Unreported => return None,
        };
        per_image
            .checked_mul(channel_pairs)?
            .checked_mul(g.batch as u64)?
            .checked_mul(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Conv2dParams, Shape};

    fn vgg_conv5(batch: usize) -> ConvGeometry {
        ConvGeometry::new(
            &Shape::new(vec![batch, 512, 14, 14]),
            &Shape::new(vec![512, 512, 3, 3]),
            Conv2dParams {
                stride: 1,
                padding: 1,
            },
        )
        .unwrap()
    }

    #[test]
    fn the_direct_method_counts_every_product_of_the_definition() {
        let g = vgg_conv5(2);
        let direct = 2 * 2 * 512 * 512 * 9 * 14 * 14;
        for pass in [
            ConvPass::Forward,
            ConvPass::InputGradient,
            ConvPass::WeightGradient,
        ] {
            assert_eq!(ConvMethod::Direct.executed_flops(&g, pass), Some(direct));
        }
    }

    #[test]
    fn winograd_counts_36_products_per_4x4_block_including_the_partial_ones() {
        let g = vgg_conv5(1);
        let f43 = ConvMethod::Winograd {
            output: 4,
            kernel: 3,
        };
        // 14x14 outputs need 4x4 = 16 blocks of 4x4 (the last row and column of blocks half empty).
        let expected = 2 * 16 * 36 * 512 * 512;
        assert_eq!(f43.executed_flops(&g, ConvPass::Forward), Some(expected));
        assert_eq!(
            f43.executed_flops(&g, ConvPass::WeightGradient),
            Some(expected)
        );
        // On 16x16 outputs, exactly a quarter of the direct method's 144 per block.
        let g16 = ConvGeometry::new(
            &Shape::new(vec![1, 8, 16, 16]),
            &Shape::new(vec![4, 8, 3, 3]),
            Conv2dParams {
                stride: 1,
                padding: 1,
            },
        )
        .unwrap();
        assert_eq!(
            4 * f43.executed_flops(&g16, ConvPass::Forward).unwrap(),
            ConvMethod::Direct
                .executed_flops(&g16, ConvPass::Forward)
                .unwrap()
        );
        assert_eq!(
            ConvMethod::Unreported.executed_flops(&g, ConvPass::Forward),
            None
        );
    }

    #[test]
    fn the_input_gradient_is_tiled_over_the_input() {
        // No padding: 8x8 outputs from 10x10 inputs; dx is 10x10, 3x3 blocks of 4.
        let g = ConvGeometry::new(
            &Shape::new(vec![1, 2, 10, 10]),
            &Shape::new(vec![3, 2, 3, 3]),
            Conv2dParams {
                stride: 1,
                padding: 0,
            },
        )
        .unwrap();
        let f43 = ConvMethod::Winograd {
            output: 4,
            kernel: 3,
        };
        assert_eq!(
            f43.executed_flops(&g, ConvPass::Forward),
            Some(2 * 4 * 36 * 6)
        );
        assert_eq!(
            f43.executed_flops(&g, ConvPass::InputGradient),
            Some(2 * 9 * 36 * 6)
        );
    }
}
