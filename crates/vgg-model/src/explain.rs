//! What the network looks at, from one forward-backward per image on a frozen tape (no weight
//! gradient is computed): Grad-CAM (Selvaraju et al., 2017) and Grad-CAM++ (Chattopadhyay et
//! al., 2018) at any convolution or pool, saliency
//! (Simonyan et al., 2014: the largest magnitude over channels of the input's gradient),
//! SmoothGrad (Smilkov et al., 2017: saliency averaged over noisy copies of the image), and the
//! activations of any layer. Every map is the gradient of the class's logit, before softmax.

use vgg_autodiff::{Tap, Tape};
use vgg_nn::io::HostTensor;
use vgg_nn::RunOptions;
use vgg_tensor::{Backend, DeviceTensor, Shape};

use crate::{ModelError, Vgg};

/// What to explain about one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// The layer Grad-CAM weighs (a convolution or pool; conv5_3 in VGG-16 in the paper).
    pub cam_layer: String,
    /// The class whose logit is explained; None: the most probable one.
    pub class: Option<usize>,
    /// Layers whose activations are returned (convolutions or pools).
    pub features: Vec<String>,
    /// SmoothGrad's settings, or None for none.
    pub smooth_grad: Option<SmoothGrad>,
}

/// SmoothGrad: saliency averaged over `samples` copies of the image, each with Gaussian noise of
/// deviation `noise` times the image's value range added.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmoothGrad {
    /// How many noisy copies.
    pub samples: usize,
    /// The noise's deviation as a fraction of the image's range (the paper: 0.1-0.2).
    pub noise: f32,
    /// Seeds the noise: copy `i` draws with `seed + i`.
    pub seed: u64,
}

/// The answers for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Softmax of the logits.
    pub probabilities: Vec<f32>,
    /// The class explained.
    pub class: usize,
    /// Grad-CAM at the layer's resolution, [h, w]: ReLU of the channels weighed by their
    /// spatially averaged gradients; not normalised.
    pub cam: HostTensor,
    /// `cam` enlarged to the input's size, [H, W] (bilinear, as PyTorch's `align_corners=False`).
    pub cam_on_input: HostTensor,
    /// Grad-CAM++ at the same layer, [h, w]: each channel weighed by its positive gradients, each
    /// scaled by the paper's alpha ([`grad_cam_plus_plus`]); not normalised.
    pub cam_plus_plus: HostTensor,
    /// `cam_plus_plus` enlarged to the input's size, [H, W].
    pub cam_plus_plus_on_input: HostTensor,
    /// The largest |gradient| over the input's channels, [H, W].
    pub saliency: HostTensor,
    /// SmoothGrad's average of saliency maps, [H, W], where asked for.
    pub smooth_grad: Option<HostTensor>,
    /// (layer, activations [C, h, w]) of each layer in `Question::features`.
    pub features: Vec<(String, HostTensor)>,
}

/// What one pass computes.
struct Pass {
    probabilities: Vec<f32>,
    class: usize,
    input_gradient: HostTensor,
    /// Grad-CAM and Grad-CAM++.
    cam: Option<(HostTensor, HostTensor)>,
    features: Vec<(String, HostTensor)>,
}

impl<B: Backend> Vgg<B> {
    /// Explains the network's answer for `image`, [1, C, H, W]. Refuses a layer the network does
    /// not have, one that has no spatial map (fc6-fc8), a class out of range, and an image of
    /// another size than the network's.
    pub fn explain(
        &self,
        backend: &B,
        image: &B::Tensor,
        question: &Question,
    ) -> Result<Explanation, ModelError> {
        self.check_input(image.shape())?;
        if image.shape().dims()[0] != 1 {
            return Err(ModelError::Input(format!(
                "explain takes one image at a time, [1, C, H, W], got shape {}",
                image.shape()
            )));
        }
        self.check_question(question)?;
        let pass = self.pass(
            backend,
            image,
            question.class,
            Some(&question.cam_layer),
            &question.features,
        )?;
        let [_, _, height, width] = image.shape().dims() else {
            unreachable!("checked: rank 4")
        };
        let (cam, cam_plus_plus) = pass.cam.expect("the Grad-CAM layer was tapped");
        let cam_on_input = upsample_bilinear(&cam, *height, *width);
        let cam_plus_plus_on_input = upsample_bilinear(&cam_plus_plus, *height, *width);
        let smooth_grad = match question.smooth_grad {
            Some(s) if s.samples > 0 => Some(self.smooth_grad(backend, image, pass.class, s)?),
            _ => None,
        };
        Ok(Explanation {
            probabilities: pass.probabilities,
            class: pass.class,
            cam,
            cam_on_input,
            cam_plus_plus,
            cam_plus_plus_on_input,
            saliency: saliency(&pass.input_gradient),
            smooth_grad,
            features: pass.features,
        })
    }

