//! `Device`: tensors made, moved and described.

use rayon::prelude::*;
use vgg_tensor::{check_reshape, check_upload, random, Device, DeviceTensor, Result, Shape};

use crate::config::{Bf16Unit, ConvAlgorithm};

use super::{CpuBackend, CpuTensor};
use crate::CHUNK;

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
            ConvAlgorithm::WinogradF6 => ", Winograd F(6x6) forward",
        };
        let precision = match self.tuning.bf16 {
            None if self.tuning.bf16_weight_rows => format!(
                ", bf16 in fully connected weights' streams only: {}'s products trail f32's",
                Bf16Unit::within(self.isa).name()
            ),
            None => String::new(),
            Some(unit)
                if unit.outruns_winograd() || self.config.convolution == ConvAlgorithm::Im2col =>
            {
                format!(", bf16 products on {}", unit.name())
            }
            Some(unit) => format!(", bf16 products on {}, Winograd in f32", unit.name()),
        };
        format!(
            "cpu ({} threads, {}{gemm}{algorithm}{precision})",
            self.threads,
            self.isa.name()
        )
    }

    fn execute<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.workers.install(f)
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
