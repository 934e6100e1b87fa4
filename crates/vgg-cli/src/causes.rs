//! Every error an `anyhow::Error` holds, wrappers opened. The library errors wrap each other
//! transparently (a wrapper's `source` is its inner error's source), so `anyhow`'s chain never
//! yields the inner error: each wrapper is opened here, once, for the exit code and the hints.

use std::error::Error;

use vgg_autodiff::AutodiffError;
use vgg_bench::BenchError;
use vgg_dist::DistError;
use vgg_model::ModelError;
use vgg_train::data::DataError;
use vgg_train::TrainError;

/// The errors in `e`'s chain and, for each library wrapper, the error it wraps.
pub fn causes(e: &anyhow::Error) -> Vec<&(dyn Error + 'static)> {
    let mut all = Vec::new();
    for link in e.chain() {
        open(link, &mut all);
    }
    all
}

fn open<'a>(e: &'a (dyn Error + 'static), all: &mut Vec<&'a (dyn Error + 'static)>) {
    all.push(e);
    if let Some(inner) = wrapped(e) {
        open(inner, all);
    }
}

/// The error a library wrapper variant holds, if `e` is one.
fn wrapped<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)> {
    if let Some(t) = e.downcast_ref::<TrainError>() {
        return match t {
            TrainError::Model(m) => Some(m),
            TrainError::Autodiff(a) => Some(a),
            TrainError::Tensor(t) => Some(t),
            TrainError::Dist(d) => Some(d),
            _ => None,
        };
    }
    if let Some(b) = e.downcast_ref::<BenchError>() {
        return match b {
            BenchError::Model(m) => Some(m),
            BenchError::Spec(s) => Some(s),
            BenchError::Autodiff(a) => Some(a),
            BenchError::Tensor(t) => Some(t),
            BenchError::Dist(d) => Some(d),
            _ => None,
        };
    }
    if let Some(m) = e.downcast_ref::<ModelError>() {
        return match m {
            ModelError::Spec(s) => Some(s),
            ModelError::Autodiff(a) => Some(a),
            ModelError::Tensor(t) => Some(t),
            ModelError::Io(io) => Some(io),
            _ => None,
        };
    }
    if let Some(AutodiffError::Tensor(t)) = e.downcast_ref::<AutodiffError>() {
        return Some(t);
    }
    if let Some(DistError::Tensor(t)) = e.downcast_ref::<DistError>() {
        return Some(t);
    }
    if let Some(DataError::Io(io)) = e.downcast_ref::<DataError>() {
        return Some(io);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgg_tensor::TensorError;

    #[test]
    fn wrappers_are_opened_to_the_innermost_error() {
        let device = TensorError::Device("lost".into());
        let e = anyhow::Error::new(TrainError::Model(ModelError::Autodiff(
            AutodiffError::Tensor(device.clone()),
        )))
        .context("train");
        let found = causes(&e);
        assert_eq!(found.len(), 5, "context, train, model, autodiff, tensor");
        assert!(found
            .iter()
            .any(|c| c.downcast_ref::<TensorError>() == Some(&device)));
    }
}
