//! Data-parallel gradients that never leave the GPU: a [`GradientExchange`] for the CUDA backend
//! over NCCL, as PyTorch's DistributedDataParallel does it.
//!
//! One NCCL communicator per job, over the same ranks as the job's [`Communicator`] (MPI), which
//! carries only NCCL's unique id at the start. The buckets are the host exchange's
//! ([`GradientBuckets`], backward's order, started as soon as they are full), kept in device
//! memory from step to step: each gradient is copied into its bucket on the backend's stream, and
//! a full bucket is summed in place by `ncclAllReduce` on a stream of its own, so the sums run
//! while backward computes the layers below. Events order the two streams (the backend keeps no
//! per-buffer events): a bucket's reduction waits for its copies, and the averaged gradients are
//! copied out only after every reduction is done.
//!
//! NCCL is loaded at run time (`libnccl.so` on the library path), like the rest of CUDA: nothing is
//! needed to build this crate. NCCL allows one rank per GPU.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};
use vgg_cuda::{CudaBackend, CudaTensor};
use vgg_dist::{
    Arrivals, CommTimes, Communicator, DistError, ExchangeOptions, GradientBuckets,
    GradientExchange, GradientReducer,
};
use vgg_tensor::{Backend, DeviceTensor};

/// Why there is no NCCL exchange.
#[derive(Debug, thiserror::Error)]
pub enum NcclError {
    /// NCCL's library cannot be loaded on some ranks (every rank learns how many).
    #[error(
        "NCCL unavailable on {missing} of the job's {size} rank(s): libnccl.so not found; put NCCL \
         on LD_LIBRARY_PATH (PyTorch's site-packages/nvidia/nccl/lib has libnccl.so.2: link it as \
         libnccl.so in a directory on the path)"
    )]
    Unavailable {
        /// Ranks without it.
        missing: usize,
        /// Ranks in the job.
        size: usize,
    },
    /// An NCCL or CUDA call failed.
    #[error("NCCL: {what} failed: {detail}{hint}")]
    Call {
        /// What was being done.
        what: &'static str,
        /// The library's error.
        detail: String,
        /// What may be wrong, where that is known.
        hint: &'static str,
    },
    /// The job's communicator failed while setting NCCL up.
    #[error(transparent)]
    Dist(#[from] DistError),
}

/// Whether NCCL's library can be loaded here, and its version ("2.27.3").
pub fn nccl_version() -> Result<String, NcclError> {
    // SAFETY: only tries to dlopen libnccl by its usual names.
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Err(NcclError::Unavailable {
            missing: 1,
            size: 1,
        });
    }
    let v = cudarc::nccl::result::get_nccl_version().map_err(|e| call("ncclGetVersion", e.0))?;
    // NCCL 2.9 and later: major * 10000 + minor * 100 + patch.
    Ok(format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100))
}

fn call(what: &'static str, detail: impl std::fmt::Debug) -> NcclError {
    NcclError::Call {
        what,
        detail: format!("{detail:?}"),
        hint: "",
    }
}

/// A device call's failure inside a step, as the training loop's error type.
fn step_error(what: &str) -> impl Fn(cudarc::driver::DriverError) -> DistError + '_ {
    move |e| DistError::Collective(format!("NCCL exchange: {what}: {e:?}"))
}

/// The NCCL exchange of one job: its communicator, its stream and the buckets' device memory.
pub struct NcclExchange {
    backend: CudaBackend,
    comm: Comm,
    /// Where the reductions run, beside the backend's stream.
    stream: Arc<CudaStream>,
    /// How long `finish` waits for the reductions before calling the job stalled.
    timeout: Duration,
    version: String,
    /// Each bucket's device buffer, kept from step to step.
    buckets: Mutex<Vec<CudaSlice<f32>>>,
}

