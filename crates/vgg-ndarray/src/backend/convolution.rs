//! `Convolution`: the forward and both gradients, through `conv` (im2col, grouped, Winograd).

use vgg_tensor::{Conv2dParams, ConvGeometry, ConvMethod, ConvPass, Convolution, Result, Shape};

use super::{CpuBackend, CpuTensor};
use crate::conv;

impl Convolution for CpuBackend {
    fn conv2d(&self, x: &CpuTensor, w: &CpuTensor, p: Conv2dParams) -> Result<CpuTensor> {
        let g = ConvGeometry::new(&x.shape, &w.shape, p)?;
        Ok(self.build(g.output_shape(), |y| {
            conv::forward(x.as_slice(), w.as_slice(), &g, &self.tuning, y)
        }))
    }

    fn conv2d_backward_input(
        &self,
        dy: &CpuTensor,
        w: &CpuTensor,
        input_shape: &Shape,
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        let g = ConvGeometry::new(input_shape, &w.shape, p)?;
        g.check_output("conv2d_backward_input", &dy.shape)?;
        Ok(self.build(input_shape.clone(), |dx| {
            conv::backward_input(dy.as_slice(), w.as_slice(), &g, &self.tuning, dx)
        }))
    }

    fn conv2d_backward_weight(
        &self,
        x: &CpuTensor,
        dy: &CpuTensor,
        weight_shape: &Shape,
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        let g = ConvGeometry::new(&x.shape, weight_shape, p)?;
        g.check_output("conv2d_backward_weight", &dy.shape)?;
        let dw = self.run(|| conv::backward_weight(x.as_slice(), dy.as_slice(), &g, &self.tuning));
        Ok(self.adopt(weight_shape.clone(), dw))
    }

    fn conv_method(&self, g: &ConvGeometry, pass: ConvPass) -> ConvMethod {
        conv::method(g, pass, &self.tuning)
    }
}
