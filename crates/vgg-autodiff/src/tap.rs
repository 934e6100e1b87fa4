//! Taps: the gradient of the loss with respect to any value on the tape, an input or an
//! activation, not only a parameter's. What saliency maps (the input's gradient) and Grad-CAM (an
//! activation's) are made of.

use std::cell::RefCell;
use std::rc::Rc;

use vgg_tensor::{Backend, Shape};

use crate::{Result, Tape, Var};

/// Where a tapped value's gradient arrives during backward; read it with [`Tap::gradient`] once
/// backward has run.
pub struct Tap<B: Backend> {
    gradient: Rc<RefCell<Option<B::Tensor>>>,
    shape: Shape,
}

impl<B: Backend> Tap<B> {
    /// The gradient of the loss with respect to the tapped value: zeros where the loss did not
    /// depend on it, or before backward has run.
    pub fn gradient(&self, backend: &B) -> Result<B::Tensor> {
        match self.gradient.borrow().as_ref() {
            Some(g) => Ok(g.clone()),
            None => Ok(backend.zeros(&self.shape)?),
        }
    }
}

impl<B: Backend> Tape<B> {
    /// `v` unchanged, as a value whose gradient backward keeps in the returned [`Tap`]. Use the
    /// returned value in place of `v` from here on: gradients reach the tap through it. A
    /// constant (an input image) can be tapped: gradients then flow to it, and no further. The
    /// tape must record; on a [`Tape::frozen`] tape, taps are the only gradients computed.
    pub fn tap(&self, v: &Var<B>) -> Result<(Var<B>, Tap<B>)> {
        let gradient: Rc<RefCell<Option<B::Tensor>>> = Rc::new(RefCell::new(None));
        let kept = gradient.clone();
        let tapped = self.record_leaf(
            "tap",
            v,
            v.value().clone(),
            Box::new(move |_, dy, needs| {
                *kept.borrow_mut() = Some(dy.clone());
                Ok(vec![needs[0].then(|| dy.clone())])
            }),
        )?;
        Ok((
            tapped,
            Tap {
                gradient,
                shape: v.shape().clone(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use vgg_ndarray::CpuBackend;
    use vgg_tensor::prelude::*;

    use crate::{AutodiffError, Tape};

    fn backend() -> CpuBackend {
        CpuBackend::new(1).unwrap()
    }

    #[test]
    fn a_tap_on_a_constant_gets_the_gradient_of_the_loss() {
        let b = backend();
        let tape = Tape::new(b.clone());
        let x = tape.constant(b.upload(&Shape::from([3]), &[1.0, -2.0, 3.0]).unwrap());
        let (x, tap) = tape.tap(&x).unwrap();
        // d/dx sum(x^2 * 0.5 + 2x) = x + 2
        let loss = tape
            .add(
                &tape.l2_loss(&x).unwrap(),
                &tape.sum(&tape.scale(&x, 2.0).unwrap()).unwrap(),
            )
            .unwrap();
        tape.backward(&loss).unwrap();
        assert_eq!(
            b.download(&tap.gradient(&b).unwrap()).unwrap(),
            [3.0, 0.0, 5.0]
        );
    }

    #[test]
    fn a_frozen_tape_computes_taps_and_no_parameter_gradient() {
        let b = backend();
        let tape = Tape::frozen(b.clone());
        let w = tape.param("w", b.upload(&Shape::from([2]), &[3.0, -1.0]).unwrap());
        assert!(!w.is_tracked());
        let x = tape.constant(b.upload(&Shape::from([2]), &[2.0, 5.0]).unwrap());
        let (x, tap) = tape.tap(&x).unwrap();
        let (h, mid) = tape.tap(&tape.mul(&w, &x).unwrap()).unwrap();
        let loss = tape.sum(&tape.square(&h).unwrap()).unwrap();
        let grads = tape.backward(&loss).unwrap();
        assert!(grads.is_empty());
        // h = (6, -5); dL/dh = 2h; dL/dx = 2h * w.
        assert_eq!(
            b.download(&mid.gradient(&b).unwrap()).unwrap(),
            [12.0, -10.0]
        );
        assert_eq!(
            b.download(&tap.gradient(&b).unwrap()).unwrap(),
            [36.0, 10.0]
        );
    }

    #[test]
    fn a_value_the_loss_does_not_use_has_a_zero_gradient() {
        let b = backend();
        let tape = Tape::new(b.clone());
        let x = tape.constant(b.upload(&Shape::from([2]), &[1.0, 2.0]).unwrap());
        let (_, unused) = tape.tap(&x).unwrap();
        let (y, _) = tape.tap(&x).unwrap();
        let loss = tape.sum(&y).unwrap();
        tape.backward(&loss).unwrap();
        assert_eq!(
            b.download(&unused.gradient(&b).unwrap()).unwrap(),
            [0.0, 0.0]
        );
    }

    #[test]
    fn an_inference_tape_refuses_a_tap() {
        let b = backend();
        let tape = Tape::inference(b.clone());
        let x = tape.constant(b.zeros(&Shape::from([1])).unwrap());
        assert!(matches!(
            tape.tap(&x),
            Err(AutodiffError::NotRecording("tap"))
        ));
    }
}
