//! Data-parallel runs over several processes.
//!
//! A [`Communicator`] is the group of processes (ranks) a run is split over: [`Solo`] for one
//! process (the default, nothing to install), `mpi::Mpi` over the system's MPI with the `mpi`
//! feature (`mpirun -np N vgg train ...`), and [`LocalGroup`] for ranks as threads of one process
//! (tests, and trying the code without MPI). Its collectives work on host buffers, so every
//! backend can use it; [`GradientBuckets`] and [`StepReducer`] average a step's gradients in
//! buckets started while backward is still running, as PyTorch's DistributedDataParallel does.
//!
//! [`GradientReducer`] is the interface the training loop uses, made each step by a
//! [`GradientExchange`]: [`HostExchange`] (reducers of type [`StepReducer`]) works for any backend
//! over any [`Communicator`]; a backend may bring its own that keeps gradients on its device (the
//! `vgg-nccl` crate: NCCL for CUDA tensors).

mod bucket;
mod compression;
mod exchange;
mod local;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod scaling;

use std::sync::mpsc;

pub use bucket::{
    Arrivals, BucketMemory, CommTimes, GradientBuckets, GradientReducer, StepReducer,
};
pub use compression::{segment_width, GradientCompression};
pub use exchange::{ExchangeOptions, GradientExchange, HostExchange};
pub use local::LocalGroup;

