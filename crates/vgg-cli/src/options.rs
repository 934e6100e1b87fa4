//! The options several commands share, declared once and flattened where they apply, so one
//! concept has one flag everywhere (the vocabulary is in the README).

use std::path::PathBuf;

use anyhow::Result;
use vgg_model::{ModelSpec, PartialOptions, SpecOptions, VggConfig};

use crate::args;

/// The network a command builds or loads. An option left out comes from the weight file's
/// metadata where the command reads one, else from the command's defaults.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NetOptions {
    /// The configuration: vgg11 (A), vgg13 (B), vgg16c (C), vgg16 (D) or vgg19 (E) of the paper,
    /// or torchvision's vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn (BatchNorm after every convolution)
    /// [default: the weight file's, else vgg16; train: vgg11]
    #[arg(long, value_parser = args::model)]
    pub model: Option<VggConfig>,
    /// Multiplies every convolution's channels, a number in (0, 16] such as 0.125 for quick runs
    /// [default: the weight file's, else 1; train: 0.25]
    #[arg(long, value_parser = args::width_mult)]
    pub width_mult: Option<f64>,
    /// Width of fc6 and fc7, at least 1 [default: the weight file's, else 4096; train: 128]
    #[arg(long, value_parser = args::positive)]
    pub hidden: Option<usize>,
    /// Output classes (fc8's width), at least 1 [default: the weight file's, else 1000; train:
    /// the data set's]
    #[arg(long, value_parser = args::positive)]
    pub classes: Option<usize>,
    /// torchvision's adaptive average pool before fc6, to SIDE x SIDE, so that the weights run at
    /// any input size; `none`: fc6 reads pool5 as it is, as the paper's network [default: the
    /// weight file's (7 for torchvision's files), else none]
    #[arg(long, value_name = "SIDE|none", value_parser = args::adaptive_pool)]
    pub adaptive_pool: Option<args::AdaptivePool>,
}

/// What a command's defaults are where neither the flags nor a weight file say.
#[derive(Debug, Clone, Copy)]
pub struct NetDefaults {
    pub model: VggConfig,
    pub options: SpecOptions,
}

impl Default for NetDefaults {
    /// The paper's VGG-16 on 224x224x3 ImageNet images.
    fn default() -> Self {
        NetDefaults {
            model: VggConfig::Vgg16,
            options: SpecOptions::default(),
        }
    }
}

impl NetOptions {
    /// The flags as partial spec options.
    pub fn partial(&self) -> PartialOptions {
        PartialOptions {
            classes: self.classes,
            width_mult: self.width_mult,
            hidden: self.hidden,
            adaptive_pool: self.adaptive_pool.map(|p| p.0),
            ..Default::default()
        }
    }

    /// The spec: the flags, then `known` (a weight file's metadata, the input's shape), then
    /// `defaults`.
    pub fn spec(
        &self,
        known_model: Option<VggConfig>,
        known: PartialOptions,
        defaults: NetDefaults,
    ) -> Result<ModelSpec> {
        let model = self.model.or(known_model).unwrap_or(defaults.model);
        let options = self.partial().or(known).resolve_with(defaults.options);
        Ok(ModelSpec::new(model, options)?)
    }
}

/// The input a network is built for, where no input file says it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct InputShape {
    /// Height x width of the input images, e.g. 224x224, or one number for square images; at
    /// least 32x32 [default: 224x224]
    #[arg(long, visible_alias = "size", alias = "input", value_parser = args::input_size)]
    pub image_size: Option<(usize, usize)>,
    /// Input channels, at least 1 [default: 3]
    #[arg(long, value_parser = args::positive)]
    pub channels: Option<usize>,
}

impl InputShape {
    pub fn partial(&self) -> PartialOptions {
        PartialOptions {
            input: self.image_size,
            in_channels: self.channels,
            ..Default::default()
        }
    }
}

