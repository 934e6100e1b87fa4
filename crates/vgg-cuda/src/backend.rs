//! `vgg_tensor::Backend` on an NVIDIA GPU: cuDNN convolutions, cuBLAS matrix products and the
//! NVRTC kernels of `kernels.cu`, all queued in order on one stream.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx};
use vgg_tensor::{
    adam_corrections, argmax, check_argmax_rows, check_channel_bias, check_keep_prob, check_labels,
    check_reshape, check_row_bias, check_scalar, check_upload, matmul_dims, same_shape, AdamParams,
    Backend, Conv2dParams, ConvGeometry, DeviceTensor, Pool2dParams, PoolGeometry, Result, Shape,
    TensorError,
};

use crate::dnn::{ConvOp, Dnn};
use crate::memory::{BufferPool, DeviceBuffer};
use crate::{device_error, probe, CudaError};

const KERNELS: &str = include_str!("kernels.cu");
/// Threads per block of the elementwise kernels and of the per-row reductions (which size their
/// shared memory for it).
const BLOCK: u32 = 256;

/// How the backend computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaOptions {
    /// Which GPU.
    pub ordinal: usize,
    /// Let cuDNN round convolution inputs to TF32 on tensor cores (Ampere and later), as PyTorch
    /// does by default. Off for exact f32 results; matrix products always run in f32.
    pub allow_tf32: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            ordinal: 0,
            allow_tf32: true,
        }
    }
}

/// A tensor in GPU memory. Clones share the buffer.
#[derive(Clone)]
pub struct CudaTensor {
    shape: Shape,
    buf: Arc<DeviceBuffer>,
}

impl fmt::Debug for CudaTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaTensor({})", self.shape)
    }
}

impl DeviceTensor for CudaTensor {
    fn shape(&self) -> &Shape {
        &self.shape
    }
}

impl CudaTensor {
    fn slice(&self) -> &CudaSlice<f32> {
        self.buf.slice()
    }
}

/// Where each max-pool output came from: a flat index into its input plane per output.
#[derive(Clone, Debug)]
pub struct CudaPoolIndices {
    geometry: PoolGeometry,
    /// i32 indices stored in an f32 buffer (the kernels read them as int), so they are recycled
    /// with the activations.
    arg: CudaTensor,
}

struct Inner {
    name: String,
    ordinal: usize,
    allow_tf32: bool,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    dnn: Mutex<Dnn>,
    kernels: HashMap<&'static str, CudaFunction>,
    pool: Arc<BufferPool>,
}

/// The GPU backend. Cloning is cheap; clones share the stream, handles and buffer pool.
#[derive(Clone)]
pub struct CudaBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The kernels' names, as `kernels.cu` defines them.
pub(crate) const KERNEL_NAMES: [&str; 26] = [
    "fill",
    "bias_act_in_place",
    "add",
    "sub",
    "mul",
    "scale",
    "mul_scalar",
    "broadcast_scalar",
    "axpy",
    "relu",
    "relu_backward",
    "dropout",
    "add_channel_bias",
    "add_row_bias",
    "channel_bias_grad",
    "sum_rows",
    "reduce_sum",
    "softmax_rows",
    "softmax_cross_entropy",
    "softmax_rows_backward",
    "mean_rows",
    "cross_entropy_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "sgd_step",
    "adam_step",
];

/// Compiles `kernels.cu` to PTX with NVRTC. Needs only NVRTC, not a GPU.
pub fn compile_kernels() -> std::result::Result<Ptx, CudaError> {
    // SAFETY: only tries to dlopen NVRTC by its usual names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::LibrariesMissing {
            missing: vec!["NVRTC 13"],
        });
    }
    cudarc::nvrtc::compile_ptx_with_opts(
        KERNELS,
        CompileOptions {
            // The oldest architecture CUDA 13 supports; the driver compiles it for the GPU.
            arch: Some("compute_75"),
            ..Default::default()
        },
    )
    .map_err(|e| CudaError::Driver(format!("compiling the kernels with NVRTC: {e}")))
}

