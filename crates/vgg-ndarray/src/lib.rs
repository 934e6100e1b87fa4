//! The CPU backend. Tensors are shared, recycled host buffers with a shape (`buffer`): clones
//! share the buffer, writes copy it only when shared, and ndarray views expose them. Every op runs
//! on the backend's own rayon pool, so `--threads N` bounds all the parallelism, the GEMM's included.

mod arena;
mod buffer;
pub mod config;
pub mod conv;
pub mod gemm;
pub mod generic;
pub mod pool;
mod simd;
pub mod skinny;
pub mod winograd;

use std::sync::Arc;

use rayon::prelude::*;
use vgg_tensor::{
    adam_corrections, argmax, broadcast_shapes, check_argmax_rows, check_axes, check_channel_bias,
    check_concat, check_keep_prob, check_labels, check_permutation, check_reshape, check_row_bias,
    check_scalar, check_slice, check_upload, matmul_dims, random, same_shape, AdamParams, Backend,
    BinaryOp, Conv2dParams, ConvGeometry, Convolution, Device, DeviceTensor, Elementwise, Layout,
    Matmul, Pool2dParams, PoolGeometry, Pooling, Reduce, ReduceOp, Result, Shape, TensorError,
    UnaryOp,
};

pub use crate::arena::{arena_usage, reset_arena_peak, ArenaUsage};
pub use crate::buffer::MemoryStats;
use crate::buffer::{Buffer, Pool};
pub use crate::config::{CacheSizes, ConvAlgorithm, CpuConfig, Isa, Tuning};
use crate::gemm::{sgemm, Mat, MatMut};

/// Elements per parallel task in elementwise kernels and reductions. Reductions sum their
/// chunks in order, so results do not depend on the thread count.
const CHUNK: usize = 1 << 15;

/// The most worker threads per core a backend accepts.
pub const MAX_THREADS_PER_CORE: usize = 8;

/// A tensor in host memory.
#[derive(Clone, Debug)]
pub struct CpuTensor {
    shape: Shape,
    buf: Arc<Buffer>,
}

impl CpuTensor {
    /// The values in row-major order.
    pub fn as_slice(&self) -> &[f32] {
        self.buf.as_slice()
    }

    /// Mutable values; copies the buffer first if another tensor shares it.
    fn as_mut_slice(&mut self) -> &mut [f32] {
        if Arc::get_mut(&mut self.buf).is_none() {
            let mut copy = Buffer::uninit(self.buf.pool(), self.shape.elements());
            copy.as_mut_slice().copy_from_slice(self.buf.as_slice());
            self.buf = Arc::new(copy);
        }
        Arc::get_mut(&mut self.buf)
            .expect("unique after the copy")
            .as_mut_slice()
    }

    /// The buffer as an ndarray view of this tensor's shape.
    pub fn view(&self) -> ndarray::ArrayViewD<'_, f32> {
        ndarray::ArrayViewD::from_shape(self.shape.dims(), self.as_slice())
            .expect("shape matches the buffer")
    }
}

/// A buffer being filled, as an ndarray view of `shape`.
fn view_mut<'a>(shape: &Shape, out: &'a mut [f32]) -> ndarray::ArrayViewMutD<'a, f32> {
    ndarray::ArrayViewMutD::from_shape(shape.dims(), out).expect("shape matches the buffer")
}

impl DeviceTensor for CpuTensor {
    fn shape(&self) -> &Shape {
        &self.shape
    }
}

/// Each pool output's maximum's position within its window, and the geometry it belongs to.
#[derive(Clone, Debug)]
pub struct CpuPoolIndices {
    geometry: PoolGeometry,
    indices: Arc<Vec<u8>>,
}

/// The CPU backend: a rayon pool of `threads` workers, a pool of recycled buffers, and the
/// tuning every kernel call is given.
#[derive(Clone)]
pub struct CpuBackend {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    buffers: Arc<Pool>,
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
            pool: Arc::new(pool),
            threads,
            buffers: Pool::new(),
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

    /// The vector unit of the GEMM crate's kernels, which choose it themselves from what the CPU
    /// has (AVX-512 only with this crate's `avx512-gemm` feature, on by default): a cap in
    /// `CpuConfig::isa` does not reach them, a build without the feature does.
    pub fn gemm_isa() -> Isa {
        let widest = Isa::detected();
        if cfg!(feature = "avx512-gemm") {
            widest
        } else {
            widest.min(Isa::Avx2)
        }
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
        self.pool.install(f)
    }

