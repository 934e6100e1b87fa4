//! How the CPU backend runs, stated on the backend rather than read from the environment inside
//! a kernel: the threads, the convolution algorithm, the widest vector unit the kernels may use,
//! and the cache sizes every tile and chunk size is derived from.

use vgg_tensor::{Result, TensorError};

/// Which algorithm the 3x3 convolutions may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConvAlgorithm {
    /// Winograd F(4x4, 3x3) where it measured faster (`conv::use_winograd`), im2col elsewhere.
    #[default]
    Auto,
    /// As `Auto`, with F(6x6, 3x3) for the forward pass where it has at most 85% of F(4x4)'s
    /// products (images of 112x112 and larger: VGG's conv1 and conv2, 18% fewer): about 1.5x
    /// F(4x4)'s rounding error, and level with it or slower on our kernels as they stand
    /// (docs/performance.md, "Winograd's tile size a parameter"); for comparisons.
    WinogradF6,
    /// im2col and GEMM everywhere, for comparisons.
    Im2col,
}

/// The arithmetic of convolutions and matrix products. Tensors are f32 in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 operands and sums.
    #[default]
    F32,
    /// Operands rounded to bfloat16 (8 significant bits, to nearest even), their products summed
    /// in f32: half the operand bytes, and the matrix units of CPUs that have them (`Bf16Unit`).
    /// A convolution that f32 Winograd computes faster than the unit's products stays f32
    /// (`Bf16Unit::outruns_winograd`), unless `ConvAlgorithm::Im2col` rules Winograd out.
    Bf16,
}

impl Precision {
    /// Its usual name.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// What computes the products in `Precision::Bf16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Unit {
    /// Intel AMX's tile unit (`tdpbf16ps`: Sapphire Rapids and later), with the OS's leave.
    Amx,
    /// AVX512_BF16's `vdpbf16ps` on the operands packed as for AMX (AMD Zen 4 and later, Intel
    /// Cooper Lake and later): two products per f32 lane per instruction.
    Avx512Bf16,
    /// The f32 vector units, on the bf16-rounded operands: the same products on any CPU.
    F32Units,
}

impl Bf16Unit {
    /// The fastest this CPU has within `isa` (a cap below AVX-512 also leaves out AMX, so that
    /// `--isa avx2` runs the emulated path on any machine).
    pub fn within(isa: Isa) -> Bf16Unit {
        let native = [Bf16Unit::Amx, Bf16Unit::Avx512Bf16]
            .into_iter()
            .find(|unit| unit.present());
        match native {
            Some(unit) if isa >= Isa::Avx512 => unit,
            _ => Bf16Unit::F32Units,
        }
    }

    /// Whether this CPU has it (the f32 units: every CPU).
    pub fn present(self) -> bool {
        match self {
            Bf16Unit::Amx => crate::bf16::amx::available(),
            Bf16Unit::Avx512Bf16 => crate::bf16::vectors::available(),
            Bf16Unit::F32Units => true,
        }
    }

    /// The units this CPU has, the f32 units first.
    pub fn present_units() -> Vec<Bf16Unit> {
        [Bf16Unit::F32Units, Bf16Unit::Amx, Bf16Unit::Avx512Bf16]
            .into_iter()
            .filter(|unit| unit.present())
            .collect()
    }

    /// Whether it multiplies operands packed in AMX's tile layout (`bf16::amx`).
    pub fn packs_tiles(self) -> bool {
        matches!(self, Bf16Unit::Amx | Bf16Unit::Avx512Bf16)
    }

