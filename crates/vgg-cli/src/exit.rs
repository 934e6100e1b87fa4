//! Exit codes: 2 for bad usage and bad input (the user can fix the command, including asking for
//! a GPU the machine does not have), 1 for failures while running (a device or disk error, a run
//! that diverged), 130 after Ctrl-C (`signals::EXIT_INTERRUPTED`).

use vgg_autodiff::AutodiffError;
use vgg_bench::BenchError;
use vgg_dist::DistError;
use vgg_model::ModelError;
use vgg_nn::io::IoError;
use vgg_tensor::TensorError;
use vgg_train::TrainError;

/// Bad usage or bad input.
pub const USAGE: u8 = 2;
/// A failure while running.
pub const FAILURE: u8 = 1;

/// The exit code for an error: a failure while running where any error in its chain is one.
pub fn code(e: &anyhow::Error) -> u8 {
    if e.chain().any(is_runtime_failure) {
        FAILURE
    } else {
        USAGE
    }
}

// The library errors wrap each other transparently (a wrapper's source is its inner error's
// source), so `chain` never yields the inner error: each wrapper is looked into here.
fn is_runtime_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(t) = e.downcast_ref::<TensorError>() {
        return tensor(t);
    }
    if let Some(a) = e.downcast_ref::<AutodiffError>() {
        return autodiff(a);
    }
    if let Some(io) = e.downcast_ref::<IoError>() {
        return matches!(io, IoError::Write { .. });
    }
    if let Some(m) = e.downcast_ref::<ModelError>() {
        return model(m);
    }
    if let Some(t) = e.downcast_ref::<TrainError>() {
        return match t {
            TrainError::NonFinite { .. } => true,
            TrainError::Model(m) => model(m),
            TrainError::Autodiff(a) => autodiff(a),
            TrainError::Tensor(t) => tensor(t),
            TrainError::Dist(d) => dist(d),
            _ => false,
        };
    }
    if let Some(d) = e.downcast_ref::<DistError>() {
        return dist(d);
    }
    if let Some(b) = e.downcast_ref::<BenchError>() {
        return match b {
            BenchError::Model(m) => model(m),
            BenchError::Autodiff(a) => autodiff(a),
            BenchError::Tensor(t) => tensor(t),
            _ => false,
        };
    }
    e.is::<std::io::Error>()
}

/// Another rank failing, stalling or MPI breaking is a failure while running; ranks started
/// differently, or mpirun around a vgg without MPI, is bad usage.
fn dist(e: &DistError) -> bool {
    match e {
        DistError::Timeout { .. } | DistError::PeerGone { .. } | DistError::Mpi(_) => true,
        DistError::Tensor(t) => tensor(t),
        _ => false,
    }
}

fn tensor(e: &TensorError) -> bool {
    matches!(e, TensorError::Device(_))
}

fn autodiff(e: &AutodiffError) -> bool {
    matches!(e, AutodiffError::Tensor(t) if tensor(t))
}

fn model(e: &ModelError) -> bool {
    match e {
        ModelError::Tensor(t) => tensor(t),
        ModelError::Autodiff(a) => autodiff(a),
        ModelError::Io(io) => matches!(io, IoError::Write { .. }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_problems_are_2_and_running_failures_1() {
        let bad_input = anyhow::Error::new(TensorError::InvalidArgument {
            op: "x",
            message: "y".into(),
        });
        assert_eq!(code(&bad_input), USAGE);
        let device = anyhow::Error::new(TensorError::Device("lost".into())).context("bench");
        assert_eq!(code(&device), FAILURE);
        let disk = || IoError::Write {
            path: "x".into(),
            error: std::io::Error::other("full"),
        };
        assert_eq!(code(&anyhow::Error::new(disk())), FAILURE);
        // Wrapped transparently, as the model and trainer return them.
        let wrapped = TrainError::Model(ModelError::Io(disk()));
        assert_eq!(code(&anyhow::Error::new(wrapped).context("train")), FAILURE);
        let lost = BenchError::Autodiff(AutodiffError::Tensor(TensorError::Device("x".into())));
        assert_eq!(code(&anyhow::Error::new(lost)), FAILURE);
        let unreadable = ModelError::Io(IoError::Read {
            path: "x".into(),
            error: std::io::Error::other("missing"),
        });
        assert_eq!(code(&anyhow::Error::new(unreadable)), USAGE);
        assert_eq!(code(&anyhow::anyhow!("a refusal")), USAGE);
    }
}