    /// Refuses, before any work, a question this network cannot answer: a layer it does not
    /// have or one without a spatial map (fc6-fc8), a class out of range.
    pub fn check_question(&self, question: &Question) -> Result<(), ModelError> {
        for layer in std::iter::once(&question.cam_layer).chain(&question.features) {
            self.check_spatial(layer)?;
        }
        let classes = self.spec().options.classes;
        if let Some(class) = question.class.filter(|&c| c >= classes) {
            return Err(ModelError::Input(format!(
                "class {class} is out of range: the network has {classes} classes, 0..{}",
                classes - 1
            )));
        }
        Ok(())
    }

    /// Refuses a layer that is not there or has no spatial map.
    fn check_spatial(&self, layer: &str) -> Result<(), ModelError> {
        match self.spec().layers.iter().find(|l| l.name == layer) {
            None => Err(ModelError::NoSuchLayer {
                name: layer.to_string(),
                model: self.spec().describe(),
                layers: self.spec().layers.iter().map(|l| l.name.clone()).collect(),
            }),
            Some(l) if l.is_linear() => Err(ModelError::Input(format!(
                "{layer} is fully connected and has no spatial map: choose a convolution or a \
                 pool ({} ... {})",
                self.spec().layers[0].name,
                self.spec()
                    .layers
                    .iter()
                    .rev()
                    .find(|l| !l.is_linear())
                    .map_or("", |l| l.name.as_str())
            ))),
            Some(_) => Ok(()),
        }
    }

    /// One forward-backward of `image` on a frozen tape: the gradient of `class`'s logit (the
    /// most probable where None) with respect to the image, Grad-CAM at `cam_layer`, and the
    /// activations of `features`.
    fn pass(
        &self,
        backend: &B,
        image: &B::Tensor,
        class: Option<usize>,
        cam_layer: Option<&str>,
        features: &[String],
    ) -> Result<Pass, ModelError> {
        let tape = Tape::frozen(backend.clone());
        let (x, input_tap) = tape.tap(&tape.constant(image.clone()))?;
        let mut taps: Vec<&str> = features.iter().map(String::as_str).collect();
        taps.extend(cam_layer);
        let mut activations = Vec::new();
        let mut cam_tap: Option<(B::Tensor, Tap<B>)> = None;
        let logits = self.forward_tapped(
            &tape,
            &x,
            RunOptions::EVAL,
            &taps,
            &mut |name, v| {
                if features.iter().any(|f| f == name) && !activations.iter().any(|(n, _)| n == name)
                {
                    activations.push((name.to_string(), HostTensor::download(backend, v.value())?));
                }
                if Some(name) == cam_layer {
                    let (tapped, tap) = tape.tap(&v)?;
                    cam_tap = Some((v.value().clone(), tap));
                    return Ok(tapped);
                }
                Ok(v)
            },
            &mut |_| {},
        )?;
        let classes = self.spec().options.classes;
        let probabilities = backend.download(&backend.softmax_rows(logits.value())?)?;
        let class = class.unwrap_or_else(|| most_probable(&probabilities));
        let mut one_hot = vec![0.0; classes];
        one_hot[class] = 1.0;
        let one_hot = tape.constant(backend.upload(&Shape::from([1, classes]), &one_hot)?);
        let score = tape.sum(&tape.mul(&logits, &one_hot)?)?;
        drop(logits);
        tape.backward(&score)?;
        let cam = match cam_tap {
            Some((a, tap)) => {
                let a = HostTensor::download(backend, &a)?;
                let g = HostTensor::download(backend, &tap.gradient(backend)?)?;
                Some((grad_cam(&a, &g), grad_cam_plus_plus(&a, &g)))
            }
            None => None,
        };
        // The features in the order asked.
        let features = features
            .iter()
            .filter_map(|f| activations.iter().find(|(n, _)| n == f).cloned())
            .map(|(n, t)| (n, without_batch(t)))
            .collect();
        Ok(Pass {
            probabilities,
            class,
            input_gradient: without_batch(HostTensor::download(
                backend,
                &input_tap.gradient(backend)?,
            )?),
            cam,
            features,
        })
    }