    /// `bias_act_backward` with the ReLU: dz = dy where y > 0, and the bias gradient, in one pass.
    /// `in_place`: dz is written into y's own buffer (which nothing else may share).
    fn bias_relu_backward(
        &self,
        dy: &CpuTensor,
        mut y: CpuTensor,
        in_place: bool,
    ) -> Result<(CpuTensor, CpuTensor)> {
        let (n, c, h, w) = dy.shape.nchw("bias_act_backward")?;
        same_shape("bias_act_backward", &dy.shape, &y.shape)?;
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
        let mut buf = Buffer::uninit(&self.buffers, shape.elements());
        self.run(|| fill(buf.as_mut_slice()));
        CpuTensor {
            shape,
            buf: Arc::new(buf),
        }
    }

    fn adopt(&self, shape: Shape, data: Vec<f32>) -> CpuTensor {
        debug_assert_eq!(shape.elements(), data.len());
        CpuTensor {
            shape,
            buf: Arc::new(Buffer::from_vec(&self.buffers, data)),
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

/// Sum of one plane in f64, over four interleaved accumulators: a fixed order (the same sum
/// wherever it is taken), and additions that do not each wait for the one before.
fn plane_sum(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut quads = x.chunks_exact(4);
    for q in &mut quads {
        for (a, &v) in acc.iter_mut().zip(q) {
            *a += v as f64;
        }
    }
    let tail: f64 = quads.remainder().iter().map(|&v| v as f64).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// dz = dy where y > 0, else 0 (NaN included), and each plane's sum, taken while the plane is in
/// cache (as `channel_bias_grad` sums). `y` None: dz holds y and is overwritten in place.
fn relu_mask_planes(
    dz: &mut [f32],
    dy: &[f32],
    y: Option<&[f32]>,
    plane: usize,
    plane_sums: &mut [f64],
) {
    dz.par_chunks_mut(plane)
        .zip(dy.par_chunks(plane))
        .zip(plane_sums.par_iter_mut())
        .enumerate()
        .for_each(|(i, ((dz, dy), sum))| {
            match y {
                Some(y) => {
                    let y = &y[i * plane..i * plane + dz.len()];
                    for ((z, &d), &y) in dz.iter_mut().zip(dy).zip(y) {
                        *z = if y > 0.0 { d } else { 0.0 };
                    }
                }
                None => {
                    for (z, &d) in dz.iter_mut().zip(dy) {
                        *z = if *z > 0.0 { d } else { 0.0 };
                    }
                }
            }
            *sum = plane_sum(dz);
        });
}

/// `db[ch]`: the sum over images of the plane sums (`[n, c]`) of channel `ch`, in image order.
fn per_channel(plane_sums: &[f64], n: usize, c: usize, db: &mut [f32]) {
    for (ch, db) in db.iter_mut().enumerate() {
        *db = (0..n).map(|img| plane_sums[img * c + ch]).sum::<f64>() as f32;
    }
}

/// Sum of f(x) in f64, chunk by chunk in a fixed order.
fn sum_f64(x: &[f32], f: impl Fn(f32) -> f64 + Sync) -> f64 {
    let partial: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| f(v)).sum::<f64>())
        .collect();
    partial.iter().sum()
}

/// Dropout: x/keep where element i is kept, 0 where dropped.
fn dropout_apply(x: &[f32], keep_prob: f32, seed: u64, out: &mut [f32]) {
    let scale = 1.0 / keep_prob;
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (o, x))| {
            let base = (c * CHUNK) as u64;
            for (i, (o, &x)) in o.iter_mut().zip(x).enumerate() {
                *o = if random::dropout_keeps(seed, base + i as u64, keep_prob) {
                    x * scale
                } else {
                    0.0
                };
            }
        });
}

impl Device for CpuBackend {
    type Tensor = CpuTensor;

    fn name(&self) -> String {
        let gemm = CpuBackend::gemm_isa();
        let gemm = if gemm == self.isa {
            String::new()
        } else {
            format!(", GEMM {}", gemm.name())
        };
        let algorithm = match self.config.convolution {
            ConvAlgorithm::Auto => "",
            ConvAlgorithm::Im2col => ", im2col only",
        };
        format!(
            "cpu ({} threads, {}{gemm}{algorithm})",
            self.threads,
            self.isa.name()
        )
    }

