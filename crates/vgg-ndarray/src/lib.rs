//! The CPU backend. Tensors are shared, recycled host buffers with a shape (`buffer`): clones
//! share the buffer, writes copy it only when shared, and ndarray views expose them. Every op runs
//! on the backend's own rayon pool, so `--threads N` bounds all the parallelism, the GEMM's included.

mod arena;
pub mod bf16;
mod buffer;
pub mod config;
pub mod conv;
pub mod gemm;
pub mod generic;
pub mod linear_grad;
mod lone_rows;
pub mod pooling;
mod simd;
pub mod skinny;

mod backend;

pub use crate::arena::{arena_usage, reset_arena_peak, ArenaUsage};
pub use crate::backend::{CpuBackend, CpuPoolIndices, CpuTensor};
pub use crate::buffer::MemoryStats;
pub use crate::config::{Bf16Unit, CacheSizes, ConvAlgorithm, CpuConfig, Isa, Precision, Tuning};

/// Elements per parallel task in elementwise kernels and reductions. Reductions sum their
/// chunks in order, so results do not depend on the thread count.
const CHUNK: usize = 1 << 15;

/// The most worker threads per core a backend accepts.
pub const MAX_THREADS_PER_CORE: usize = 8;