/// Blocks for a grid-stride kernel over `n` elements.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row (or channel).
fn per_row(rows: usize) -> Result<LaunchConfig> {
    let blocks = u32::try_from(rows).map_err(|_| TensorError::InvalidArgument {
        op: "cuda",
        message: format!("{rows} rows exceed one launch"),
    })?;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Queues kernel `$name` with `$args` (each a reference to a named value that outlives the launch).
macro_rules! launch {
    ($self:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let inner = &$self.inner;
        let mut builder = inner.stream.launch_builder(&inner.kernels[$name]);
        $( builder.arg($arg); )+
        // SAFETY: each kernel's parameters match `kernels.cu`, every buffer holds the elements the
        // kernel indexes (the shapes were checked), and the stream orders all access.
        unsafe { builder.launch($cfg) }.map_err(device_error($name))?;
    }};
}

impl CudaBackend {
    /// Sets up GPU `options.ordinal`: probes the libraries, creates the stream and the cuBLAS and
    /// cuDNN handles, and compiles the kernels. Fails with the reason when there is no usable GPU.
    pub fn new(options: CudaOptions) -> std::result::Result<CudaBackend, CudaError> {
        let device = probe(options.ordinal)?;
        let setup = |what: &str, e: String| CudaError::Driver(format!("{what}: {e}"));
        let ctx = device.context;
        // One stream orders every op, so cudarc's per-buffer events are not needed.
        // SAFETY: all buffers are used on this one stream only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| setup("cuBLAS", e.to_string()))?;
        let dnn = Dnn::new(stream.clone(), options.allow_tf32)
            .map_err(|e| setup("cuDNN", e.to_string()))?;
        let ptx = compile_kernels()?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| setup("loading the kernels", e.to_string()))?;
        let mut kernels = HashMap::new();
        for name in KERNEL_NAMES {
            let f = module
                .load_function(name)
                .map_err(|e| setup(name, e.to_string()))?;
            kernels.insert(name, f);
        }
        Ok(CudaBackend {
            inner: Arc::new(Inner {
                name: device.name,
                ordinal: device.ordinal,
                allow_tf32: options.allow_tf32,
                stream,
                blas,
                dnn: Mutex::new(dnn),
                kernels,
                pool: Arc::new(BufferPool::default()),
            }),
        })
    }

    /// Bytes of device memory held for reuse by later ops.
    pub fn cached_bytes(&self) -> usize {
        self.inner.pool.cached_bytes()
    }

    fn alloc(&self, shape: Shape) -> Result<(Shape, DeviceBuffer)> {
        let n = shape.checked_elements()?;
        let buf = self.inner.pool.take(&self.inner.stream, n)?;
        Ok((shape, buf))
    }

    fn tensor(shape: Shape, buf: DeviceBuffer) -> CudaTensor {
        CudaTensor {
            shape,
            buf: Arc::new(buf),
        }
    }

    /// A new tensor of `shape` filled by `f` with its buffer.
    fn build(
        &self,
        shape: Shape,
        f: impl FnOnce(&mut CudaSlice<f32>) -> Result<()>,
    ) -> Result<CudaTensor> {
        let (shape, mut buf) = self.alloc(shape)?;
        f(buf.slice_mut())?;
        Ok(Self::tensor(shape, buf))
    }

    /// The tensor's buffer for writing, copied first if another tensor shares it.
    fn unique<'a>(&self, t: &'a mut CudaTensor) -> Result<&'a mut CudaSlice<f32>> {
        if Arc::get_mut(&mut t.buf).is_none() {
            let (_, mut copy) = self.alloc(t.shape.clone())?;
            self.inner
                .stream
                .memcpy_dtod(t.slice(), copy.slice_mut())
                .map_err(device_error("copying a shared tensor"))?;
            t.buf = Arc::new(copy);
        }
        Ok(Arc::get_mut(&mut t.buf)
            .expect("unique after the copy")
            .slice_mut())
    }

    fn binary(&self, name: &'static str, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        same_shape(name, &a.shape, &b.shape)?;
        let n = a.shape.elements() as i64;
        self.build(a.shape.clone(), |out| {
            launch!(
                self,
                name,
                elementwise(n as usize),
                a.slice(),
                b.slice(),
                out,
                &n
            );
            Ok(())
        })
    }

    /// Sum (or half the sum of squares) of all elements as a scalar tensor, in f64.
    fn reduce(&self, x: &CudaTensor, square: bool) -> Result<CudaTensor> {
        let n = x.shape.elements() as i64;
        let (square, factor) = if square {
            (1i32, 0.5f64)
        } else {
            (0i32, 1.0f64)
        };
        self.build(Shape::scalar(), |out| {
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(
                self,
                "reduce_sum",
                cfg,
                x.slice(),
                out,
                &n,
                &square,
                &factor
            );
            Ok(())
        })
    }

    /// Class labels as i32 bit patterns in a pooled f32 buffer (the kernels read them as int).
    fn upload_labels(&self, labels: &[usize]) -> Result<CudaTensor> {
        let bits: Vec<f32> = labels.iter().map(|&l| f32::from_bits(l as u32)).collect();
        self.upload(&Shape::from([labels.len()]), &bits)
    }

    fn conv(&self, g: &ConvGeometry, op: ConvOp<'_>) -> Result<()> {
        self.inner
            .stream
            .context()
            .bind_to_thread()
            .map_err(device_error("binding the GPU to this thread"))?;
        let mut dnn = self.inner.dnn.lock().unwrap_or_else(|e| e.into_inner());
        dnn.run(g, op)
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type PoolIndices = CudaPoolIndices;

    fn name(&self) -> String {
        let i = &self.inner;
        let math = if i.allow_tf32 {
            "TF32 convolutions"
        } else {
            "f32"
        };
        format!("cuda:{} ({}, {math})", i.ordinal, i.name)
    }

    fn available_bytes(&self) -> Option<u64> {
        let (free, _total) = self.inner.stream.context().mem_get_info().ok()?;
        // Buffers held for reuse are free to this backend.
        Some(free as u64 + self.cached_bytes() as u64)
    }

    fn synchronize(&self) -> Result<()> {
        self.inner
            .stream
            .synchronize()
            .map_err(device_error("waiting for the GPU"))
    }

    fn upload(&self, shape: &Shape, data: &[f32]) -> Result<CudaTensor> {
        let n = check_upload(shape, data.len())?;
        self.build(shape.clone(), |out| {
            if n > 0 {
                let mut dst = out.slice_mut(0..n);
                self.inner
                    .stream
                    .memcpy_htod(data, &mut dst)
                    .map_err(device_error("upload"))?;
            }
            Ok(())
        })
    }

    fn download(&self, t: &CudaTensor) -> Result<Vec<f32>> {
        let n = t.shape.elements();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut host = vec![0.0f32; n];
        self.inner
            .stream
            .memcpy_dtoh(&t.slice().slice(0..n), &mut host)
            .map_err(device_error("download"))?;
        self.synchronize()?;
        Ok(host)
    }

    fn full(&self, shape: &Shape, value: f32) -> Result<CudaTensor> {
        let n = shape.checked_elements()? as i64;
        self.build(shape.clone(), |out| {
            launch!(self, "fill", elementwise(n as usize), out, &n, &value);
            Ok(())
        })
    }

    fn reshape(&self, t: &CudaTensor, shape: &Shape) -> Result<CudaTensor> {
        check_reshape(&t.shape, shape)?;
        Ok(CudaTensor {
            shape: shape.clone(),
            buf: t.buf.clone(),
        })
    }

    fn conv2d(&self, x: &CudaTensor, w: &CudaTensor, p: Conv2dParams) -> Result<CudaTensor> {
        let g = ConvGeometry::new(&x.shape, &w.shape, p)?;
        self.build(g.output_shape(), |y| {
            self.conv(
                &g,
                ConvOp::Forward {
                    x: x.slice(),
                    w: w.slice(),
                    y,
                },
            )
        })
    }

    fn conv2d_bias_act(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        b: &CudaTensor,
        p: Conv2dParams,
        relu: bool,
    ) -> Result<CudaTensor> {
        let g = ConvGeometry::new(&x.shape, &w.shape, p)?;
        g.check_bias("conv2d_bias_act", &w.shape, &b.shape)?;
        let mut y = self.conv2d(x, w, p)?;
        // Bias and ReLU in place on the fresh output: one pass over it.
        let n = y.shape.elements() as i64;
        let plane = (g.out_h * g.out_w) as i64;
        let (channels, relu) = (g.out_channels as i64, relu as i32);
        let out = self.unique(&mut y)?;
        launch!(
            self,
            "bias_act_in_place",
            elementwise(n as usize),
            out,
            b.slice(),
            &n,
            &plane,
            &channels,
            &relu
        );
        Ok(y)
    }

    fn conv2d_backward_input(
        &self,
        dy: &CudaTensor,
        w: &CudaTensor,
        input_shape: &Shape,
        p: Conv2dParams,
    ) -> Result<CudaTensor> {
        let g = ConvGeometry::new(input_shape, &w.shape, p)?;
        g.check_output("conv2d_backward_input", &dy.shape)?;
        self.build(input_shape.clone(), |dx| {
            self.conv(
                &g,
                ConvOp::BackwardData {
                    dy: dy.slice(),
                    w: w.slice(),
                    dx,
                },
            )
        })
    }

    fn conv2d_backward_weight(
        &self,
        x: &CudaTensor,
        dy: &CudaTensor,
        weight_shape: &Shape,
        p: Conv2dParams,
    ) -> Result<CudaTensor> {
        let g = ConvGeometry::new(&x.shape, weight_shape, p)?;
        g.check_output("conv2d_backward_weight", &dy.shape)?;
        self.build(weight_shape.clone(), |dw| {
            self.conv(
                &g,
                ConvOp::BackwardFilter {
                    x: x.slice(),
                    dy: dy.slice(),
                    dw,
                },
            )
        })
    }

    fn add_channel_bias(&self, x: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        let (_, c, h, w) = check_channel_bias("add_channel_bias", &x.shape, &b.shape)?;
        let n = x.shape.elements() as i64;
        let (plane, channels, relu) = ((h * w) as i64, c as i64, 0i32);
        self.build(x.shape.clone(), |out| {
            launch!(
                self,
                "add_channel_bias",
                elementwise(n as usize),
                x.slice(),
                b.slice(),
                out,
                &n,
                &plane,
                &channels,
                &relu
            );
            Ok(())
        })
    }

    fn channel_bias_grad(&self, dy: &CudaTensor) -> Result<CudaTensor> {
        let (n, c, h, w) = dy.shape.nchw("channel_bias_grad")?;
        let (batch, channels, plane) = (n as i64, c as i64, (h * w) as i64);
        self.build(Shape::from([c]), |db| {
            if c > 0 {
                launch!(
                    self,
                    "channel_bias_grad",
                    per_row(c)?,
                    dy.slice(),
                    db,
                    &batch,
                    &channels,
                    &plane
                );
            }
            Ok(())
        })
    }

    fn max_pool2d(&self, x: &CudaTensor, p: Pool2dParams) -> Result<(CudaTensor, CudaPoolIndices)> {
        let g = PoolGeometry::new(&x.shape, p)?;
        let out_shape = g.output_shape();
        let n = out_shape.elements();
        let (_, mut arg) = self.alloc(out_shape.clone())?;
        let planes = (g.batch * g.channels) as i64;
        let dims = [g.in_h, g.in_w, g.out_h, g.out_w, g.kernel, g.stride].map(|v| v as i64);
        let [in_h, in_w, out_h, out_w, kernel, stride] = dims;
        let y = self.build(out_shape.clone(), |y| {
            launch!(
                self,
                "max_pool2d",
                elementwise(n),
                x.slice(),
                y,
                arg.slice_mut(),
                &planes,
                &in_h,
                &in_w,
                &out_h,
                &out_w,
                &kernel,
                &stride
            );
            Ok(())
        })?;
        Ok((
            y,
            CudaPoolIndices {
                geometry: g,
                arg: Self::tensor(out_shape, arg),
            },
        ))
    }

    fn max_pool2d_backward(
        &self,
        dy: &CudaTensor,
        indices: &CudaPoolIndices,
        input_shape: &Shape,
    ) -> Result<CudaTensor> {
        let g = &indices.geometry;
        same_shape("max_pool2d_backward", &g.input_shape(), input_shape)?;
        same_shape("max_pool2d_backward", &dy.shape, &g.output_shape())?;
        let mut dx = self.full(input_shape, 0.0)?;
        let planes = (g.batch * g.channels) as i64;
        let (in_plane, out_plane) = ((g.in_h * g.in_w) as i64, (g.out_h * g.out_w) as i64);
        let n = dy.shape.elements();
        let out = self.unique(&mut dx)?;
        launch!(
            self,
            "max_pool2d_backward",
            elementwise(n),
            dy.slice(),
            indices.arg.slice(),
            out,
            &planes,
            &in_plane,
            &out_plane
        );
        Ok(dx)
    }

    fn matmul(&self, a: &CudaTensor, b: &CudaTensor, ta: bool, tb: bool) -> Result<CudaTensor> {
        let (m, n, k) = matmul_dims(&a.shape, &b.shape, ta, tb)?;
        let (_, ac) = a.shape.matrix("matmul")?;
        let (_, bc) = b.shape.matrix("matmul")?;
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| TensorError::InvalidArgument {
                op: "matmul",
                message: format!("dimension {v} is beyond cuBLAS's 32-bit sizes"),
            })
        };
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        // cuBLAS is column-major: a row-major C = op(A) op(B) is the column-major
        // C^T = op(B)^T op(A)^T, so B goes first and the row lengths are the leading dimensions.
        let cfg = GemmConfig {
            transa: op(tb),
            transb: op(ta),
            m: int(n)?,
            n: int(m)?,
            k: int(k)?,
            alpha: 1.0f32,
            lda: int(bc.max(1))?,
            ldb: int(ac.max(1))?,
            beta: 0.0f32,
            ldc: int(n.max(1))?,
        };
        self.build(Shape::from([m, n]), |c| {
            if m == 0 || n == 0 {
                return Ok(());
            }
            if k == 0 {
                let len = (m * n) as i64;
                let zero = 0.0f32;
                launch!(self, "fill", elementwise(m * n), c, &len, &zero);
                return Ok(());
            }
            self.inner
                .stream
                .context()
                .bind_to_thread()
                .map_err(device_error("binding the GPU to this thread"))?;
            // SAFETY: the dimensions and leading dimensions describe buffers of exactly these
            // shapes, checked by matmul_dims.
            unsafe { self.inner.blas.gemm(cfg, b.slice(), a.slice(), c) }
                .map_err(device_error("matmul (cuBLAS)"))
        })
    }

    fn add_row_bias(&self, x: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        let (_, f) = check_row_bias("add_row_bias", &x.shape, &b.shape)?;
        let n = x.shape.elements() as i64;
        let f = f.max(1) as i64;
        self.build(x.shape.clone(), |out| {
            launch!(
                self,
                "add_row_bias",
                elementwise(n as usize),
                x.slice(),
                b.slice(),
                out,
                &n,
                &f
            );
            Ok(())
        })
    }

    fn sum_rows(&self, x: &CudaTensor) -> Result<CudaTensor> {
        let (rows, f) = x.shape.matrix("sum_rows")?;
        let (rows, cols) = (rows as i64, f as i64);
        self.build(Shape::from([f]), |out| {
            launch!(
                self,
                "sum_rows",
                elementwise(f),
                x.slice(),
                out,
                &rows,
                &cols
            );
            Ok(())
        })
    }

    fn relu(&self, x: &CudaTensor) -> Result<CudaTensor> {
        let n = x.shape.elements() as i64;
        self.build(x.shape.clone(), |out| {
            launch!(self, "relu", elementwise(n as usize), x.slice(), out, &n);
            Ok(())
        })
    }

    fn relu_backward(&self, dy: &CudaTensor, y: &CudaTensor) -> Result<CudaTensor> {
        self.binary("relu_backward", dy, y)
    }

    fn dropout(&self, x: &CudaTensor, keep_prob: f32, seed: u64) -> Result<CudaTensor> {
        check_keep_prob("dropout", keep_prob)?;
        if keep_prob == 1.0 {
            return Ok(x.clone());
        }
        let n = x.shape.elements() as i64;
        self.build(x.shape.clone(), |out| {
            launch!(
                self,
                "dropout",
                elementwise(n as usize),
                x.slice(),
                out,
                &n,
                &keep_prob,
                &seed
            );
            Ok(())
        })
    }

    fn dropout_backward(&self, dy: &CudaTensor, keep_prob: f32, seed: u64) -> Result<CudaTensor> {
        // Linear in its input with a fixed mask: its own backward.
        self.dropout(dy, keep_prob, seed)
    }

    fn softmax_rows(&self, x: &CudaTensor) -> Result<CudaTensor> {
        let (rows, f) = x.shape.matrix("softmax_rows")?;
        let cols = f as i64;
        self.build(x.shape.clone(), |y| {
            if rows > 0 && f > 0 {
                launch!(self, "softmax_rows", per_row(rows)?, x.slice(), y, &cols);
            }
            Ok(())
        })
    }

    fn softmax_rows_backward(&self, dy: &CudaTensor, y: &CudaTensor) -> Result<CudaTensor> {
        same_shape("softmax_rows_backward", &dy.shape, &y.shape)?;
        let (rows, f) = y.shape.matrix("softmax_rows_backward")?;
        let cols = f as i64;
        self.build(y.shape.clone(), |dx| {
            if rows > 0 && f > 0 {
                launch!(
                    self,
                    "softmax_rows_backward",
                    per_row(rows)?,
                    dy.slice(),
                    y.slice(),
                    dx,
                    &cols
                );
            }
            Ok(())
        })
    }

    fn argmax_rows(&self, x: &CudaTensor) -> Result<Vec<usize>> {
        let (_, f) = check_argmax_rows(&x.shape)?;
        // Rows of logits are small: the host picks the maxima exactly as the CPU backend does.
        Ok(self.download(x)?.chunks(f).map(argmax).collect())
    }

    fn l2_loss(&self, x: &CudaTensor) -> Result<CudaTensor> {
        self.reduce(x, true)
    }

    fn cross_entropy(
        &self,
        logits: &CudaTensor,
        labels: &[usize],
    ) -> Result<(CudaTensor, CudaTensor)> {
        let (n, f) = check_labels("cross_entropy", &logits.shape, labels)?;
        let labels = self.upload_labels(labels)?;
        // Per-row losses in f64: two f32 slots each.
        let (_, mut row_loss) = self.alloc(Shape::from([2 * n]))?;
        let cols = f as i64;
        let rows = n as i64;
        let probs = self.build(logits.shape.clone(), |probs| {
            if n > 0 && f > 0 {
                launch!(
                    self,
                    "softmax_cross_entropy",
                    per_row(n)?,
                    logits.slice(),
                    probs,
                    &cols,
                    labels.slice(),
                    row_loss.slice_mut()
                );
            }
            Ok(())
        })?;
        let loss = self.build(Shape::scalar(), |out| {
            launch!(self, "mean_rows", per_row(1)?, row_loss.slice(), out, &rows);
            Ok(())
        })?;
        Ok((loss, probs))
    }

    fn cross_entropy_backward(
        &self,
        probs: &CudaTensor,
        labels: &[usize],
        g: &CudaTensor,
    ) -> Result<CudaTensor> {
        let (n, f) = check_labels("cross_entropy_backward", &probs.shape, labels)?;
        check_scalar("cross_entropy_backward", &g.shape)?;
        let labels = self.upload_labels(labels)?;
        let (rows, cols) = (n as i64, f as i64);
        self.build(probs.shape.clone(), |out| {
            launch!(
                self,
                "cross_entropy_backward",
                elementwise(n * f),
                probs.slice(),
                labels.slice(),
                g.slice(),
                out,
                &rows,
                &cols
            );
            Ok(())
        })
    }

    fn add(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        self.binary("add", a, b)
    }

    fn sub(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        self.binary("sub", a, b)
    }

    fn mul(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        self.binary("mul", a, b)
    }

    fn scale(&self, x: &CudaTensor, alpha: f32) -> Result<CudaTensor> {
        let n = x.shape.elements() as i64;
        self.build(x.shape.clone(), |out| {
            launch!(
                self,
                "scale",
                elementwise(n as usize),
                x.slice(),
                out,
                &n,
                &alpha
            );
            Ok(())
        })
    }

    fn axpy(&self, y: &mut CudaTensor, alpha: f32, x: &CudaTensor) -> Result<()> {
        same_shape("axpy", &y.shape, &x.shape)?;
        let n = x.shape.elements() as i64;
        let out = self.unique(y)?;
        launch!(
            self,
            "axpy",
            elementwise(n as usize),
            out,
            x.slice(),
            &n,
            &alpha
        );
        Ok(())
    }

    fn sgd_step(
        &self,
        param: &mut CudaTensor,
        velocity: &mut CudaTensor,
        grad: &CudaTensor,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()> {
        same_shape("sgd_step", &param.shape, &grad.shape)?;
        same_shape("sgd_step", &velocity.shape, &grad.shape)?;
        let n = grad.shape.elements() as i64;
        let p = self.unique(param)?;
        let v = self.unique(velocity)?;
        launch!(
            self,
            "sgd_step",
            elementwise(n as usize),
            p,
            v,
            grad.slice(),
            &n,
            &lr,
            &momentum,
            &weight_decay
        );
        Ok(())
    }

    fn adam_step(
        &self,
        param: &mut CudaTensor,
        m: &mut CudaTensor,
        v: &mut CudaTensor,
        grad: &CudaTensor,
        hp: AdamParams,
    ) -> Result<()> {
        for t in [&param.shape, &m.shape, &v.shape] {
            same_shape("adam_step", t, &grad.shape)?;
        }
        let (correction1, correction2) = adam_corrections(&hp)?;
        let n = grad.shape.elements() as i64;
        let p = self.unique(param)?;
        let m = self.unique(m)?;
        let v = self.unique(v)?;
        launch!(
            self,
            "adam_step",
            elementwise(n as usize),
            p,
            m,
            v,
            grad.slice(),
            &n,
            &hp.lr,
            &hp.beta1,
            &hp.beta2,
            &hp.eps,
            &hp.weight_decay,
            &correction1,
            &correction2
        );
        Ok(())
    }

    fn sum_all(&self, x: &CudaTensor) -> Result<CudaTensor> {
        self.reduce(x, false)
    }

    fn broadcast_scalar(&self, s: &CudaTensor, shape: &Shape) -> Result<CudaTensor> {
        check_scalar("broadcast_scalar", &s.shape)?;
        let n = shape.checked_elements()? as i64;
        self.build(shape.clone(), |out| {
            launch!(
                self,
                "broadcast_scalar",
                elementwise(n as usize),
                s.slice(),
                out,
                &n
            );
            Ok(())
        })
    }

    fn mul_scalar(&self, x: &CudaTensor, s: &CudaTensor) -> Result<CudaTensor> {
        check_scalar("mul_scalar", &s.shape)?;
        let n = x.shape.elements() as i64;
        self.build(x.shape.clone(), |out| {
            launch!(
                self,
                "mul_scalar",
                elementwise(n as usize),
                x.slice(),
                s.slice(),
                out,
                &n
            );
            Ok(())
        })
    }
}