    fn execute<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    fn upload(&self, shape: &Shape, data: &[f32]) -> Result<CpuTensor> {
        check_upload(shape, data.len())?;
        Ok(self.build(shape.clone(), |out| out.copy_from_slice(data)))
    }

    fn download(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.as_slice().to_vec())
    }

    fn download_into(&self, t: &CpuTensor, out: &mut [f32]) -> Result<()> {
        vgg_tensor::check_download_into(t.shape(), out.len())?;
        out.copy_from_slice(t.as_slice());
        Ok(())
    }

    fn full(&self, shape: &Shape, value: f32) -> Result<CpuTensor> {
        shape.checked_elements()?;
        Ok(self.build(shape.clone(), |out| {
            out.par_chunks_mut(CHUNK).for_each(|c| c.fill(value))
        }))
    }

    fn random_normal(&self, shape: &Shape, mean: f32, std: f32, seed: u64) -> Result<CpuTensor> {
        shape.checked_elements()?;
        Ok(self.build(shape.clone(), |out| {
            out.par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(c, chunk)| {
                    random::fill_normal(chunk, seed, (c * CHUNK) as u64, mean, std)
                })
        }))
    }

    fn random_uniform(&self, shape: &Shape, low: f32, high: f32, seed: u64) -> Result<CpuTensor> {
        shape.checked_elements()?;
        Ok(self.build(shape.clone(), |out| {
            out.par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(c, chunk)| {
                    random::fill_uniform(chunk, seed, (c * CHUNK) as u64, low, high)
                })
        }))
    }

    fn reshape(&self, t: &CpuTensor, shape: &Shape) -> Result<CpuTensor> {
        check_reshape(&t.shape, shape)?;
        Ok(CpuTensor {
            shape: shape.clone(),
            buf: t.buf.clone(),
        })
    }
}

impl Elementwise for CpuBackend {
    fn unary(&self, op: UnaryOp, x: &CpuTensor) -> Result<CpuTensor> {
        if op == UnaryOp::Relu {
            return Ok(self.map(x, vgg_tensor::relu));
        }
        Ok(self.build(x.shape.clone(), |out| {
            generic::unary(op, x.view(), view_mut(&x.shape, out))
        }))
    }

    fn binary(&self, op: BinaryOp, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        let shape = broadcast_shapes(op.name(), &a.shape, &b.shape)?;
        shape.checked_elements()?;
        if a.shape == b.shape {
            return Ok(self.zip_map(a, b, move |a, b| op.apply(a, b)));
        }
        Ok(self.build(shape.clone(), |out| {
            generic::binary(op, a.view(), b.view(), view_mut(&shape, out))
        }))
    }
}

impl Reduce for CpuBackend {
    fn reduce(&self, op: ReduceOp, x: &CpuTensor, axes: &[usize]) -> Result<CpuTensor> {
        let shape = check_axes(op.name(), &x.shape, axes)?;
        Ok(self.build(shape, |out| generic::reduce(op, x.view(), axes, out)))
    }
}

impl Layout for CpuBackend {
    fn permute(&self, x: &CpuTensor, perm: &[usize]) -> Result<CpuTensor> {
        let shape = check_permutation("permute", &x.shape, perm)?;
        Ok(self.build(shape.clone(), |out| {
            generic::permute(x.view(), perm, view_mut(&shape, out))
        }))
    }

    fn slice(&self, x: &CpuTensor, axis: usize, start: usize, len: usize) -> Result<CpuTensor> {
        let shape = check_slice("slice", &x.shape, axis, start, len)?;
        Ok(self.build(shape.clone(), |out| {
            generic::slice(x.view(), axis, start, len, view_mut(&shape, out))
        }))
    }

    fn concat(&self, xs: &[&CpuTensor], axis: usize) -> Result<CpuTensor> {
        let shapes: Vec<&Shape> = xs.iter().map(|x| &x.shape).collect();
        let shape = check_concat("concat", &shapes, axis)?;
        shape.checked_elements()?;
        let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
        Ok(self.build(shape.clone(), |out| {
            generic::concat(&views, axis, view_mut(&shape, out))
        }))
    }
}