impl NcclExchange {
    /// Sets NCCL up over the ranks of `comm`, on `backend`'s GPU; every rank calls it together.
    /// Where any rank lacks NCCL, every rank gets [`NcclError::Unavailable`] (so that all can go
    /// on without it alike). `timeout` bounds the wait for a step's reductions.
    pub fn new(
        backend: &CudaBackend,
        comm: &dyn Communicator,
        timeout: Duration,
    ) -> Result<NcclExchange, NcclError> {
        let version = nccl_version();
        let mut missing = [f64::from(u8::from(version.is_err()))];
        comm.allreduce_f64(&mut missing)?;
        if missing[0] > 0.0 {
            return Err(NcclError::Unavailable {
                missing: missing[0] as usize,
                size: comm.size(),
            });
        }
        let version = version?;
        // Rank 0 makes the id; a failure there is sent instead, so that no rank waits for it.
        let mut id_message = [0u8; 129];
        if comm.rank() == 0 {
            match Id::new() {
                Ok(id) => {
                    id_message[0] = 1;
                    for (byte, &c) in id_message[1..].iter_mut().zip(id.internal()) {
                        *byte = c as u8;
                    }
                }
                Err(e) => tracing::error!("ncclGetUniqueId failed: {:?}", e.0),
            }
        }
        comm.broadcast(&mut id_message, 0)?;
        if id_message[0] != 1 {
            return Err(NcclError::Call {
                what: "making the job's unique id on rank 0",
                detail: "see rank 0's log".into(),
                hint: "",
            });
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        for (c, &byte) in internal.iter_mut().zip(&id_message[1..]) {
            *c = byte as std::ffi::c_char;
        }
        let stream = backend
            .stream()
            .fork()
            .map_err(|e| call("creating the reductions' stream", e))?;
        let nccl = Comm::from_rank(
            stream.clone(),
            comm.rank(),
            comm.size(),
            Id::uninit(internal),
        )
        .map_err(|e| NcclError::Call {
            what: "ncclCommInitRank",
            detail: format!("{:?}", e.0),
            hint: " (NCCL allows one rank per GPU: give each rank of a node its own, as --gpu's \
                   default does from the launcher's local rank)",
        })?;
        tracing::debug!(
            rank = comm.rank(),
            size = comm.size(),
            gpu = backend.ordinal(),
            %version,
            "NCCL communicator ready"
        );
        Ok(NcclExchange {
            backend: backend.clone(),
            comm: nccl,
            stream,
            timeout,
            version,
            buckets: Mutex::new(Vec::new()),
        })
    }

    /// The NCCL version in use.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The kept bucket buffers, resized to `layout` (zeros where new).
    fn buckets_for(
        &self,
        layout: &GradientBuckets,
    ) -> vgg_dist::Result<MutexGuard<'_, Vec<CudaSlice<f32>>>> {
        let mut kept = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let fits = kept.len() == layout.len()
            && kept
                .iter()
                .zip(layout.bucket_elements())
                .all(|(b, &n)| b.len() == n.max(1));
        if !fits {
            kept.clear();
            for &n in layout.bucket_elements() {
                let buffer = self
                    .backend
                    .stream()
                    .alloc_zeros::<f32>(n.max(1))
                    .map_err(step_error("allocating a bucket"))?;
                kept.push(buffer);
            }
        }
        Ok(kept)
    }
}

impl GradientExchange<CudaBackend> for NcclExchange {
    fn describe(&self) -> String {
        format!(
            "NCCL {}, {} ranks, device buffers",
            self.version,
            self.comm.world_size()
        )
    }

    fn reducer<'s>(
        &'s self,
        layout: &'s GradientBuckets,
        weight: f32,
        options: ExchangeOptions,
    ) -> vgg_dist::Result<Box<dyn GradientReducer<CudaBackend> + 's>> {
        if let Some(format) = options.compression {
            return Err(DistError::Collective(format!(
                "the NCCL exchange sends f32 gradients, not {}: compressed gradients go through \
                 host buffers",
                format.name()
            )));
        }
        Ok(Box::new(NcclReducer {
            exchange: self,
            layout,
            weight,
            overlap: options.overlap,
            buckets: self.buckets_for(layout)?,
            arrivals: Arrivals::new(layout),
            timing: Vec::new(),
            times: CommTimes::default(),
        }))
    }
}

/// One step's reductions on the device.
struct NcclReducer<'s> {
    exchange: &'s NcclExchange,
    layout: &'s GradientBuckets,
    weight: f32,
    overlap: bool,
    buckets: MutexGuard<'s, Vec<CudaSlice<f32>>>,
    /// Which gradients have come.
    arrivals: Arrivals,
    /// Per bucket started, in order: events around its reduction on the reductions' stream.
    timing: Vec<(CudaEvent, CudaEvent)>,
    times: CommTimes,
}

