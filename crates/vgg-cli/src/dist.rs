//! Running as one rank of several (`mpirun -np N vgg train|bench ...`): the communicator, the
//! options for gradient buckets, and ending the whole job when this rank fails, so that the other
//! ranks do not wait for it forever.

use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Result;
use vgg_dist::{Communicator, GradientCompression, Solo};

use crate::args;

/// How ranks share gradients (train and bench under mpirun).
#[derive(clap::Args, Clone, Debug)]
pub struct DistArgs {
    /// Under mpirun: gradient bytes per allreduce bucket, e.g. 25M; a bucket is sent as soon as
    /// backward has produced it, while backward goes on
    #[arg(long, default_value = "25M", value_parser = args::byte_size)]
    pub bucket_size: u64,
    /// Under mpirun: send all gradients in one allreduce after backward instead of in buckets
    /// during it (to measure what overlapping saves)
    #[arg(long)]
    pub no_overlap: bool,
    /// Under mpirun: seconds a rank waits for the others in one exchange before it ends the job
    /// with an error naming the exchange (another rank failed or stalled)
    #[arg(long, default_value = "300", value_parser = args::positive)]
    pub comm_timeout: usize,
    /// Under mpirun: send gradients in 16 bits, half the bytes of f32: bf16 (8 bits of
    /// mantissa) or fp16 (11 bits, each piece scaled into its range); summed in f32
    #[arg(long, value_enum, default_value = "none")]
    pub gradient_compression: Compression,
}

/// How gradients travel between ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// f32, as computed
    None,
    /// bfloat16
    Bf16,
    /// IEEE half precision
    Fp16,
}

impl DistArgs {
    /// The 16-bit format gradients travel in, if any.
    pub fn compression(&self) -> Option<GradientCompression> {
        match self.gradient_compression {
            Compression::None => None,
            Compression::Bf16 => Some(GradientCompression::Bf16),
            Compression::Fp16 => Some(GradientCompression::Fp16),
        }
    }

    /// How the gradients travel, for the run's description: "", ", sent in bf16".
    pub fn describe_compression(&self) -> String {
        self.compression()
            .map_or_else(String::new, |c| format!(", sent in {}", c.name()))
    }

    /// How long a rank waits for the others in one exchange (`--comm-timeout`).
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.comm_timeout as u64)
    }

    /// Bucket bytes: everything in one bucket without overlap.
    pub fn bucket_bytes(&self) -> usize {
        if self.no_overlap {
            usize::MAX
        } else {
            usize::try_from(self.bucket_size).unwrap_or(usize::MAX)
        }
    }
}

/// The job's communicator, from its start until `finish`.
static JOB: Mutex<Option<Arc<dyn Communicator>>> = Mutex::new(None);

fn job_lock() -> MutexGuard<'static, Option<Arc<dyn Communicator>>> {
    JOB.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The ranks this process belongs to: MPI's when a launcher started several, else this process
/// alone. Made once; later calls return the same.
pub fn communicator(args: &DistArgs) -> Result<Arc<dyn Communicator>> {
    let mut job = job_lock();
    if let Some(comm) = job.as_ref() {
        return Ok(comm.clone());
    }
    let comm: Arc<dyn Communicator> = match vgg_dist::launched_by_mpi()? {
        Some(launch) if launch.size > 1 => start_mpi(launch, args)?,
        _ => Arc::new(Solo),
    };
    *job = Some(comm.clone());
    Ok(comm)
}

/// Leaves the job after a command succeeded on this rank: MPI is finalised (every rank must,
/// or mpirun calls the job failed).
pub fn finish() {
    let comm = job_lock().take();
    drop(comm);
}

#[cfg(feature = "mpi")]
fn start_mpi(_launch: vgg_dist::Launch, args: &DistArgs) -> Result<Arc<dyn Communicator>> {
    Ok(Arc::new(vgg_dist::mpi::Mpi::init(args.timeout())?))
}

#[cfg(not(feature = "mpi"))]
fn start_mpi(launch: vgg_dist::Launch, _args: &DistArgs) -> Result<Arc<dyn Communicator>> {
    Err(vgg_dist::DistError::NoMpi {
        launcher: launch.launcher,
        size: launch.size,
    }
    .into())
}

/// (rank, size) of the job this process is in, once its communicator exists.
pub fn job() -> Option<(usize, usize)> {
    job_lock()
        .as_ref()
        .map(|c| (c.rank(), c.size()))
        .filter(|&(_, size)| size > 1)
}

/// Where this rank's message should say who it is: "rank 1 of 2: ".
pub fn who() -> String {
    job().map_or_else(String::new, |(rank, size)| {
        format!("rank {rank} of {size}: ")
    })
}

/// In a job of several ranks, ends them all with `code` (MPI_Abort): the others may be waiting
/// for this one in an exchange it will never join. Returns where there is no such job.
pub fn end_job(code: u8) {
    let comm = job_lock().clone();
    if let Some(comm) = comm.filter(|c| c.size() > 1) {
        comm.abort(code.into());
    }
}

/// CPU threads per rank where `--threads` is 0: the cores shared among the ranks a launcher put
/// on this machine (0, one per core, when it put one).
pub fn default_threads() -> usize {
    // A malformed launcher variable is refused when the communicator is made.
    match vgg_dist::launched_by_mpi() {
        Ok(Some(launch)) if launch.local > 1 => {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / launch.local).max(1))
        }
        _ => 0,
    }
}

/// The GPU a rank takes where `--gpu` is not given: its place among the ranks a launcher put on
/// this node, modulo the GPUs there (0 outside a launcher). NCCL needs a GPU per rank.
pub fn default_gpu() -> usize {
    let launch = vgg_dist::launched_by_mpi().ok().flatten();
    gpu_of(launch, || vgg_cuda::device_count().unwrap_or(1))
}

/// [`default_gpu`] for a given launch and a count of GPUs (asked only under a launcher).
fn gpu_of(launch: Option<vgg_dist::Launch>, gpus: impl FnOnce() -> usize) -> usize {
    launch.map_or(0, |l| l.local_rank % gpus().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rank_of_a_node_takes_its_own_gpu() {
        let launch = |local_rank| vgg_dist::Launch {
            launcher: "test",
            rank: 4 + local_rank,
            size: 8,
            local: 4,
            local_rank,
        };
        assert_eq!(gpu_of(None, || panic!("not asked")), 0);
        let on_four: Vec<usize> = (0..4).map(|r| gpu_of(Some(launch(r)), || 4)).collect();
        assert_eq!(on_four, [0, 1, 2, 3]);
        // More ranks than GPUs share them round-robin (NCCL will then refuse, saying why).
        let on_two: Vec<usize> = (0..4).map(|r| gpu_of(Some(launch(r)), || 2)).collect();
        assert_eq!(on_two, [0, 1, 0, 1]);
        assert_eq!(gpu_of(Some(launch(3)), || 0), 0);
    }
}