impl Matmul for CpuBackend {
    fn matmul(&self, a: &CpuTensor, b: &CpuTensor, ta: bool, tb: bool) -> Result<CpuTensor> {
        let (m, n, k) = matmul_dims(&a.shape, &b.shape, ta, tb)?;
        let (ar, ac) = a.shape.matrix("matmul")?;
        let (br, bc) = b.shape.matrix("matmul")?;
        let lhs = Mat::row_major(a.as_slice(), ar, ac);
        let rhs = Mat::row_major(b.as_slice(), br, bc);
        let lhs = if ta { lhs.t() } else { lhs };
        let rhs = if tb { rhs.t() } else { rhs };
        Ok(self.build(Shape::from([m, n]), |c| {
            // A linear layer's forward on a small batch reads a large weight once; its own
            // kernel does that faster than the GEMM.
            if m <= skinny::MAX_ROWS && !ta && tb && k > 0 {
                return skinny::a_bt(a.as_slice(), b.as_slice(), m, n, k, c);
            }
            let dst = MatMut {
                data: c,
                offset: 0,
                rows: m,
                cols: n,
                row_stride: n,
            };
            sgemm(dst, lhs, rhs, false, self.threads)
        }))
    }
}

impl Convolution for CpuBackend {
    fn conv2d(&self, x: &CpuTensor, w: &CpuTensor, p: Conv2dParams) -> Result<CpuTensor> {
        let g = ConvGeometry::new(&x.shape, &w.shape, p)?;
        Ok(self.build(g.output_shape(), |y| {
            conv::forward(x.as_slice(), w.as_slice(), &g, &self.tuning, y)
        }))
    }

    fn conv2d_backward_input(
        &self,
        dy: &CpuTensor,
        w: &CpuTensor,
        input_shape: &Shape,
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        let g = ConvGeometry::new(input_shape, &w.shape, p)?;
        g.check_output("conv2d_backward_input", &dy.shape)?;
        Ok(self.build(input_shape.clone(), |dx| {
            conv::backward_input(dy.as_slice(), w.as_slice(), &g, &self.tuning, dx)
        }))
    }

    fn conv2d_backward_weight(
        &self,
        x: &CpuTensor,
        dy: &CpuTensor,
        weight_shape: &Shape,
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        let g = ConvGeometry::new(&x.shape, weight_shape, p)?;
        g.check_output("conv2d_backward_weight", &dy.shape)?;
        let dw = self.run(|| conv::backward_weight(x.as_slice(), dy.as_slice(), &g, &self.tuning));
        Ok(self.adopt(weight_shape.clone(), dw))
    }
}

impl Pooling for CpuBackend {
    type PoolIndices = CpuPoolIndices;

    fn max_pool2d(&self, x: &CpuTensor, p: Pool2dParams) -> Result<(CpuTensor, CpuPoolIndices)> {
        let g = PoolGeometry::new(&x.shape, p)?;
        if g.kernel > pool::MAX_WINDOW {
            return Err(TensorError::InvalidArgument {
                op: "max_pool2d",
                message: format!(
                    "{0}x{0} windows are not supported; the largest is 16x16",
                    g.kernel
                ),
            });
        }
        let mut indices = vec![0u8; g.output_shape().elements()];
        let y = self.build(g.output_shape(), |y| {
            pool::forward(x.as_slice(), &g, y, &mut indices)
        });
        Ok((
            y,
            CpuPoolIndices {
                geometry: g,
                indices: Arc::new(indices),
            },
        ))
    }

    fn max_pool2d_backward(
        &self,
        dy: &CpuTensor,
        indices: &CpuPoolIndices,
        input_shape: &Shape,
    ) -> Result<CpuTensor> {
        let g = &indices.geometry;
        same_shape("max_pool2d_backward", &g.input_shape(), input_shape)?;
        same_shape("max_pool2d_backward", &dy.shape, &g.output_shape())?;
        Ok(self.build(input_shape.clone(), |dx| {
            pool::backward(dy.as_slice(), &indices.indices, g, dx)
        }))
    }

    fn avg_pool2d(&self, x: &CpuTensor, p: Pool2dParams) -> Result<CpuTensor> {
        let g = PoolGeometry::for_op("avg_pool2d", &x.shape, p)?;
        Ok(self.build(g.output_shape(), |y| pool::avg_forward(x.as_slice(), &g, y)))
    }