    /// Whether the bf16 mode leaves the products it could compute to the f32 units' f32
    /// arithmetic, keeping bf16 only where a product streams its weight from memory (a linear
    /// layer's forward at batch 1-3, from weights kept in bf16 rows: half the bytes): a native
    /// unit slower than the f32 products. Intel's AVX512_BF16 without AMX (its tiles hidden, as
    /// by the hypervisor of the 2-core Emerald Rapids VM measured on 2026-12-08, or absent, as
    /// on Cooper Lake) multiplies at about half the f32 GEMM's rate: 137-157 GFLOP/s against
    /// 282-294 (`examples/bf16_rate`), so that VGG-16's batch-1 forward-backward took 1.3x f32's
    /// time in bf16 (docs/performance.md, "bf16 where AVX512_BF16 trails f32"). AMD's (Zen 4 and 5)
    /// runs at 1.6-1.8x the f32 rate and AMX's at 12x; the f32 units round the operands
    /// whatever it costs, so that the mode gives the same products on every CPU.
    pub fn products_stay_f32(self) -> bool {
        self == Bf16Unit::Avx512Bf16 && cpu_vendor_is_intel()
    }

    /// Whether the bf16 mode's products run on this unit, one of the CPU's own bf16 units (AMX,
    /// AMD's AVX512_BF16), rather than on the f32 units, rounded or not.
    pub fn multiplies_in_bf16(self) -> bool {
        self != Bf16Unit::F32Units && !self.products_stay_f32()
    }

    /// Whether its convolutions outrun f32 Winograd F(4x4, 3x3), which does a quarter of the
    /// direct method's products. AMX's, at 12x the f32 rate, do. AVX512_BF16's, at 1.7x, do not:
    /// on a 2-core Zen 4 (`examples/conv_layers`, VGG-16's shapes) bf16 im2col took 1.0-1.7x
    /// f32 Winograd's time at batch 8 and 1.1-2.4x at batch 1, per layer and pass (and the f32
    /// units' emulation is slower than f32). Rounding Winograd's transformed values instead
    /// loses 10x the digits (`conv::use_winograd`), so where the unit does not outrun it, the
    /// bf16 mode leaves the convolutions Winograd takes in f32.
    pub fn outruns_winograd(self) -> bool {
        self == Bf16Unit::Amx
    }

    /// Its usual name.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Unit::Amx => "AMX",
            Bf16Unit::Avx512Bf16 => "AVX512_BF16",
            Bf16Unit::F32Units => "f32 units",
        }
    }
}

/// Whether CPUID names the vendor GenuineIntel.
fn cpu_vendor_is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // `__cpuid` became a safe function after our minimum Rust version (1.89).
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU.
        let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
        // "GenuineIntel" in EBX, EDX, ECX.
        [leaf.ebx, leaf.edx, leaf.ecx] == [0x756e_6547, 0x4965_6e69, 0x6c65_746e]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A vector instruction set of the kernels, in increasing width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The baseline x86-64 target (SSE2), or whatever the compiler makes of the loops elsewhere.
    Portable,
    /// AVX2 with FMA: 16 registers of 8 lanes.
    Avx2,
    /// AVX-512F: 32 registers of 16 lanes.
    Avx512,
}

impl Isa {
    /// The widest set this CPU has.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// The set of the GEMM crate's kernels, which choose it themselves from what the CPU has
    /// (AVX-512 only with this crate's `avx512-gemm` feature, on by default): a cap in
    /// `CpuConfig::isa` does not reach them, a build without the feature does.
    pub fn of_gemm() -> Isa {
        let widest = Isa::detected();
        if cfg!(feature = "avx512-gemm") {
            widest
        } else {
            widest.min(Isa::Avx2)
        }
    }

    /// Its usual name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "AVX2",
            Isa::Avx512 => "AVX-512",
        }
    }
}

/// Data-cache sizes in bytes: the L1 and L2 of one core, the L3 its cores share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSizes {
    /// Level-1 data cache of a core.
    pub l1d: usize,
    /// Level-2 cache of a core.
    pub l2: usize,
    /// Level-3 cache shared by the core's complex (its size where the OS reports none: 0 is
    /// read as "none", and the L2 then stands for it).
    pub l3: usize,
}