/// What can go wrong between processes.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A collective waited longer than the communicator's timeout: another rank failed, stalled
    /// or took another path.
    #[error(
        "rank {rank} of {size}: {op} waited {seconds:.0} s for the other ranks; one of them has failed, \
         stalled or was started with other settings (raise the communicator's timeout if a step \
         is really that slow)"
    )]
    Timeout {
        /// The collective.
        op: &'static str,
        /// This rank.
        rank: usize,
        /// Ranks in the group.
        size: usize,
        /// How long it waited.
        seconds: f64,
    },
    /// Another rank left the group while this one waited for it.
    #[error("rank {rank} of {size}: rank {gone} left the job during {op}; its own error says why")]
    PeerGone {
        /// The collective.
        op: &'static str,
        /// This rank.
        rank: usize,
        /// Ranks in the group.
        size: usize,
        /// The rank that left.
        gone: usize,
    },
    /// The ranks were not started alike.
    #[error(
        "rank {rank} differs from rank 0 in {what}: every rank must be started with the same \
         command, settings and files (rank 0: {root}; rank {rank}: {ours})"
    )]
    Mismatch {
        /// This rank.
        rank: usize,
        /// What differs.
        what: &'static str,
        /// Rank 0's value.
        root: String,
        /// This rank's value.
        ours: String,
    },
    /// This rank agrees with rank 0, but others do not. The first of them is named with its
    /// value here, so that the job's output says how even where the launcher ends that rank
    /// before it prints its own error.
    #[error(
        "rank {rank}: rank {first} differs from rank 0 in {what} ({ranks} rank(s) in all): every \
         rank must be started with the same command, settings and files (rank 0: {root}; rank \
         {first}: {theirs})"
    )]
    OtherMismatch {
        /// This rank.
        rank: usize,
        /// What differs.
        what: &'static str,
        /// How many ranks differ.
        ranks: usize,
        /// Rank 0's value.
        root: String,
        /// The lowest rank that differs.
        first: usize,
        /// Its value.
        theirs: String,
    },
    /// The MPI library failed or could not start.
    #[error("MPI: {0}")]
    Mpi(String),
    /// A device library's collectives (NCCL) failed or cannot do what was asked; the message
    /// names the library.
    #[error("{0}")]
    Collective(String),
    /// A launcher started this process as one of several ranks, but this build has no MPI.
    #[error(
        "this process was started by {launcher} as one of {size} ranks, but this vgg was built \
         without MPI, so every rank would run alone and write the same files: build it with \
         `--features mpi` (see the README's \"Scaling out\"), or run it without the launcher"
    )]
    NoMpi {
        /// The launcher, in words.
        launcher: &'static str,
        /// Ranks the launcher started.
        size: usize,
    },
    /// A launcher's variable is set but cannot be read.
    #[error(
        "{variable}={value} is {reason}: a launcher sets it to tell this process its place among \
         several; unset it, or start vgg through the launcher as usual"
    )]
    BadLaunch {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A buffer handed to a collective does not fit the group's layout.
    #[error("{0}")]
    Layout(String),
    /// A backend op (a gradient's download or upload) failed.
    #[error(transparent)]
    Tensor(#[from] vgg_tensor::TensorError),
}

/// Results of this crate.
pub type Result<T, E = DistError> = std::result::Result<T, E>;

/// The result of an allreduce: the summed buffer and the seconds the collective itself took,
/// from its start to its completion, whether or not anybody waited for it.
#[derive(Debug)]
pub struct Reduced {
    /// The element-wise sum over the ranks.
    pub data: Vec<f32>,
    /// Seconds between the collective's start and its end.
    pub seconds: f64,
}

/// An allreduce that has started; `wait` blocks until it ends.
#[derive(Debug)]
pub struct PendingReduce {
    receiver: mpsc::Receiver<Result<Reduced>>,
}

impl PendingReduce {
    /// A pending reduction whose result comes through `receiver`.
    pub fn from_channel(receiver: mpsc::Receiver<Result<Reduced>>) -> PendingReduce {
        PendingReduce { receiver }
    }

    /// A reduction that is already done.
    pub fn ready(result: Result<Reduced>) -> PendingReduce {
        let (sender, receiver) = mpsc::channel();
        let _ = sender.send(result);
        PendingReduce { receiver }
    }

    /// The summed buffer, once every rank has contributed.
    pub fn wait(self) -> Result<Reduced> {
        self.receiver
            .recv()
            .unwrap_or_else(|_| Err(DistError::Mpi("the communication thread ended".into())))
    }
}

/// The most bytes one [`Communicator::broadcast`] of [`Communicator::broadcast_bytes`] carries.
pub const BROADCAST_PIECE: usize = 1 << 30;

/// A group of ranks that run the same program on different data. Every rank must call the
/// collectives in the same order with buffers of the same length.
pub trait Communicator: Send + Sync {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;

    /// Ranks in the group.
    fn size(&self) -> usize;

    /// What carries the data: "one process", "MPI (Open MPI v4.1.4), 2 ranks".
    fn describe(&self) -> String;

    /// Starts summing `data` element-wise over the ranks; the result is the same on every rank.
    /// The call returns at once where the communicator can overlap the reduction with other work.
    fn start_allreduce(&self, data: Vec<f32>) -> Result<PendingReduce>;

    /// Starts summing `data` over the ranks as [`start_allreduce`](Self::start_allreduce) does,
    /// with the values sent in 16 bits (`format`): half the bytes, each value rounded on its way
    /// in and the sum rounded once, the same on every rank (see [`GradientCompression`]). One
    /// process sends nothing and returns `data` unchanged.
    fn start_allreduce_compressed(
        &self,
        data: Vec<f32>,
        format: GradientCompression,
    ) -> Result<PendingReduce>;

    /// Sums `data` element-wise over the ranks, in f64 (counts and loss sums), and waits.
    fn allreduce_f64(&self, data: &mut [f64]) -> Result<()>;

    /// Replaces `data` on every rank with rank `root`'s; every rank gives the same length.
    fn broadcast(&self, data: &mut [u8], root: usize) -> Result<()>;

    /// Waits until every rank has reached it.
    fn barrier(&self) -> Result<()>;

    /// Ends every rank of the job at once with `code`, for an error on one rank that the others
    /// cannot learn of (they would wait for it forever). With one process, exits.
    fn abort(&self, code: i32) -> !;

    /// `start_allreduce(data)` and wait.
    fn allreduce(&self, data: Vec<f32>) -> Result<Reduced> {
        self.start_allreduce(data)?.wait()
    }

    /// Replaces `data` on every rank with rank `root`'s.
    fn broadcast_f32(&self, data: &mut [f32], root: usize) -> Result<()> {
        let mut bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.broadcast(&mut bytes, root)?;
        for (v, b) in data.iter_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }

    /// Rank `root`'s bytes on every rank, for a file only `root` may be able to read (a
    /// checkpoint on its own disk): `root` passes `Some`, the others `None`. Sent in pieces of at
    /// most [`BROADCAST_PIECE`] bytes, since MPI counts are 32-bit.
    fn broadcast_bytes(&self, bytes: Option<Vec<u8>>, root: usize) -> Result<Vec<u8>> {
        let here = self.rank();
        let mut data = match (bytes, here == root) {
            (Some(bytes), true) => bytes,
            (None, false) => Vec::new(),
            (given, _) => {
                return Err(DistError::Layout(format!(
                    "rank {here} {} bytes to broadcast from rank {root}",
                    if given.is_some() { "gave" } else { "had no" }
                )))
            }
        };
        if self.size() == 1 {
            return Ok(data);
        }
        let mut length = (data.len() as u64).to_le_bytes();
        self.broadcast(&mut length, root)?;
        let length = usize::try_from(u64::from_le_bytes(length))
            .map_err(|_| DistError::Layout(format!("rank {root}'s bytes do not fit here")))?;
        data.resize(length, 0);
        for piece in data.chunks_mut(BROADCAST_PIECE) {
            self.broadcast(piece, root)?;
        }
        Ok(data)
    }

    /// Checks that every rank has the same `value` of `what` as rank 0 (settings, data sizes):
    /// ranks started differently would exchange buffers that do not match, or wait forever.
    fn check_same(&self, what: &'static str, value: &str) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let mut length = (value.len() as u64).to_le_bytes();
        self.broadcast(&mut length, 0)?;
        // Every rank joins the second broadcast with rank 0's length, whatever its own.
        let root_len = usize::try_from(u64::from_le_bytes(length))
            .map_err(|_| DistError::Layout(format!("rank 0's {what} is too long")))?;
        let mut root = vec![0u8; root_len];
        if root_len == value.len() {
            root.copy_from_slice(value.as_bytes());
        }
        self.broadcast(&mut root, 0)?;
        let root = String::from_utf8_lossy(&root).into_owned();
        // One flag per rank, so that every rank learns which ones differ, not only how many.
        let mut differing = vec![0.0f64; self.size()];
        differing[self.rank()] = f64::from(u8::from(root != value));
        self.allreduce_f64(&mut differing)?;
        let Some(first) = differing.iter().position(|&d| d > 0.0) else {
            return Ok(());
        };
        // Every rank joins this broadcast, those that differ too, so that each rank that agrees
        // can name the first that does not with its value: where the launcher ends the job at
        // the first rank's exit, that rank may not live to print its own error.
        let theirs = self.broadcast_bytes((self.rank() == first).then(|| value.into()), first)?;
        if root != value {
            return Err(DistError::Mismatch {
                rank: self.rank(),
                what,
                root,
                ours: value.to_string(),
            });
        }
        Err(DistError::OtherMismatch {
            rank: self.rank(),
            what,
            ranks: differing.iter().filter(|&&d| d > 0.0).count(),
            root,
            first,
            theirs: String::from_utf8_lossy(&theirs).into_owned(),
        })
    }
}

/// One process alone: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn describe(&self) -> String {
        "one process".into()
    }

    fn start_allreduce(&self, data: Vec<f32>) -> Result<PendingReduce> {
        Ok(PendingReduce::ready(Ok(Reduced { data, seconds: 0.0 })))
    }

    fn start_allreduce_compressed(
        &self,
        data: Vec<f32>,
        _format: GradientCompression,
    ) -> Result<PendingReduce> {
        self.start_allreduce(data)
    }

    fn allreduce_f64(&self, _data: &mut [f64]) -> Result<()> {
        Ok(())
    }

    fn broadcast(&self, _data: &mut [u8], _root: usize) -> Result<()> {
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Where a launcher started this process: which launcher, this rank, the ranks in all, the
/// ranks on this node and this rank's place among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// The launcher, in words.
    pub launcher: &'static str,
    /// This process's rank.
    pub rank: usize,
    /// Ranks in the job.
    pub size: usize,
    /// Ranks on this node (at least 1).
    pub local: usize,
    /// This rank's index among the ranks on this node, below `local` (0 where the launcher does not
    /// say): which of the node's GPUs it takes.
    pub local_rank: usize,
}