    fn avg_pool2d_backward(
        &self,
        dy: &CpuTensor,
        input_shape: &Shape,
        p: Pool2dParams,
    ) -> Result<CpuTensor> {
        let g = PoolGeometry::for_op("avg_pool2d_backward", input_shape, p)?;
        same_shape("avg_pool2d_backward", &dy.shape, &g.output_shape())?;
        Ok(self.build(input_shape.clone(), |dx| {
            pool::avg_backward(dy.as_slice(), &g, dx)
        }))
    }
}

impl Backend for CpuBackend {
    fn conv2d_bias_act(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        b: &CpuTensor,
        p: Conv2dParams,
        relu: bool,
    ) -> Result<CpuTensor> {
        let g = ConvGeometry::new(&x.shape, &w.shape, p)?;
        g.check_bias("conv2d_bias_act", &w.shape, &b.shape)?;
        Ok(self.build(g.output_shape(), |y| {
            if conv::use_winograd(&g, false, &self.tuning) {
                // Fixed weights (inference, benchmarks) keep their transform between calls,
                // where it is worth its memory.
                let keep = winograd::worth_keeping_weights(&g);
                let u = w
                    .buf
                    .derived((g.out_channels, g.in_channels), keep, |lasting| {
                        let (k, c) = (g.out_channels, g.in_channels);
                        winograd::transform_weights(w.as_slice(), k, c, lasting)
                    });
                winograd::forward_transformed(
                    x.as_slice(),
                    &u,
                    Some(b.as_slice()),
                    relu,
                    &g,
                    &self.tuning,
                    y,
                )
            } else {
                conv::forward_fused(
                    x.as_slice(),
                    w.as_slice(),
                    Some(b.as_slice()),
                    relu,
                    &g,
                    &self.tuning,
                    y,
                )
            }
        }))
    }

    fn add_channel_bias(&self, x: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        let (_, c, h, w) = check_channel_bias("add_channel_bias", &x.shape, &b.shape)?;
        let plane = (h * w).max(1);
        let bias = b.as_slice();
        Ok(self.build(x.shape.clone(), |y| {
            y.par_chunks_mut(plane)
                .zip(x.as_slice().par_chunks(plane))
                .enumerate()
                .for_each(|(i, (y, x))| {
                    let b = bias[i % c];
                    y.iter_mut().zip(x).for_each(|(y, &x)| *y = x + b);
                })
        }))
    }

    fn channel_bias_grad(&self, dy: &CpuTensor) -> Result<CpuTensor> {
        let (n, c, h, w) = dy.shape.nchw("channel_bias_grad")?;
        let plane = h * w;
        let data = dy.as_slice();
        let plane_sums: Vec<f64> = if plane == 0 {
            vec![0.0; n * c]
        } else {
            data.par_chunks(plane).map(plane_sum).collect()
        };
        Ok(self.build(Shape::from([c]), |db| per_channel(&plane_sums, n, c, db)))
    }

    fn add_row_bias(&self, x: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        let (_, f) = check_row_bias("add_row_bias", &x.shape, &b.shape)?;
        let bias = b.as_slice();
        Ok(self.build(x.shape.clone(), |y| {
            if f > 0 {
                y.par_chunks_mut(f)
                    .zip(x.as_slice().par_chunks(f))
                    .for_each(|(y, x)| {
                        for ((y, &x), &b) in y.iter_mut().zip(x).zip(bias) {
                            *y = x + b;
                        }
                    })
            }
        }))
    }

    fn sum_rows(&self, x: &CpuTensor) -> Result<CpuTensor> {
        let (n, f) = x.shape.matrix("sum_rows")?;
        let data = x.as_slice();
        Ok(self.build(Shape::from([f]), |sums| {
            sums.par_iter_mut()
                .enumerate()
                .for_each(|(j, s)| *s = (0..n).map(|i| data[i * f + j] as f64).sum::<f64>() as f32)
        }))
    }