impl CacheSizes {
    /// The sizes the kernels were first tuned on (a Zen 5 core: 48 KiB, 1 MiB, 32 MiB shared),
    /// used where the OS says nothing.
    pub const FALLBACK: CacheSizes = CacheSizes {
        l1d: 48 << 10,
        l2: 1 << 20,
        l3: 32 << 20,
    };

    /// This machine's, from Linux's sysfs (cpu0's caches), each missing one from `FALLBACK`.
    pub fn detect() -> CacheSizes {
        let mut found = [None; 3];
        for index in 0..8 {
            let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
            let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).ok();
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
            else {
                continue;
            };
            let kind = kind.trim();
            if kind != "Data" && kind != "Unified" {
                continue;
            }
            if let (Ok(level @ 1..=3), Some(bytes)) =
                (level.trim().parse::<usize>(), parse_size(&size))
            {
                found[level - 1] = Some(bytes);
            }
        }
        let f = CacheSizes::FALLBACK;
        CacheSizes {
            l1d: found[0].unwrap_or(f.l1d),
            l2: found[1].unwrap_or(f.l2),
            l3: found[2].unwrap_or(f.l3),
        }
    }
}

/// sysfs sizes: "32K", "1024K", "32768K", "8M", or bytes.
fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: usize = digits.parse().ok()?;
    let shift = match unit.trim() {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift).filter(|&b| b > 0)
}

/// Everything the CPU backend is told, with `detect`ed defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuConfig {
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// The convolution algorithm.
    pub convolution: ConvAlgorithm,
    /// The widest vector unit our kernels may use (None: the widest the CPU has). The GEMM
    /// crate's kernels choose their own, at build time (see `CpuBackend::gemm_isa`).
    pub isa: Option<Isa>,
    /// The cache sizes the tiles and chunks are derived from.
    pub caches: CacheSizes,
    /// The arithmetic of convolutions and matrix products.
    pub precision: Precision,
}

impl CpuConfig {
    /// `threads` workers, the automatic algorithm, the CPU's widest vector unit, its caches.
    pub fn detect(threads: usize) -> CpuConfig {
        CpuConfig {
            threads,
            convolution: ConvAlgorithm::Auto,
            isa: None,
            caches: CacheSizes::detect(),
            precision: Precision::F32,
        }
    }

    /// The instruction set the kernels will use, refusing one the CPU does not have.
    pub fn kernel_isa(&self) -> Result<Isa> {
        let widest = Isa::detected();
        match self.isa {
            None => Ok(widest),
            Some(asked) if asked <= widest => Ok(asked),
            Some(asked) => Err(TensorError::InvalidArgument {
                op: "CpuBackend",
                message: format!(
                    "this CPU has no {} (its widest vector unit is {}); ask for {} or less",
                    asked.name(),
                    widest.name(),
                    widest.name()
                ),
            }),
        }
    }
}

/// Sizes derived from the caches, and the choices the kernels read: one value per backend,
/// passed to every kernel call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Worker threads.
    pub threads: usize,
    /// The convolution algorithm.
    pub convolution: ConvAlgorithm,
    /// The most bytes of one im2col column tile (twice the L2: the column tile and the GEMM's
    /// packed panels share it).
    pub im2col_tile_bytes: usize,
    /// Winograd chunks' transformed input and output where the weights stay cached (1.5 L2).
    pub chunk_bytes: usize,
    /// Winograd chunks where the weights stream from memory (the L3).
    pub large_chunk_bytes: usize,
    /// Transformed weights up to this size count as cached (3/16 of the L3).
    pub cached_weight_bytes: usize,
    /// Outputs larger than this are written around the caches (half the L3).
    pub streaming_bytes: usize,
    /// None: f32 products; otherwise bf16 products on this unit.
    pub bf16: Option<Bf16Unit>,
    /// A linear layer's forward at batch 1-3 reads its weight kept in rows of bf16, half the
    /// bytes of the stream that is its time. In `Precision::Bf16`, with or without `bf16`'s
    /// products (`Bf16Unit::products_stay_f32`).
    pub bf16_weight_rows: bool,
    /// The GEMM crate's vector unit (`Isa::of_gemm`): where its products are narrower than
    /// AVX-512, Winograd's fewer products win on smaller inputs (`conv::use_winograd`).
    pub gemm_isa: Isa,
    /// Our kernels' widest vector unit: the CPU's, lowered to `CpuConfig::isa`.
    pub kernel_isa: Isa,
}

