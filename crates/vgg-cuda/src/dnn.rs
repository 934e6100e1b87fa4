//! Convolutions and their gradients through cuDNN. Each shape's descriptors and algorithms are
//! chosen once and cached with one shared workspace, so a step after the first only launches.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cudnn::{
    sys::{
        cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdFilterAlgo_t, cudnnConvolutionFwdAlgo_t,
        cudnnConvolutionMode_t, cudnnMathType_t, cudnnTensorFormat_t,
    },
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnError,
    FilterDescriptor, TensorDescriptor,
};
use cudarc::driver::{CudaSlice, CudaStream};
use vgg_tensor::{ConvGeometry, Result, TensorError};

use crate::device_error;

/// One convolution shape's descriptors and, once asked for, its algorithms and workspace sizes.
struct ConvPlan {
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
    conv: ConvDescriptor<f32>,
    forward: Option<(cudnnConvolutionFwdAlgo_t, usize)>,
    backward_data: Option<(cudnnConvolutionBwdDataAlgo_t, usize)>,
    backward_filter: Option<(cudnnConvolutionBwdFilterAlgo_t, usize)>,
}

/// Which gradient or product a launch computes.
pub(crate) enum ConvOp<'a> {
    /// y = conv(x, w)
    Forward {
        x: &'a CudaSlice<f32>,
        w: &'a CudaSlice<f32>,
        y: &'a mut CudaSlice<f32>,
    },
    /// dx from dy and w
    BackwardData {
        dy: &'a CudaSlice<f32>,
        w: &'a CudaSlice<f32>,
        dx: &'a mut CudaSlice<f32>,
    },
    /// dw from x and dy
    BackwardFilter {
        x: &'a CudaSlice<f32>,
        dy: &'a CudaSlice<f32>,
        dw: &'a mut CudaSlice<f32>,
    },
}

type Key = [usize; 9];

fn key(g: &ConvGeometry) -> Key {
    [
        g.batch,
        g.in_channels,
        g.in_h,
        g.in_w,
        g.out_channels,
        g.kernel_h,
        g.kernel_w,
        g.stride,
        g.padding,
    ]
}

/// The cuDNN handle and everything cached for it. cuDNN handles and descriptors must not be used
/// from two threads at once: the backend keeps this behind a mutex.
pub(crate) struct Dnn {
    handle: Arc<Cudnn>,
    stream: Arc<CudaStream>,
    plans: HashMap<Key, ConvPlan>,
    workspace: Option<CudaSlice<u8>>,
    allow_tf32: bool,
}

// SAFETY: `Dnn` is only reached through the backend's mutex, so one thread at a time uses the
// handle and its descriptors, which is what cuDNN requires; the stream they run on is Send+Sync.
unsafe impl Send for Dnn {}

fn dims(values: [usize; 4]) -> Result<[i32; 4]> {
    let mut out = [0i32; 4];
    for (o, v) in out.iter_mut().zip(values) {
        *o = i32::try_from(v).map_err(|_| TensorError::InvalidArgument {
            op: "conv2d",
            message: format!("dimension {v} is beyond cuDNN's 32-bit sizes"),
        })?;
    }
    Ok(out)
}

impl Dnn {
    pub(crate) fn new(stream: Arc<CudaStream>, allow_tf32: bool) -> Result<Dnn> {
        Ok(Dnn {
            handle: Cudnn::new(stream.clone())
                .map_err(device_error("creating the cuDNN handle"))?,
            stream,
            plans: HashMap::new(),
            workspace: None,
            allow_tf32,
        })
    }

    fn plan(&mut self, g: &ConvGeometry) -> Result<()> {
        let key = key(g);
        if !self.plans.contains_key(&key) {
            let err = device_error("describing a convolution to cuDNN");
            let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
            let h = &self.handle;
            let x = h
                .create_4d_tensor(nchw, dims([g.batch, g.in_channels, g.in_h, g.in_w])?)
                .map_err(&err)?;
            let w = h
                .create_4d_filter(
                    nchw,
                    dims([g.out_channels, g.in_channels, g.kernel_h, g.kernel_w])?,
                )
                .map_err(&err)?;
            let y = h
                .create_4d_tensor(nchw, dims([g.batch, g.out_channels, g.out_h, g.out_w])?)
                .map_err(&err)?;
            let [pad, stride] = [g.padding as i32, g.stride as i32];
            let mut conv = h
                .create_conv2d(
                    [pad, pad],
                    [stride, stride],
                    [1, 1],
                    cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                )
                .map_err(&err)?;
            // DEFAULT lets Ampere and later round f32 inputs to TF32 on tensor cores (PyTorch's
            // default for convolutions); FMA keeps full f32 for exact parity.
            let math = if self.allow_tf32 {
                cudnnMathType_t::CUDNN_DEFAULT_MATH
            } else {
                cudnnMathType_t::CUDNN_FMA_MATH
            };
            conv.set_math_type(math).map_err(&err)?;
            self.plans.insert(
                key,
                ConvPlan {
                    x,
                    w,
                    y,
                    conv,
                    forward: None,
                    backward_data: None,
                    backward_filter: None,
                },
            );
        }
        Ok(())
    }