    fn relu(&self, x: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.map(x, vgg_tensor::relu))
    }

    fn bias_act_backward(
        &self,
        dy: &CpuTensor,
        y: Option<&CpuTensor>,
    ) -> Result<(CpuTensor, CpuTensor)> {
        dy.shape.nchw("bias_act_backward")?;
        let Some(y) = y else {
            // No ReLU: dz is dy itself, and one pass sums it.
            return Ok((dy.clone(), self.channel_bias_grad(dy)?));
        };
        self.bias_relu_backward(dy, y.clone(), false)
    }

    fn bias_relu_backward_consuming(
        &self,
        dy: &CpuTensor,
        mut y: CpuTensor,
    ) -> Result<(CpuTensor, CpuTensor)> {
        let unshared = Arc::get_mut(&mut y.buf).is_some();
        self.bias_relu_backward(dy, y, unshared)
    }

    fn relu_backward(&self, dy: &CpuTensor, y: &CpuTensor) -> Result<CpuTensor> {
        same_shape("relu_backward", &dy.shape, &y.shape)?;
        Ok(self.zip_map(dy, y, |d, y| if y > 0.0 { d } else { 0.0 }))
    }

    fn dropout(&self, x: &CpuTensor, keep_prob: f32, seed: u64) -> Result<CpuTensor> {
        check_keep_prob("dropout", keep_prob)?;
        if keep_prob == 1.0 {
            return Ok(x.clone());
        }
        Ok(self.build(x.shape.clone(), |out| {
            dropout_apply(x.as_slice(), keep_prob, seed, out)
        }))
    }

    fn dropout_backward(&self, dy: &CpuTensor, keep_prob: f32, seed: u64) -> Result<CpuTensor> {
        // Dropout is linear in its input with a fixed mask, so its backward is itself.
        self.dropout(dy, keep_prob, seed)
    }

    fn softmax_rows(&self, x: &CpuTensor) -> Result<CpuTensor> {
        let (_, f) = x.shape.matrix("softmax_rows")?;
        Ok(self.build(x.shape.clone(), |y| {
            y.copy_from_slice(x.as_slice());
            if f > 0 {
                y.par_chunks_mut(f).for_each(softmax_in_place);
            }
        }))
    }

    fn softmax_rows_backward(&self, dy: &CpuTensor, y: &CpuTensor) -> Result<CpuTensor> {
        same_shape("softmax_rows_backward", &dy.shape, &y.shape)?;
        let (_, f) = y.shape.matrix("softmax_rows_backward")?;
        Ok(self.build(y.shape.clone(), |dx| {
            if f > 0 {
                dx.par_chunks_mut(f)
                    .zip(dy.as_slice().par_chunks(f).zip(y.as_slice().par_chunks(f)))
                    .for_each(|(dx, (dy, y))| {
                        let dot: f64 = dy.iter().zip(y).map(|(&d, &y)| d as f64 * y as f64).sum();
                        for ((dx, &d), &y) in dx.iter_mut().zip(dy).zip(y) {
                            *dx = y * (d - dot as f32);
                        }
                    })
            }
        }))
    }

    fn argmax_rows(&self, x: &CpuTensor) -> Result<Vec<usize>> {
        let (_, f) = check_argmax_rows(&x.shape)?;
        Ok(x.as_slice().chunks(f).map(argmax).collect())
    }

    fn l2_loss(&self, x: &CpuTensor) -> Result<CpuTensor> {
        let s = self.run(|| sum_f64(x.as_slice(), |v| (v as f64) * (v as f64)));
        Ok(self.adopt(Shape::scalar(), vec![(s / 2.0) as f32]))
    }

    fn cross_entropy(
        &self,
        logits: &CpuTensor,
        labels: &[usize],
    ) -> Result<(CpuTensor, CpuTensor)> {
        let (n, f) = check_labels("cross_entropy", &logits.shape, labels)?;
        let mut losses = Vec::new();
        // Per row: log(sum exp(x - max)) + max - x[label], computed before the softmax overwrites x.
        let probs = self.build(logits.shape.clone(), |probs| {
            probs.copy_from_slice(logits.as_slice());
            losses = probs
                .par_chunks_mut(f)
                .zip(labels.par_iter())
                .map(|(row, &label)| {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let log_sum = row
                        .iter()
                        .map(|&v| ((v - max) as f64).exp())
                        .sum::<f64>()
                        .ln();
                    let loss = log_sum + max as f64 - row[label] as f64;
                    softmax_in_place(row);
                    loss
                })
                .collect::<Vec<f64>>();
        });
        let mean = losses.iter().sum::<f64>() / n as f64;
        Ok((self.adopt(Shape::scalar(), vec![mean as f32]), probs))
    }

    fn cross_entropy_backward(
        &self,
        probs: &CpuTensor,
        labels: &[usize],
        g: &CpuTensor,
    ) -> Result<CpuTensor> {
        let (n, f) = check_labels("cross_entropy_backward", &probs.shape, labels)?;
        check_scalar("cross_entropy_backward", &g.shape)?;
        let scale = g.as_slice()[0] / n as f32;
        Ok(self.build(probs.shape.clone(), |d| {
            d.copy_from_slice(probs.as_slice());
            for (row, &label) in d.chunks_mut(f).zip(labels) {
                row[label] -= 1.0;
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }))
    }

    fn add(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        if a.shape != b.shape {
            return self.binary(BinaryOp::Add, a, b);
        }
        Ok(self.zip_map(a, b, |a, b| a + b))
    }

    fn sub(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        if a.shape != b.shape {
            return self.binary(BinaryOp::Sub, a, b);
        }
        Ok(self.zip_map(a, b, |a, b| a - b))
    }

    fn mul(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        if a.shape != b.shape {
            return self.binary(BinaryOp::Mul, a, b);
        }
        Ok(self.zip_map(a, b, |a, b| a * b))
    }

    fn scale(&self, x: &CpuTensor, alpha: f32) -> Result<CpuTensor> {
        Ok(self.map(x, |v| v * alpha))
    }

    fn axpy(&self, y: &mut CpuTensor, alpha: f32, x: &CpuTensor) -> Result<()> {
        same_shape("axpy", &y.shape, &x.shape)?;
        let pool = self.pool.clone();
        let ys = y.as_mut_slice();
        pool.install(|| {
            ys.par_chunks_mut(CHUNK)
                .zip(x.as_slice().par_chunks(CHUNK))
                .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y += alpha * x))
        });
        Ok(())
    }

    fn sgd_step(
        &self,
        param: &mut CpuTensor,
        velocity: &mut CpuTensor,
        grad: &CpuTensor,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()> {
        same_shape("sgd_step", &param.shape, &grad.shape)?;
        same_shape("sgd_step", &velocity.shape, &grad.shape)?;
        let pool = self.pool.clone();
        let (p, v) = (param.as_mut_slice(), velocity.as_mut_slice());
        pool.install(|| {
            p.par_chunks_mut(CHUNK)
                .zip(v.par_chunks_mut(CHUNK))
                .zip(grad.as_slice().par_chunks(CHUNK))
                .for_each(|((p, v), g)| {
                    for ((p, v), &g) in p.iter_mut().zip(v).zip(g) {
                        *v = momentum * *v + g + weight_decay * *p;
                        *p -= lr * *v;
                    }
                })
        });
        Ok(())
    }

    fn adam_step(
        &self,
        param: &mut CpuTensor,
        m: &mut CpuTensor,
        v: &mut CpuTensor,
        grad: &CpuTensor,
        hp: AdamParams,
    ) -> Result<()> {
        for t in [&param.shape, &m.shape, &v.shape] {
            same_shape("adam_step", t, &grad.shape)?;
        }
        let (correction1, correction2) = adam_corrections(&hp)?;
        let pool = self.pool.clone();
        let (p, m, v) = (param.as_mut_slice(), m.as_mut_slice(), v.as_mut_slice());
        pool.install(|| {
            p.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .zip(grad.as_slice().par_chunks(CHUNK))
                .for_each(|((p, (m, v)), g)| {
                    for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                        let g = g + hp.weight_decay * *p;
                        *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
                        *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
                        let m_hat = *m / correction1;
                        let v_hat = *v / correction2;
                        *p -= hp.lr * m_hat / (v_hat.sqrt() + hp.eps);
                    }
                })
        });
        Ok(())
    }

    fn sum_all(&self, x: &CpuTensor) -> Result<CpuTensor> {
        let s = self.run(|| sum_f64(x.as_slice(), |v| v as f64));
        Ok(self.adopt(Shape::scalar(), vec![s as f32]))
    }

    fn broadcast_scalar(&self, s: &CpuTensor, shape: &Shape) -> Result<CpuTensor> {
        check_scalar("broadcast_scalar", &s.shape)?;
        self.full(shape, s.as_slice()[0])
    }

    fn mul_scalar(&self, x: &CpuTensor, s: &CpuTensor) -> Result<CpuTensor> {
        check_scalar("mul_scalar", &s.shape)?;
        self.scale(x, s.as_slice()[0])
    }
}

/// Numerically stable softmax of one row, in place.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}