    /// The mean of the saliency maps of `s.samples` noisy copies of `image`, for `class`.
    fn smooth_grad(
        &self,
        backend: &B,
        image: &B::Tensor,
        class: usize,
        s: SmoothGrad,
    ) -> Result<HostTensor, ModelError> {
        let values = backend.download(image)?;
        let (lo, hi) = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let deviation = s.noise * (hi - lo).max(0.0);
        let mut sum: Option<HostTensor> = None;
        for i in 0..s.samples {
            let mut noisy = backend.random_normal(
                image.shape(),
                0.0,
                deviation,
                s.seed.wrapping_add(i as u64),
            )?;
            backend.axpy(&mut noisy, 1.0, image)?;
            let map = saliency(
                &self
                    .pass(backend, &noisy, Some(class), None, &[])?
                    .input_gradient,
            );
            match &mut sum {
                Some(acc) => acc
                    .data
                    .iter_mut()
                    .zip(&map.data)
                    .for_each(|(a, m)| *a += m),
                None => sum = Some(map),
            }
        }
        let mut mean = sum.expect("at least one sample");
        mean.data.iter_mut().for_each(|v| *v /= s.samples as f32);
        Ok(mean)
    }
}

/// The index of the largest probability (the first of equals).
fn most_probable(probabilities: &[f32]) -> usize {
    probabilities
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
            if p > best.1 {
                (i, p)
            } else {
                best
            }
        })
        .0
}

/// [1, ...] to [...].
fn without_batch(mut t: HostTensor) -> HostTensor {
    t.shape.remove(0);
    t
}

/// Grad-CAM from a layer's activations and their gradients, [1, K, h, w] each: ReLU of the
/// channels weighed by their gradients' spatial means, [h, w].
pub fn grad_cam(activations: &HostTensor, gradients: &HostTensor) -> HostTensor {
    weighed_channels(activations, gradients, |g, _| {
        g.iter().map(|&v| v as f64).sum::<f64>() / g.len() as f64
    })
}

/// Grad-CAM++ from a layer's activations A and their gradients g, [1, K, h, w] each, [h, w]:
/// ReLU of the channels weighed by sum over positions of alpha ReLU(g), with
/// alpha = g^2 / (2 g^2 + (sum of A over the channel's positions) g^3), 0 where g is 0: the paper's
/// closed form for an exponential of the score, as pytorch-grad-cam computes it (with its 1e-6 in
/// the denominator, so that results match).
pub fn grad_cam_plus_plus(activations: &HostTensor, gradients: &HostTensor) -> HostTensor {
    weighed_channels(activations, gradients, |g, a| {
        let activation_sum = a.iter().map(|&v| v as f64).sum::<f64>();
        g.iter()
            .map(|&g| {
                let g = g as f64;
                if g == 0.0 {
                    return 0.0;
                }
                let (g2, g3) = (g * g, g * g * g);
                g2 / (2.0 * g2 + activation_sum * g3 + 1e-6) * g.max(0.0)
            })
            .sum::<f64>()
    })
}

/// ReLU of the sum over channels of `weight(gradient plane, activation plane)` times the
/// activation plane, in f64, for [1, K, h, w] activations and gradients: [h, w].
fn weighed_channels(
    activations: &HostTensor,
    gradients: &HostTensor,
    weight: impl Fn(&[f32], &[f32]) -> f64,
) -> HostTensor {
    let &[_, k, h, w] = activations.shape.as_slice() else {
        panic!("activations are [1, K, h, w], got {:?}", activations.shape)
    };
    assert_eq!(activations.shape, gradients.shape);
    let plane = h * w;
    let mut cam = vec![0.0f64; plane];
    for c in 0..k {
        let g = &gradients.data[c * plane..(c + 1) * plane];
        let a = &activations.data[c * plane..(c + 1) * plane];
        let weight = weight(g, a);
        cam.iter_mut()
            .zip(a)
            .for_each(|(m, &v)| *m += weight * v as f64);
    }
    HostTensor {
        shape: vec![h, w],
        data: cam.into_iter().map(|v| v.max(0.0) as f32).collect(),
    }
}

/// The largest |value| over the channels of a [C, H, W] gradient, [H, W].
pub fn saliency(gradient: &HostTensor) -> HostTensor {
    let &[c, h, w] = gradient.shape.as_slice() else {
        panic!("a gradient is [C, H, W], got {:?}", gradient.shape)
    };
    let plane = h * w;
    let data = (0..plane)
        .map(|i| {
            (0..c)
                .map(|ch| gradient.data[ch * plane + i].abs())
                .fold(0.0, f32::max)
        })
        .collect();
    HostTensor {
        shape: vec![h, w],
        data,
    }
}