/// The launchers recognised, each by the variables it sets in every rank: (launcher, size, rank,
/// ranks on this node, rank on this node). The first whose size variable is set wins.
const LAUNCHERS: [(&str, &str, &str, &str, &str); 4] = [
    (
        "Open MPI's mpirun",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
    ),
    (
        "MPICH's or Intel MPI's mpiexec (Hydra, PMI)",
        "PMI_SIZE",
        "PMI_RANK",
        "MPI_LOCALNRANKS",
        "MPI_LOCALRANKID",
    ),
    (
        "MVAPICH's mpirun_rsh",
        "MV2_COMM_WORLD_SIZE",
        "MV2_COMM_WORLD_RANK",
        "MV2_COMM_WORLD_LOCAL_SIZE",
        "MV2_COMM_WORLD_LOCAL_RANK",
    ),
    // srun sets SLURM_STEP_* in a job step's tasks only, not in the batch script that starts
    // them, so a lone `vgg` in an allocation of many tasks still runs alone.
    (
        "Slurm's srun",
        "SLURM_STEP_NUM_TASKS",
        "SLURM_PROCID",
        "SLURM_STEP_TASKS_PER_NODE",
        "SLURM_LOCALID",
    ),
];

/// The ranks a launcher (mpirun, mpiexec, srun) started this process among, read from the
/// variables it sets. None when no launcher started it; an error when a launcher's variable is
/// set but malformed (taking it as one rank would let N copies write the same files).
pub fn launched_by_mpi() -> Result<Option<Launch>> {
    launch_from(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
}

/// [`launched_by_mpi`] over any source of variables.
pub fn launch_from(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
    let number = |name: &'static str, value: &str| -> Result<usize> {
        // Slurm's tasks per node read "2(x3),1": this node's count comes first.
        let digits = value.trim().split(['(', ',']).next().unwrap_or("");
        digits.parse::<usize>().map_err(|_| DistError::BadLaunch {
            variable: name,
            value: value.chars().take(100).collect(),
            reason: "not a whole number",
        })
    };
    // A place among `count` (0 where the variable is unset), refused where it is not below it.
    let index = |name: &'static str, count: usize, reason: &'static str| -> Result<usize> {
        let i = match var(name) {
            Some(v) => number(name, &v)?,
            None => 0,
        };
        if i >= count {
            return Err(DistError::BadLaunch {
                variable: name,
                value: i.to_string(),
                reason,
            });
        }
        Ok(i)
    };
    for (launcher, size_var, rank_var, local_var, local_rank_var) in LAUNCHERS {
        let Some(size) = var(size_var) else { continue };
        let size = number(size_var, &size)?;
        if size == 0 {
            return Err(DistError::BadLaunch {
                variable: size_var,
                value: "0".into(),
                reason: "a job has at least one rank",
            });
        }
        let rank = index(rank_var, size, "the rank is not below the job's size")?;
        let local = match var(local_var) {
            Some(l) => number(local_var, &l)?.clamp(1, size),
            None => size,
        };
        let local_rank = index(
            local_rank_var,
            local,
            "the rank on this node is not below the ranks on this node",
        )?;
        return Ok(Some(Launch {
            launcher,
            rank,
            size,
            local,
            local_rank,
        }));
    }
    Ok(None)
}