/// Where the network runs.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Where the network runs: cpu, or cuda (an NVIDIA GPU; see the README's "On a GPU")
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendChoice,
    /// CPU threads: 0 for one per core, at most 8 per core
    #[arg(long, default_value = "0", value_parser = args::threads)]
    pub threads: usize,
    /// With --backend cpu: the widest vector unit our kernels may use (native: the widest the
    /// CPU has), to compare instruction sets on one machine; the GEMM crate's kernels keep their
    /// own choice
    #[arg(long, value_enum, default_value = "native")]
    pub isa: IsaChoice,
    /// With --backend cpu: the convolution algorithm (auto: Winograd F(4x4, 3x3) where it
    /// measured faster, im2col elsewhere; winograd6: as auto, with F(6x6, 3x3) for the forward
    /// pass of images of 112x112 and larger, 18% fewer products but no faster on our kernels
    /// today; im2col: everywhere)
    #[arg(long, value_enum, default_value = "auto")]
    pub conv_algorithm: ConvChoice,
    /// With --backend cpu: the arithmetic of convolutions and matrix products. f32; or bf16:
    /// operands rounded to bfloat16, products summed in f32 (as PyTorch's autocast and
    /// OpenVINO's bf16), on AMX or AVX512_BF16 where the CPU has them and on the f32 units
    /// elsewhere; but for AMX, the convolutions Winograd takes stay f32, which is faster there
    /// (with --conv-algorithm im2col, every convolution is rounded)
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionChoice,
    /// With --backend cuda: which GPU, counting from 0 [default: 0; under mpirun, the rank's
    /// place among the ranks on its node, modulo the node's GPUs, so that each rank has its own]
    #[arg(long)]
    pub gpu: Option<usize>,
    /// With --backend cuda: keep convolutions in full f32 instead of TF32 tensor cores (PyTorch's
    /// default is TF32)
    #[arg(long)]
    pub no_tf32: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IsaChoice {
    Native,
    Avx512,
    Avx2,
    Portable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionChoice {
    F32,
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvChoice {
    Auto,
    Winograd6,
    Im2col,
}

impl DeviceArgs {
    pub fn cpu(&self) -> Result<vgg_ndarray::CpuBackend> {
        use vgg_ndarray::{ConvAlgorithm, CpuConfig, Isa};
        let isa = match self.isa {
            IsaChoice::Native => None,
            IsaChoice::Avx512 => Some(Isa::Avx512),
            IsaChoice::Avx2 => Some(Isa::Avx2),
            IsaChoice::Portable => Some(Isa::Portable),
        };
        let convolution = match self.conv_algorithm {
            ConvChoice::Auto => ConvAlgorithm::Auto,
            ConvChoice::Winograd6 => ConvAlgorithm::WinogradF6,
            ConvChoice::Im2col => ConvAlgorithm::Im2col,
        };
        let config = CpuConfig {
            isa,
            convolution,
            precision: self.cpu_precision(),
            ..CpuConfig::detect(match self.threads {
                0 => crate::dist::default_threads(),
                n => n,
            })
        };
        if let Err(e) = config.kernel_isa() {
            anyhow::bail!("--isa: {e}");
        }
        Ok(vgg_ndarray::CpuBackend::with_config(config)?)
    }

    pub fn cuda(&self) -> Result<vgg_cuda::CudaBackend> {
        if self.isa != IsaChoice::Native || self.conv_algorithm != ConvChoice::Auto {
            anyhow::bail!(
                "--isa and --conv-algorithm choose the CPU backend's kernels; leave them out with --backend cuda"
            );
        }
        if self.precision != PrecisionChoice::F32 {
            anyhow::bail!(
                "--precision bf16 is the CPU backend's mode; on a GPU convolutions run in TF32 unless --no-tf32"
            );
        }
        Ok(vgg_cuda::CudaBackend::new(vgg_cuda::CudaOptions {
            ordinal: self.gpu.unwrap_or_else(crate::dist::default_gpu),
            allow_tf32: !self.no_tf32,
        })?)
    }

    /// The CPU backend's arithmetic, as --precision asks.
    fn cpu_precision(&self) -> vgg_ndarray::Precision {
        match self.precision {
            PrecisionChoice::F32 => vgg_ndarray::Precision::F32,
            PrecisionChoice::Bf16 => vgg_ndarray::Precision::Bf16,
        }
    }

    /// The arithmetic of convolutions and matrix products, as a benchmark record names it.
    pub fn arithmetic(&self) -> &'static str {
        match self.backend {
            BackendChoice::Cpu => self.cpu_precision().name(),
            BackendChoice::Cuda if self.no_tf32 => "f32",
            BackendChoice::Cuda => "tf32",
        }
    }

    /// CPU threads as the report should say them (None on a GPU).
    pub fn cpu_threads(&self) -> Result<Option<usize>> {
        Ok(match self.backend {
            BackendChoice::Cpu => Some(self.cpu()?.threads()),
            BackendChoice::Cuda => None,
        })
    }
}

/// A weight file to read the network from.
#[derive(clap::Args, Clone, Debug)]
pub struct WeightsArg {
    /// Weights: a .safetensors file with torchvision's names, from `vgg init`, a `vgg train`
    /// checkpoint (its optimiser state is ignored) or torchvision's state_dict()
    #[arg(long)]
    pub weights: PathBuf,
}

/// How many classes to print per image (forward, classify).
#[derive(clap::Args, Debug)]
pub struct TopArg {
    /// How many of each image's most probable classes to print, at least 1
    #[arg(long, default_value = "5", value_parser = args::positive)]
    pub top: usize,
}
