//! The CPU backend: its worker threads, buffer accounting and tuning, and the helpers every
//! trait's kernels use to make and fill tensors; one file per trait beside it, as in vgg-cuda.

mod convolution;
mod device;
mod elementwise;
mod fused;
mod kernels;
mod layout;
mod matmul;
mod pooling;
mod reduce;
mod tensor;

pub use tensor::{CpuPoolIndices, CpuTensor};

use std::sync::Arc;

use rayon::prelude::*;
use vgg_tensor::{Result, Shape, TensorError};

use crate::arena::{Memory, Pool};
use crate::buffer::MemoryStats;
use crate::buffer::{Accounting, Buffer};
use crate::config::{CpuConfig, Isa, Tuning};

use crate::{simd, CHUNK, MAX_THREADS_PER_CORE};
use kernels::*;

/// The CPU backend: a rayon thread pool of `threads` workers, the accounting of its buffers, and the
/// tuning every kernel call is given.
#[derive(Clone)]
pub struct CpuBackend {
    workers: Arc<rayon::ThreadPool>,
    threads: usize,
    buffers: Arc<Accounting>,
    config: CpuConfig,
    isa: Isa,
    tuning: Tuning,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("threads", &self.threads)
            .field("isa", &self.isa)
            .field("tuning", &self.tuning)
            .finish()
    }
}

impl CpuBackend {
    /// A backend with `threads` workers; 0 means one per available core. More than
    /// `MAX_THREADS_PER_CORE` per core is refused: it only slows every op down, and starting
    /// many thousands of threads takes minutes.
    pub fn new(threads: usize) -> Result<CpuBackend> {
        CpuBackend::with_config(CpuConfig::detect(threads))
    }

    /// A backend as `config` says (threads as for `new`), refusing an instruction set the CPU
    /// lacks.
    pub fn with_config(config: CpuConfig) -> Result<CpuBackend> {
        let threads = config.threads;
        let isa = config.kernel_isa()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let most = cores.saturating_mul(MAX_THREADS_PER_CORE);
        if threads > most {
            return Err(TensorError::InvalidArgument {
                op: "CpuBackend::new",
                message: format!(
                    "{threads} threads requested, but this machine has {cores} cores: use at most {most} (0 means one per core)"
                ),
            });
        }
        let threads = if threads == 0 { cores } else { threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("vgg-cpu-{i}"))
            // Every kernel runs on these workers, so the cap holds for all of this backend's.
            .start_handler(move |_| simd::cap_this_thread(isa))
            .build()
            .map_err(|e| TensorError::Device(format!("cannot start {threads} CPU threads: {e}")))?;
        let config = CpuConfig { threads, ..config };
        Ok(CpuBackend {
            workers: Arc::new(pool),
            threads,
            buffers: Accounting::new(),
            config,
            isa,
            tuning: Tuning::of(&config),
        })
    }

    /// What the backend was configured with (threads resolved).
    pub fn config(&self) -> &CpuConfig {
        &self.config
    }

    /// The sizes and choices its kernels are given.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// The widest vector unit our kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The vector unit of the GEMM crate's kernels (`Isa::of_gemm`).
    pub fn gemm_isa() -> Isa {
        Isa::of_gemm()
    }

    /// The instruction set kernels see on this backend's workers (for tests of the cap).
    pub fn worker_isa(&self) -> Isa {
        self.run(simd::level)
    }

    /// The number of threads the kernels use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Live, peak and cached bytes of this backend's tensors.
    pub fn memory_stats(&self) -> MemoryStats {
        self.buffers.stats()
    }

    /// Starts a new peak measurement from the bytes alive now.
    pub fn reset_peak_memory(&self) {
        self.buffers.reset_peak()
    }

    /// Hands the freed memory kept for reuse back to the OS (the arena is shared by every CPU
    /// backend in the process).
    pub fn trim_cache(&self) {
        self.buffers.trim()
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.workers.install(f)
    }

    /// `bias_act_backward` with the ReLU: dz = dy where y > 0, and the bias gradient, in one pass.
    /// `in_place`: dz is written into y's own buffer (which nothing else may share).
    fn bias_relu_backward(
        &self,
        dy: &CpuTensor,
        mut y: CpuTensor,
        in_place: bool,
        (n, c, h, w): vgg_tensor::fused::Nchw,
    ) -> Result<(CpuTensor, CpuTensor)> {
        let plane = (h * w).max(1);
        let mut plane_sums = vec![0.0f64; n * c];
        let dz = if in_place {
            let dz = y.as_mut_slice();
            self.run(|| relu_mask_planes(dz, dy.as_slice(), None, plane, &mut plane_sums));
            y
        } else {
            self.build(dy.shape.clone(), |dz| {
                relu_mask_planes(
                    dz,
                    dy.as_slice(),
                    Some(y.as_slice()),
                    plane,
                    &mut plane_sums,
                )
            })
        };
        let db = self.build(Shape::from([c]), |db| per_channel(&plane_sums, n, c, db));
        Ok((dz, db))
    }

    /// A tensor of `shape` whose values `fill` writes, all of them.
    fn build(&self, shape: Shape, fill: impl FnOnce(&mut [f32]) + Send) -> CpuTensor {
        self.build_in(Pool::Transient, shape, fill)
    }

    /// `build`, the storage from `pool`'s region of the arena.
    fn build_in(
        &self,
        pool: Pool,
        shape: Shape,
        fill: impl FnOnce(&mut [f32]) + Send,
    ) -> CpuTensor {
        let mut buf = Buffer::uninit_in(&self.buffers, shape.elements(), pool);
        self.run(|| fill(buf.as_mut_slice()));
        CpuTensor {
            shape,
            buf: Arc::new(buf),
        }
    }

    fn adopt(&self, shape: Shape, data: impl Into<Memory>) -> CpuTensor {
        let data = data.into();
        debug_assert_eq!(shape.elements(), data.len());
        CpuTensor {
            shape,
            buf: Arc::new(Buffer::adopt(&self.buffers, data)),
        }
    }

    fn map(&self, x: &CpuTensor, f: impl Fn(f32) -> f32 + Sync + Send) -> CpuTensor {
        self.build(x.shape.clone(), |out| {
            out.par_chunks_mut(CHUNK)
                .zip(x.as_slice().par_chunks(CHUNK))
                .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x)))
        })
    }

    fn zip_map(
        &self,
        a: &CpuTensor,
        b: &CpuTensor,
        f: impl Fn(f32, f32) -> f32 + Sync + Send,
    ) -> CpuTensor {
        self.build(a.shape.clone(), |out| {
            out.par_chunks_mut(CHUNK)
                .zip(
                    a.as_slice()
                        .par_chunks(CHUNK)
                        .zip(b.as_slice().par_chunks(CHUNK)),
                )
                .for_each(|(o, (a, b))| {
                    for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                        *o = f(a, b);
                    }
                })
        })
    }
}