impl Tuning {
    /// The tuning of `config` (its thread count taken as given: 0 is resolved by the backend).
    pub fn of(config: &CpuConfig) -> Tuning {
        let CacheSizes { l2, l3, .. } = config.caches;
        // A machine reporting no L3 has its L2 as its last level.
        let last = l3.max(l2);
        // An instruction set the CPU lacks is refused by the backend.
        let kernel_isa = config.kernel_isa().unwrap_or_else(|_| Isa::detected());
        Tuning {
            threads: config.threads.max(1),
            convolution: config.convolution,
            im2col_tile_bytes: 2 * l2,
            chunk_bytes: l2 + l2 / 2,
            large_chunk_bytes: last,
            cached_weight_bytes: last / 16 * 3,
            streaming_bytes: last / 2,
            bf16: match config.precision {
                Precision::F32 => None,
                Precision::Bf16 => {
                    Some(Bf16Unit::within(kernel_isa)).filter(|unit| !unit.products_stay_f32())
                }
            },
            bf16_weight_rows: config.precision == Precision::Bf16,
            gemm_isa: Isa::of_gemm(),
            kernel_isa,
        }
    }

    /// The precision of the products this tuning computes.
    pub fn precision(&self) -> Precision {
        match self.bf16 {
            None => Precision::F32,
            Some(_) => Precision::Bf16,
        }
    }

    /// This machine's tuning for `threads` workers (for kernels called outside a backend).
    pub fn detect(threads: usize) -> Tuning {
        Tuning::of(&CpuConfig::detect(threads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_sizes_parse() {
        assert_eq!(parse_size("32K\n"), Some(32 << 10));
        assert_eq!(parse_size("32768K"), Some(32 << 20));
        assert_eq!(parse_size("8M"), Some(8 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0K"), None);
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }

    #[test]
    fn the_fallback_caches_give_the_sizes_first_tuned_by_hand() {
        let t = Tuning::of(&CpuConfig {
            caches: CacheSizes::FALLBACK,
            ..CpuConfig::detect(2)
        });
        assert_eq!(t.im2col_tile_bytes, 2 << 20);
        assert_eq!(t.chunk_bytes, 3 << 19);
        assert_eq!(t.large_chunk_bytes, 32 << 20);
        assert_eq!(t.cached_weight_bytes, 6 << 20);
        assert_eq!(t.streaming_bytes, 16 << 20);
    }

    #[test]
    fn this_machines_caches_are_plausible() {
        let c = CacheSizes::detect();
        assert!(c.l1d >= 4 << 10 && c.l1d <= c.l2.max(c.l1d));
        assert!(c.l2 >= 64 << 10);
    }

    #[test]
    fn an_isa_the_cpu_lacks_is_refused() {
        let widest = Isa::detected();
        let mut config = CpuConfig::detect(1);
        assert_eq!(config.kernel_isa().unwrap(), widest);
        config.isa = Some(Isa::Portable);
        assert_eq!(config.kernel_isa().unwrap(), Isa::Portable);
        if widest < Isa::Avx512 {
            config.isa = Some(Isa::Avx512);
            let e = config.kernel_isa().unwrap_err().to_string();
            assert!(e.contains("no AVX-512") && e.contains(widest.name()), "{e}");
        }
    }
}