/// A [h, w] map enlarged (or shrunk) to [height, width] bilinearly, sampling at pixel centres
/// and clamping at the edges: PyTorch's `interpolate(mode="bilinear", align_corners=False)`.
pub fn upsample_bilinear(map: &HostTensor, height: usize, width: usize) -> HostTensor {
    let &[h, w] = map.shape.as_slice() else {
        panic!("a map is [h, w], got {:?}", map.shape)
    };
    // Source position, its neighbours and the weight of the second, along one axis.
    let axis = |out: usize, from: usize, to: usize| {
        let scale = from as f64 / to as f64;
        let src = ((out as f64 + 0.5) * scale - 0.5).max(0.0);
        let lo = (src.floor() as usize).min(from - 1);
        let hi = (lo + 1).min(from - 1);
        (lo, hi, src - lo as f64)
    };
    let mut data = Vec::with_capacity(height * width);
    for y in 0..height {
        let (y0, y1, fy) = axis(y, h, height);
        for x in 0..width {
            let (x0, x1, fx) = axis(x, w, width);
            let at = |yy: usize, xx: usize| map.data[yy * w + xx] as f64;
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
            let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
            data.push((top * (1.0 - fy) + bottom * fy) as f32);
        }
    }
    HostTensor {
        shape: vec![height, width],
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(h: usize, w: usize, data: &[f32]) -> HostTensor {
        HostTensor {
            shape: vec![h, w],
            data: data.to_vec(),
        }
    }

    #[test]
    fn grad_cam_weighs_channels_by_their_mean_gradient_and_keeps_the_positive_part() {
        // Two channels of 1x2: weights mean(g) = 1 and -0.5.
        let a = HostTensor {
            shape: vec![1, 2, 1, 2],
            data: vec![1.0, 2.0, 4.0, 2.0],
        };
        let g = HostTensor {
            shape: vec![1, 2, 1, 2],
            data: vec![0.5, 1.5, -1.0, 0.0],
        };
        // 1*1 - 0.5*4 = -1 -> 0; 1*2 - 0.5*2 = 1.
        assert_eq!(grad_cam(&a, &g), map(1, 2, &[0.0, 1.0]));
    }

    #[test]
    fn grad_cam_plus_plus_weighs_positive_gradients_by_alpha() {
        // Channel 0: A = [1, 3] (sum 4), g = [0.5, -1]: only the positive gradient counts,
        // alpha = 0.25 / (0.5 + 4 x 0.125 + 1e-6); channel 1: g = 0, no weight.
        let a = HostTensor {
            shape: vec![1, 2, 1, 2],
            data: vec![1.0, 3.0, 5.0, 7.0],
        };
        let g = HostTensor {
            shape: vec![1, 2, 1, 2],
            data: vec![0.5, -1.0, 0.0, 0.0],
        };
        let weight = 0.25 / (0.5 + 4.0 * 0.125 + 1e-6) * 0.5;
        let cam = grad_cam_plus_plus(&a, &g);
        assert_eq!(cam.shape, vec![1, 2]);
        for (got, want) in cam.data.iter().zip([weight, 3.0 * weight]) {
            assert!((f64::from(*got) - want).abs() < 1e-7, "{got} {want}");
        }
        // A negative weighted sum is cut to zero, as in Grad-CAM.
        let negative = HostTensor {
            shape: vec![1, 1, 1, 2],
            data: vec![-1.0, -2.0],
        };
        let positive = HostTensor {
            shape: vec![1, 1, 1, 2],
            data: vec![0.1, 0.1],
        };
        assert_eq!(
            grad_cam_plus_plus(&negative, &positive).data,
            vec![0.0, 0.0]
        );
    }

    #[test]
    fn saliency_is_the_largest_magnitude_over_channels() {
        let g = HostTensor {
            shape: vec![2, 1, 2],
            data: vec![-3.0, 1.0, 2.0, -0.5],
        };
        assert_eq!(saliency(&g), map(1, 2, &[3.0, 1.0]));
    }

    #[test]
    fn bilinear_enlarging_matches_pytorchs_half_pixel_rule() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4),
        // mode="bilinear", align_corners=False)
        let up = upsample_bilinear(&map(2, 2, &[0.0, 1.0, 2.0, 3.0]), 4, 4);
        let want = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        assert_eq!(up.data, want);
        // The same size is the identity; one value spreads everywhere.
        let m = map(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(upsample_bilinear(&m, 2, 3), m);
        assert_eq!(upsample_bilinear(&map(1, 1, &[7.0]), 3, 2).data, [7.0; 6]);
    }
}
