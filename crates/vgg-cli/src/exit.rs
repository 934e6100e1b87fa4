//! Exit codes: 2 for bad usage and bad input (the user can fix the command, including asking for
//! a GPU the machine does not have), 1 for failures while running (a device or disk error, a run
//! that diverged), 130 after Ctrl-C (`signals::EXIT_INTERRUPTED`).

use vgg_dist::DistError;
use vgg_nn::io::IoError;
use vgg_tensor::TensorError;
use vgg_train::TrainError;

use crate::causes::causes;

/// Bad usage or bad input.
pub const USAGE: u8 = 2;
/// A failure while running.
pub const FAILURE: u8 = 1;

/// The exit code for an error: a failure while running where any error it holds is one.
pub fn code(e: &anyhow::Error) -> u8 {
    if causes(e).into_iter().any(is_runtime_failure) {
        FAILURE
    } else {
        USAGE
    }
}

/// A device failing, a disk refusing a write, a run diverging, another rank failing, stalling or
/// MPI breaking. Ranks started differently, or mpirun around a vgg without MPI, is bad usage.
fn is_runtime_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(t) = e.downcast_ref::<TensorError>() {
        return matches!(t, TensorError::Device(_));
    }
    if let Some(io) = e.downcast_ref::<IoError>() {
        return matches!(io, IoError::Write { .. });
    }
    if let Some(t) = e.downcast_ref::<TrainError>() {
        return matches!(t, TrainError::NonFinite { .. });
    }
    if let Some(d) = e.downcast_ref::<DistError>() {
        return matches!(
            d,
            DistError::Timeout { .. } | DistError::PeerGone { .. } | DistError::Mpi(_)
        );
    }
    e.is::<std::io::Error>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgg_autodiff::AutodiffError;
    use vgg_bench::BenchError;
    use vgg_model::ModelError;

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
        // A rank stalling under the benchmark is a failure while running, as under training.
        let stalled = BenchError::Dist(DistError::Timeout {
            op: "allreduce",
            rank: 1,
            size: 2,
            seconds: 60.0,
        });
        assert_eq!(code(&anyhow::Error::new(stalled)), FAILURE);
    }
}
