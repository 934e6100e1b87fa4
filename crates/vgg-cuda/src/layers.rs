//! Matrix products (cuBLAS), convolutions (cuDNN) and pooling (kernels of nn.cu).

use cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
use cudarc::driver::PushKernelArg;
use vgg_tensor::{
    matmul_dims, same_shape, Conv2dParams, ConvGeometry, Convolution, Device, Matmul, Pool2dParams,
    PoolGeometry, Pooling, Result, Shape, TensorError,
};

use crate::backend::{elementwise, launch, CudaBackend, CudaPoolIndices, CudaTensor};
use crate::device_error;
use crate::dnn::ConvOp;

impl Matmul for CudaBackend {
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
}

impl Convolution for CudaBackend {
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
}

impl Pooling for CudaBackend {
    type PoolIndices = CudaPoolIndices;

    fn max_pool2d(&self, x: &CudaTensor, p: Pool2dParams) -> Result<(CudaTensor, CudaPoolIndices)> {
        let g = PoolGeometry::new(&x.shape, p)?;
        let out_shape = g.output_shape();
        let n = out_shape.elements();
        let (_, mut arg) = self.alloc(out_shape.clone())?;
        let [planes, in_h, in_w, out_h, out_w, kernel, stride] = pool_dims(&g);
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

    fn avg_pool2d(&self, x: &CudaTensor, p: Pool2dParams) -> Result<CudaTensor> {
        let g = PoolGeometry::for_op("avg_pool2d", &x.shape, p)?;
        let n = g.output_shape().elements();
        let dims = pool_dims(&g);
        self.build(g.output_shape(), |y| {
            let [planes, in_h, in_w, out_h, out_w, kernel, stride] = dims;
            launch!(
                self,
                "avg_pool2d",
                elementwise(n),
                x.slice(),
                y,
                &planes,
                &in_h,
                &in_w,
                &out_h,
                &out_w,
                &kernel,
                &stride
            );
            Ok(())
        })
    }

    fn avg_pool2d_backward(
        &self,
        dy: &CudaTensor,
        input_shape: &Shape,
        p: Pool2dParams,
    ) -> Result<CudaTensor> {
        let g = PoolGeometry::for_op("avg_pool2d_backward", input_shape, p)?;
        same_shape("avg_pool2d_backward", &dy.shape, &g.output_shape())?;
        let n = input_shape.elements();
        let dims = pool_dims(&g);
        self.build(input_shape.clone(), |dx| {
            let [planes, in_h, in_w, out_h, out_w, kernel, stride] = dims;
            launch!(
                self,
                "avg_pool2d_backward",
                elementwise(n),
                dy.slice(),
                dx,
                &planes,
                &in_h,
                &in_w,
                &out_h,
                &out_w,
                &kernel,
                &stride
            );
            Ok(())
        })
    }
}

/// A pooling geometry as the kernels take it: planes, input and output sizes, window, stride.
fn pool_dims(g: &PoolGeometry) -> [i64; 7] {
    [
        (g.batch * g.channels) as i64,
        g.in_h as i64,
        g.in_w as i64,
        g.out_h as i64,
        g.out_w as i64,
        g.kernel as i64,
        g.stride as i64,
    ]
}