    /// Runs one convolution op of geometry `g` on the handle's stream.
    pub(crate) fn run(&mut self, g: &ConvGeometry, op: ConvOp<'_>) -> Result<()> {
        self.plan(g)?;
        let Dnn {
            plans,
            workspace,
            stream,
            ..
        } = self;
        let plan = plans.get_mut(&key(g)).expect("planned above");
        let err = device_error("running a cuDNN convolution");
        match op {
            ConvOp::Forward { x, w, y } => {
                let conv = ConvForward {
                    conv: &plan.conv,
                    x: &plan.x,
                    w: &plan.w,
                    y: &plan.y,
                };
                let (algo, bytes) = chosen(
                    &mut plan.forward,
                    || conv.pick_algorithm(),
                    |algo| conv.get_workspace_size(algo),
                )?;
                let ws = reserve(workspace, stream, bytes)?;
                // SAFETY: the slices hold exactly the elements the descriptors describe (checked by
                // ConvGeometry before the call) and the workspace is at least `bytes` long.
                unsafe { conv.launch(algo, ws, (1.0, 0.0), x, w, y) }.map_err(&err)
            }
            ConvOp::BackwardData { dy, w, dx } => {
                let conv = ConvBackwardData {
                    conv: &plan.conv,
                    dx: &plan.x,
                    w: &plan.w,
                    dy: &plan.y,
                };
                let (algo, bytes) = chosen(
                    &mut plan.backward_data,
                    || conv.pick_algorithm(),
                    |algo| conv.get_workspace_size(algo),
                )?;
                let ws = reserve(workspace, stream, bytes)?;
                // SAFETY: as for the forward pass.
                unsafe { conv.launch(algo, ws, (1.0, 0.0), dx, w, dy) }.map_err(&err)
            }
            ConvOp::BackwardFilter { x, dy, dw } => {
                let conv = ConvBackwardFilter {
                    conv: &plan.conv,
                    x: &plan.x,
                    dw: &plan.w,
                    dy: &plan.y,
                };
                let (algo, bytes) = chosen(
                    &mut plan.backward_filter,
                    || conv.pick_algorithm(),
                    |algo| conv.get_workspace_size(algo),
                )?;
                let ws = reserve(workspace, stream, bytes)?;
                // SAFETY: as for the forward pass.
                unsafe { conv.launch(algo, ws, (1.0, 0.0), x, dw, dy) }.map_err(&err)
            }
        }
    }
}

/// The algorithm cached in `slot` and its workspace size, or, the first time, cuDNN's pick.
fn chosen<A: Copy>(
    slot: &mut Option<(A, usize)>,
    pick: impl FnOnce() -> std::result::Result<A, CudnnError>,
    workspace_size: impl FnOnce(A) -> std::result::Result<usize, CudnnError>,
) -> Result<(A, usize)> {
    if let Some(choice) = *slot {
        return Ok(choice);
    }
    let err = device_error("choosing a cuDNN convolution algorithm");
    let algo = pick().map_err(&err)?;
    let choice = (algo, workspace_size(algo).map_err(&err)?);
    *slot = Some(choice);
    Ok(choice)
}

/// The shared workspace, grown to at least `bytes` (None when no workspace is needed).
fn reserve<'a>(
    workspace: &'a mut Option<CudaSlice<u8>>,
    stream: &Arc<CudaStream>,
    bytes: usize,
) -> Result<Option<&'a mut CudaSlice<u8>>> {
    if bytes == 0 {
        return Ok(None);
    }
    if workspace.as_ref().is_none_or(|w| w.len() < bytes) {
        // Free the old one first so the two never need to fit together.
        *workspace = None;
        // SAFETY: cuDNN's workspace is scratch; its contents are never read before written.
        let fresh = unsafe { stream.alloc::<u8>(bytes) }.map_err(|_| TensorError::OutOfMemory {
            bytes: bytes as u64,
        })?;
        *workspace = Some(fresh);
    }
    Ok(workspace.as_mut())
}
