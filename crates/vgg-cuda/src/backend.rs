//! The CUDA backend itself: its tensors, set-up, buffers, kernel launches and the `Device`
//! primitives. The other primitives are in `elementwise.rs`, `layout.rs` and `layers.rs`, the
//! fused composites in `fused.rs`, the kernels in `kernels/`. Every op is queued in order on one
//! stream.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx};
use vgg_tensor::{
    check_reshape, check_upload, same_shape, ConvGeometry, Device, DeviceTensor, PoolGeometry,
    Result, Shape, TensorError,
};

use crate::dnn::{ConvOp, Dnn};
use crate::memory::{BufferPool, DeviceBuffer};
use crate::{device_error, probe, CudaError};

/// The kernels' source: the shared definitions, then each file of kernels.
const KERNELS: &str = concat!(
    include_str!("kernels/common.cuh"),
    include_str!("kernels/elementwise.cu"),
    include_str!("kernels/layout.cu"),
    include_str!("kernels/reduce.cu"),
    include_str!("kernels/nn.cu"),
);
/// Threads per block of the elementwise kernels and of the per-row reductions (which size their
/// shared memory for it).
pub(crate) const BLOCK: u32 = 256;

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
    pub(crate) shape: Shape,
    pub(crate) buf: Arc<DeviceBuffer>,
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
    pub(crate) fn slice(&self) -> &CudaSlice<f32> {
        self.buf.slice()
    }
}

/// Where each max-pool output came from: a flat index into its input plane per output.
#[derive(Clone, Debug)]
pub struct CudaPoolIndices {
    pub(crate) geometry: PoolGeometry,
    /// i32 indices stored in an f32 buffer (the kernels read them as int), so they are recycled
    /// with the activations.
    pub(crate) arg: CudaTensor,
}

pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) ordinal: usize,
    pub(crate) allow_tf32: bool,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    pub(crate) dnn: Mutex<Dnn>,
    pub(crate) kernels: HashMap<&'static str, CudaFunction>,
    pub(crate) pool: Arc<BufferPool>,
}

/// The GPU backend. Cloning is cheap; clones share the stream, handles and buffer pool.
#[derive(Clone)]
pub struct CudaBackend {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The kernels' names, as `kernels.cu` defines them.
pub(crate) const KERNEL_NAMES: [&str; 33] = [
    "unary_op",
    "binary_op",
    "gather_strided",
    "scatter_strided",
    "reduce_rows",
    "avg_pool2d",
    "avg_pool2d_backward",
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
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row (or channel).
pub(crate) fn per_row(rows: usize) -> Result<LaunchConfig> {
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
pub(crate) use launch;

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

    pub(crate) fn alloc(&self, shape: Shape) -> Result<(Shape, DeviceBuffer)> {
        let n = shape.checked_elements()?;
        let buf = self.inner.pool.take(&self.inner.stream, n)?;
        Ok((shape, buf))
    }

    pub(crate) fn tensor(shape: Shape, buf: DeviceBuffer) -> CudaTensor {
        CudaTensor {
            shape,
            buf: Arc::new(buf),
        }
    }

    /// A new tensor of `shape` filled by `f` with its buffer.
    pub(crate) fn build(
        &self,
        shape: Shape,
        f: impl FnOnce(&mut CudaSlice<f32>) -> Result<()>,
    ) -> Result<CudaTensor> {
        let (shape, mut buf) = self.alloc(shape)?;
        f(buf.slice_mut())?;
        Ok(Self::tensor(shape, buf))
    }

    /// The tensor's buffer for writing, copied first if another tensor shares it.
    pub(crate) fn unique<'a>(&self, t: &'a mut CudaTensor) -> Result<&'a mut CudaSlice<f32>> {
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

    /// A same-shape elementwise kernel `name` of two operands.
    pub(crate) fn same_shape_op(
        &self,
        name: &'static str,
        a: &CudaTensor,
        b: &CudaTensor,
    ) -> Result<CudaTensor> {
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
    pub(crate) fn sum_everything(&self, x: &CudaTensor, square: bool) -> Result<CudaTensor> {
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
    pub(crate) fn upload_labels(&self, labels: &[usize]) -> Result<CudaTensor> {
        let bits: Vec<f32> = labels.iter().map(|&l| f32::from_bits(l as u32)).collect();
        self.upload(&Shape::from([labels.len()]), &bits)
    }

    pub(crate) fn conv(&self, g: &ConvGeometry, op: ConvOp<'_>) -> Result<()> {
        self.inner
            .stream
            .context()
            .bind_to_thread()
            .map_err(device_error("binding the GPU to this thread"))?;
        let mut dnn = self.inner.dnn.lock().unwrap_or_else(|e| e.into_inner());
        dnn.run(g, op)
    }
}

impl Device for CudaBackend {
    type Tensor = CudaTensor;

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
}