impl NcclReducer<'_> {
    /// Starts the complete buckets (every bucket with `all`) in bucket order, each after the
    /// backend's stream has written it; returns the seconds spent starting them.
    fn start_ready(&mut self, all: bool) -> vgg_dist::Result<f64> {
        let started = Instant::now();
        let compute = self.exchange.backend.stream();
        while let Some(bucket) = self.buckets.get_mut(self.timing.len()) {
            let b = self.timing.len();
            if !(all || self.arrivals.full(b)) {
                break;
            }
            // Parameters the loss did not reach send zeros; a rank without images sends only zeros.
            for (shape, offset) in self.arrivals.absent(self.layout, b) {
                let mut part = bucket.slice_mut(offset..offset + shape.elements());
                compute
                    .memset_zeros(&mut part)
                    .map_err(step_error("zeroing a bucket"))?;
            }
            let written = compute
                .record_event(None)
                .map_err(step_error("recording an event"))?;
            let stream = &self.exchange.stream;
            stream
                .wait(&written)
                .map_err(step_error("ordering the streams"))?;
            let timed = Some(CUevent_flags::CU_EVENT_DEFAULT);
            let begin = stream
                .record_event(timed)
                .map_err(step_error("recording an event"))?;
            self.exchange
                .comm
                .all_reduce_in_place(bucket, &ReduceOp::Sum)
                .map_err(|e| {
                    DistError::Collective(format!("NCCL: ncclAllReduce failed: {:?}", e.0))
                })?;
            let end = stream
                .record_event(timed)
                .map_err(step_error("recording an event"))?;
            tracing::trace!(bucket = b, elements = bucket.len(), "ncclAllReduce");
            self.timing.push((begin, end));
        }
        let seconds = started.elapsed().as_secs_f64();
        self.times.exposed += seconds;
        Ok(seconds)
    }

    /// Waits until the reductions' stream has done everything queued on it, up to the timeout.
    fn wait_for_reductions(&self) -> vgg_dist::Result<CudaEvent> {
        let done = self
            .exchange
            .stream
            .record_event(None)
            .map_err(step_error("recording an event"))?;
        let start = Instant::now();
        while !done
            .try_is_complete()
            .map_err(step_error("waiting for the reductions"))?
        {
            if start.elapsed() > self.exchange.timeout {
                return Err(DistError::Timeout {
                    op: "NCCL allreduce",
                    rank: self.exchange.comm.rank(),
                    size: self.exchange.comm.world_size(),
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(done)
    }
}

impl GradientReducer<CudaBackend> for NcclReducer<'_> {
    fn add(
        &mut self,
        backend: &CudaBackend,
        name: &str,
        grad: &CudaTensor,
    ) -> vgg_dist::Result<()> {
        let (b, i) = self.arrivals.arrive(self.layout, name, grad.shape())?;
        if b < self.timing.len() {
            return Err(DistError::Layout(format!(
                "the gradient of '{name}' came after its bucket was sent"
            )));
        }
        let start = Instant::now();
        let (_, shape, offset) = &self.layout.members(b)[i];
        // This rank's share of the global batch's mean, applied before the sum.
        let scaled;
        let source = if self.weight == 1.0 {
            grad
        } else {
            scaled = backend.scale(grad, self.weight)?;
            &scaled
        };
        let mut part = self.buckets[b].slice_mut(*offset..*offset + shape.elements());
        backend
            .stream()
            .memcpy_dtod(&source.device_view(), &mut part)
            .map_err(step_error("copying a gradient into its bucket"))?;
        self.times.copies += start.elapsed().as_secs_f64();
        if self.overlap {
            self.times.in_backward += self.start_ready(false)?;
        }
        Ok(())
    }

    fn finish(
        &mut self,
        backend: &CudaBackend,
    ) -> vgg_dist::Result<(HashMap<String, CudaTensor>, CommTimes)> {
        self.start_ready(true)?;
        let start = Instant::now();
        let done = self.wait_for_reductions()?;
        backend
            .stream()
            .wait(&done)
            .map_err(step_error("ordering the streams"))?;
        for (begin, end) in self.timing.drain(..) {
            let ms = begin
                .elapsed_ms(&end)
                .map_err(step_error("timing a reduction"))?;
            self.times.total += f64::from(ms) / 1e3;
        }
        self.times.exposed += start.elapsed().as_secs_f64();
        let copy = Instant::now();
        let mut grads = HashMap::new();
        for (b, bucket) in self.buckets.iter().enumerate() {
            for (name, shape, offset) in self.layout.members(b) {
                let view = bucket.slice(*offset..*offset + shape.elements());
                grads.insert(name.clone(), backend.tensor_from_device(shape, &view)?);
            }
        }
        self.times.copies += copy.elapsed().as_secs_f64();
        Ok((grads, self.times))
    }
}
