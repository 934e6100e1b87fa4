//! Benchmark records on disk: ours (`vgg bench --json`, schema [`BENCH_SCHEMA`]) and the peers'
//! (`bench/peers/`, schema [`PEER_SCHEMA`]), read into one [`Run`] each.
//!
//! A record is user input: every number it carries is bounded here, once, before anything is
//! computed from it (a product, a rate, a chart's axis), so no record can make a reader overflow,
//! spin or print infinity. The bounds are far beyond any real run ([`Bounds`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vgg_model::{ModelSpec, SpecOptions, VggConfig};

use crate::{
    step_flops, BenchConfig, LayerTime, Machine, MatmulPeak, MemoryBandwidth, Mode, ModeReport,
    Stats,
};

/// JSON schema version of `vgg bench --json`; bump it when a field changes meaning or disappears.
pub const BENCH_SCHEMA: &str = "vgg-bench/1";

/// The schema of the peers' records (bench/peers/common.py).
pub const PEER_SCHEMA: &str = "vgg-peer-bench/1";

/// What `vgg bench --json` writes and the report draws.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRecord {
    /// [`BENCH_SCHEMA`].
    pub schema: String,
    /// When the run started, local time.
    pub started: String,
    /// The backend, as it names itself.
    pub backend: String,
    /// CPU threads asked for (None: the backend's default).
    pub threads: Option<usize>,
    /// The version of vgg that ran it.
    #[serde(default)]
    pub vgg_version: Option<String>,
    /// The network, described as the first output line does.
    #[serde(default)]
    pub network: Option<String>,
    /// The machine it ran on.
    #[serde(default)]
    pub machine: Option<Machine>,
    /// The backend's measured matrix-product rate, the ceiling the GFLOP/s are read against.
    #[serde(default)]
    pub matmul_peak: Option<MatmulPeak>,
    /// The backend's measured memory bandwidth, the memory roof of the per-layer rates.
    #[serde(default)]
    pub memory_bandwidth: Option<MemoryBandwidth>,
    /// The arithmetic of the convolutions and matrix products: "f32", "bf16" (operands rounded
    /// to bfloat16, sums in f32) or "tf32" (a GPU's tensor cores). Records from before it
    /// existed ran in f32 on the CPU.
    #[serde(default)]
    pub precision: Option<String>,
    /// The settings.
    pub config: BenchConfig,
    /// One report per mode run.
    pub modes: Vec<ModeReport>,
}

/// A peer's record (bench/peers/common.py writes it).
#[derive(Deserialize)]
struct PeerRecord {
    framework: String,
    version: String,
    /// The network (`vgg bench --model`'s names); records from before it existed ran VGG-16.
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    precision: Option<String>,
    threads: Option<usize>,
    batch: usize,
    image_size: Option<usize>,
    modes: BTreeMap<String, PeerMode>,
}

#[derive(Deserialize)]
struct PeerMode {
    step_seconds: Vec<f64>,
    #[serde(default)]
    peak_rss_bytes: Option<u64>,
}

/// The arithmetic a record may name.
pub const PRECISIONS: [&str; 4] = ["f32", "tf32", "bf16", "fp16"];

/// One framework's run, as a report shows it.
#[derive(Debug, Clone)]
pub struct Run {
    /// The name in tables and legends.
    pub name: String,
    /// Images per step.
    pub batch: usize,
    /// The network, as `vgg bench` describes it.
    pub network: String,
    /// Input height and width, where the record says.
    pub image: Option<(usize, usize)>,
    /// Threads the framework ran with, where it says.
    pub threads: Option<usize>,
    /// The arithmetic it ran in ("f32", "bf16", ...), where it says (`Run::arithmetic`).
    pub precision: Option<String>,
    /// Our full record, for the settings and machine.
    pub ours: Option<BenchRecord>,
    /// Each mode run.
    pub modes: Vec<RunMode>,
}

/// One mode of a run.
#[derive(Debug, Clone)]
pub struct RunMode {
    /// Which mode.
    pub mode: Mode,
    /// Every timed step, in order.
    pub step_seconds: Vec<f64>,
    /// Their statistics, computed here for every framework alike.
    pub stats: Stats,
    /// The direct method's FLOPs of one step, where the network is known.
    pub flops_per_step: Option<u64>,
    /// Peak resident memory during the mode.
    pub peak_rss_bytes: Option<u64>,
    /// Stopped early.
    pub interrupted: bool,
    /// Per-layer times (ours, with --per-layer).
    pub per_layer: Vec<LayerTime>,
}

impl RunMode {
    /// Images per second at the mean step time (None without a timed step).
    pub fn images_per_second(&self, batch: usize) -> Option<f64> {
        (self.stats.mean > 0.0).then(|| batch as f64 / self.stats.mean)
    }

    /// Effective GFLOP/s (the direct method's FLOPs) at the mean step time.
    pub fn gflops_per_second(&self) -> Option<f64> {
        let flops = self.flops_per_step?;
        (self.stats.mean > 0.0).then(|| flops as f64 / self.stats.mean / 1e9)
    }
}

impl Run {
    /// Our record, named "vgg".
    pub fn ours(record: BenchRecord) -> Run {
        let modes = record
            .modes
            .iter()
            .map(|m| RunMode {
                mode: m.mode,
                stats: Stats::of(&m.step_seconds),
                step_seconds: m.step_seconds.clone(),
                flops_per_step: Some(m.flops_per_step),
                peak_rss_bytes: m.peak_rss_bytes,
                interrupted: m.interrupted,
                per_layer: m.per_layer.clone(),
            })
            .collect();
        Run {
            name: "vgg".to_string(),
            network: record
                .network
                .clone()
                .unwrap_or_else(|| record.config.model.to_string()),
            batch: record.config.batch,
            image: Some((record.config.height, record.config.width)),
            threads: record.threads,
            precision: record.precision.clone(),
            ours: Some(record),
            modes,
        }
    }

    /// The arithmetic it ran in: what the record says, and f32 where it says nothing (every
    /// record made before records named it ran in f32).
    pub fn arithmetic(&self) -> &str {
        self.precision.as_deref().unwrap_or("f32")
    }
}

/// What a record may claim. Each bound is orders of magnitude beyond a real benchmark and small
/// enough that every figure derived from the record (FLOPs, rates, axes) is finite and fits.
#[derive(Debug, Clone, Copy)]
pub struct Bounds;

impl Bounds {
    /// Images per step.
    pub const BATCH: usize = 1 << 20;
    /// Pixels along an image side.
    pub const SIDE: usize = 1 << 16;
    /// Threads.
    pub const THREADS: usize = 1 << 16;
    /// Timed steps in one mode.
    pub const STEPS: usize = 10_000_000;
    /// The shortest step: one nanosecond.
    pub const STEP_MIN_SECONDS: f64 = 1e-9;
    /// The longest step: about 11.6 days.
    pub const STEP_MAX_SECONDS: f64 = 1e6;
    /// Layers timed apart.
    pub const LAYERS: usize = 10_000;
    /// Milliseconds one layer may take per step (the longest step).
    pub const LAYER_MAX_MS: f64 = 1e9;
    /// Peak memory: one pebibyte.
    pub const RSS_BYTES: u64 = 1 << 50;
    /// Effective or peak rate: an exaFLOP/s, in GFLOP/s.
    pub const GFLOPS: f64 = 1e9;
    /// Side of the measured matrix product.
    pub const MATMUL_SIDE: usize = 1 << 20;
}

#[derive(Debug, thiserror::Error)]
/// Why a file is not a benchmark record this reader takes.
pub enum RecordError {
    #[error(transparent)]
    /// The file could not be read (missing, not a regular file, too large).
    Io(#[from] vgg_nn::io::IoError),
    #[error("{path} is not JSON: {reason}")]
    /// The bytes are not JSON.
    NotJson {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    #[error("{path} is not a valid {schema} record: {reason}")]
    /// A field is missing or of the wrong type.
    Invalid {
        /// The file.
        path: PathBuf,
        /// The schema it claims.
        schema: &'static str,
        /// The parser's message.
        reason: String,
    },
    #[error(
        "{path}: schema '{schema}' is not one this vgg reads ({BENCH_SCHEMA} from a vgg benchmark run, \
         {PEER_SCHEMA} from bench/peers/); was it written by a newer vgg?"
    )]
    /// A schema this reader does not know.
    UnknownSchema {
        /// The file.
        path: PathBuf,
        /// The schema it names.
        schema: String,
    },
    #[error(
        "{path} is not a benchmark record: it has no \"schema\" field (write one with \
         `vgg bench --json FILE` or `cargo xtask bench --peers`)"
    )]
    /// No schema field.
    NoSchema {
        /// The file.
        path: PathBuf,
    },
    #[error("{path}: {claim}, {limit}; the record is corrupt or was edited")]
    /// A number outside what a benchmark can measure.
    Implausible {
        /// The file.
        path: PathBuf,
        /// What the record claims.
        claim: String,
        /// What a record may claim.
        limit: String,
    },
}

/// Reads one record, ours or a peer's, from a file.
pub fn load(path: &Path) -> Result<Run, RecordError> {
    parse(&vgg_nn::io::read_file(path)?, path)
}

/// Parses the bytes of one record, refusing what is not a record or claims the implausible;
/// `path` names it in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Run, RecordError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| RecordError::NotJson {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let invalid = |schema, e: serde_json::Error| RecordError::Invalid {
        path: path.to_path_buf(),
        schema,
        reason: e.to_string(),
    };
    let schema = value.get("schema").and_then(|s| s.as_str());
    match schema {
        Some(BENCH_SCHEMA) => {
            let record: BenchRecord =
                serde_json::from_value(value).map_err(|e| invalid(BENCH_SCHEMA, e))?;
            check_ours(&record, path)?;
            let run = Run::ours(record);
            check_run(&run, path)?;
            Ok(run)
        }
        Some(PEER_SCHEMA) => {
            let record: PeerRecord =
                serde_json::from_value(value).map_err(|e| invalid(PEER_SCHEMA, e))?;
            peer(record, path)
        }
        Some(other) => Err(RecordError::UnknownSchema {
            path: path.to_path_buf(),
            schema: other.chars().take(100).collect(),
        }),
        None => Err(RecordError::NoSchema {
            path: path.to_path_buf(),
        }),
    }
}

fn implausible(path: &Path, claim: String, limit: impl Into<String>) -> RecordError {
    RecordError::Implausible {
        path: path.to_path_buf(),
        claim,
        limit: limit.into(),
    }
}

/// A count in 1..=max.
fn count(path: &Path, what: &str, value: usize, max: usize) -> Result<(), RecordError> {
    if value == 0 || value > max {
        return Err(implausible(
            path,
            format!("the {what} is {value}"),
            format!("a record's {what} is between 1 and {max}"),
        ));
    }
    Ok(())
}

fn rate(path: &Path, what: &str, value: f64) -> Result<(), RecordError> {
    if !(0.0..=Bounds::GFLOPS).contains(&value) {
        return Err(implausible(
            path,
            format!("{what} is {value:e} GFLOP/s"),
            format!(
                "a record's rates are between 0 and {:e} GFLOP/s",
                Bounds::GFLOPS
            ),
        ));
    }
    Ok(())
}

/// The fields only our records carry: settings and the measured peak.
fn check_ours(record: &BenchRecord, path: &Path) -> Result<(), RecordError> {
    // The batch and the input's sides are the run's, which `check_run` bounds.
    if let Some(p) = &record.matmul_peak {
        count(path, "matrix product's side", p.n, Bounds::MATMUL_SIDE)?;
        rate(path, "the matrix-product peak", p.gflops_per_second)?;
    }
    if let Some(b) = &record.memory_bandwidth {
        // GB/s are bounded as GFLOP/s are: both far beyond any machine.
        rate(path, "the memory bandwidth", b.gb_per_second)?;
    }
    for m in &record.modes {
        rate(path, "a mode's GFLOP/s", m.gflops_per_second)?;
        if !m.images_per_second.is_finite() || m.images_per_second < 0.0 {
            return Err(implausible(
                path,
                format!("a mode's images/s is {:e}", m.images_per_second),
                "a rate is finite and not negative",
            ));
        }
    }
    Ok(())
}

/// What every run carries: the batch, input, threads, steps, memory and per-layer times, and
/// that its derived rates stay within [`Bounds::GFLOPS`].
fn check_run(run: &Run, path: &Path) -> Result<(), RecordError> {
    if let Some(p) = &run.precision {
        if !PRECISIONS.contains(&p.as_str()) {
            return Err(implausible(
                path,
                format!(
                    "its precision is '{}'",
                    p.chars().take(100).collect::<String>()
                ),
                format!("a precision is one of {}", PRECISIONS.join(", ")),
            ));
        }
    }
    count(path, "batch size", run.batch, Bounds::BATCH)?;
    if let Some((h, w)) = run.image {
        count(path, "image height", h, Bounds::SIDE)?;
        count(path, "image width", w, Bounds::SIDE)?;
    }
    if let Some(t) = run.threads {
        if t > Bounds::THREADS {
            return Err(implausible(
                path,
                format!("the thread count is {t}"),
                format!("a record's thread count is at most {}", Bounds::THREADS),
            ));
        }
    }
    for m in &run.modes {
        let mode = m.mode.label();
        if m.step_seconds.len() > Bounds::STEPS {
            return Err(implausible(
                path,
                format!("{mode} has {} steps", m.step_seconds.len()),
                format!("a record has at most {} steps per mode", Bounds::STEPS),
            ));
        }
        let step_range = Bounds::STEP_MIN_SECONDS..=Bounds::STEP_MAX_SECONDS;
        if let Some(bad) = m.step_seconds.iter().find(|s| !step_range.contains(*s)) {
            return Err(implausible(
                path,
                format!("{mode} has a step time of {bad:e} s"),
                format!(
                    "step times are finite seconds between {:e} and {:e}",
                    Bounds::STEP_MIN_SECONDS,
                    Bounds::STEP_MAX_SECONDS
                ),
            ));
        }
        if let Some(b) = m.peak_rss_bytes.filter(|&b| b > Bounds::RSS_BYTES) {
            return Err(implausible(
                path,
                format!("{mode} has a peak memory of {b} bytes"),
                format!(
                    "a record's peak memory is at most {} bytes",
                    Bounds::RSS_BYTES
                ),
            ));
        }
        if m.per_layer.len() > Bounds::LAYERS {
            return Err(implausible(
                path,
                format!("{mode} times {} layers", m.per_layer.len()),
                format!("a record times at most {} layers", Bounds::LAYERS),
            ));
        }
        let ms_range = 0.0..=Bounds::LAYER_MAX_MS;
        if let Some(l) = m
            .per_layer
            .iter()
            .find(|l| !ms_range.contains(&l.forward_ms) || !ms_range.contains(&l.backward_ms))
        {
            return Err(implausible(
                path,
                format!(
                    "{mode}: layer '{}' takes {:e} ms forward and {:e} ms backward",
                    l.layer.chars().take(100).collect::<String>(),
                    l.forward_ms,
                    l.backward_ms
                ),
                format!(
                    "a layer's time is finite milliseconds between 0 and {:e}",
                    Bounds::LAYER_MAX_MS
                ),
            ));
        }
        if let Some(g) = m.gflops_per_second() {
            rate(path, &format!("{mode}'s effective rate"), g)?;
        }
    }
    Ok(())
}

fn peer(record: PeerRecord, path: &Path) -> Result<Run, RecordError> {
    count(path, "batch size", record.batch, Bounds::BATCH)?;
    if let Some(s) = record.image_size {
        count(path, "image size", s, Bounds::SIDE)?;
    }
    let network = match &record.model {
        None => VggConfig::Vgg16,
        Some(m) => m.parse::<VggConfig>().map_err(|e| {
            implausible(
                path,
                format!("the model is '{}'", m.chars().take(100).collect::<String>()),
                e.to_string(),
            )
        })?,
    };
    // The peers run 3 x S x S images and 1000 classes, as the reference does.
    let spec = match record.image_size {
        Some(s) => Some(
            ModelSpec::new(
                network,
                SpecOptions {
                    height: s,
                    width: s,
                    ..SpecOptions::default()
                },
            )
            .map_err(|e| implausible(path, format!("the image size is {s}"), e.to_string()))?,
        ),
        None => None,
    };
    let mut modes = Vec::new();
    for (key, m) in record.modes {
        let mode = match key.as_str() {
            "forward" => Mode::Forward,
            "forward-backward" => Mode::ForwardBackward,
            other => {
                return Err(implausible(
                    path,
                    format!(
                        "it has a mode '{}'",
                        other.chars().take(100).collect::<String>()
                    ),
                    "a mode is forward or forward-backward",
                ))
            }
        };
        let flops_per_step = match &spec {
            Some(s) => Some(step_flops(s, record.batch, mode).ok_or_else(|| {
                implausible(
                    path,
                    format!(
                        "a step of batch {} has more FLOPs than 64 bits count",
                        record.batch
                    ),
                    "use a smaller batch or image",
                )
            })?),
            None => None,
        };
        modes.push(RunMode {
            mode,
            stats: Stats::of(&m.step_seconds),
            step_seconds: m.step_seconds,
            flops_per_step,
            peak_rss_bytes: m.peak_rss_bytes,
            interrupted: false,
            per_layer: Vec::new(),
        });
    }
    modes.sort_by_key(|m| m.mode == Mode::ForwardBackward);
    // Named with its precision where that is not f32 (checked by `check_run` below).
    let name = match record.precision.as_deref() {
        None | Some("f32") => format!("{} {}", record.framework, record.version),
        Some(p) => format!("{} {} {p}", record.framework, record.version),
    };
    let run = Run {
        name,
        network: network.to_string(),
        batch: record.batch,
        image: record.image_size.map(|s| (s, s)),
        threads: record.threads,
        precision: record.precision,
        ours: None,
        modes,
    };
    check_run(&run, path)?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_precision_names_it_and_an_unknown_one_is_refused() {
        let with = |precision: &str| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&peer_json(2.into(), &[0.5])).unwrap();
            v["precision"] = precision.into();
            parse(&serde_json::to_vec(&v).unwrap(), Path::new("p.json"))
        };
        let bf16 = with("bf16").unwrap();
        assert_eq!(bf16.arithmetic(), "bf16");
        assert!(bf16.name.ends_with(" bf16"), "{}", bf16.name);
        assert!(!with("f32").unwrap().name.contains("f32"));
        let e = with("int3").unwrap_err().to_string();
        assert!(
            e.contains("precision is 'int3'") && e.contains("bf16"),
            "{e}"
        );
        let unnamed = parse(&peer_json(2.into(), &[0.5]), Path::new("p.json")).unwrap();
        assert_eq!(unnamed.arithmetic(), "f32");
    }

    #[test]
    fn a_peers_model_sets_its_network_and_flops_and_an_unknown_one_is_refused() {
        let with = |model: &str| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&peer_json(2.into(), &[0.5])).unwrap();
            v["model"] = model.into();
            parse(&serde_json::to_vec(&v).unwrap(), Path::new("p.json"))
        };
        let flops = |run: &Run| run.modes[0].flops_per_step.unwrap();
        let unnamed = parse(&peer_json(2.into(), &[0.5]), Path::new("p.json")).unwrap();
        assert_eq!(unnamed.network, "vgg16");
        let vgg19 = with("vgg19").unwrap();
        let vgg11 = with("vgg11").unwrap();
        let vgg19_bn = with("vgg19_bn").unwrap();
        assert_eq!(
            (vgg19.network.as_str(), vgg19_bn.network.as_str()),
            ("vgg19", "vgg19_bn")
        );
        // The paper's Table 4 order of cost: A < D < E (about 7.6, 15.5 and 19.6 GMACs).
        assert!(flops(&vgg11) < flops(&unnamed) && flops(&unnamed) < flops(&vgg19));
        let ratio = flops(&vgg19) as f64 / flops(&unnamed) as f64;
        assert!((1.25..1.28).contains(&ratio), "{ratio}");
        let e = with("resnet50").unwrap_err().to_string();
        assert!(
            e.contains("model is 'resnet50'") && e.contains("vgg16"),
            "{e}"
        );
    }

    fn peer_json(batch: serde_json::Value, steps: &[f64]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schema": PEER_SCHEMA, "framework": "pytorch", "version": "2.5", "threads": 2,
            "batch": batch, "image_size": 224,
            "modes": {"forward": {"step_seconds": steps}}
        }))
        .unwrap()
    }

    fn error(bytes: &[u8]) -> String {
        parse(bytes, Path::new("r.json")).unwrap_err().to_string()
    }

    #[test]
    fn every_number_a_record_claims_is_bounded() {
        let ok = parse(&peer_json(32.into(), &[0.5, 0.6]), Path::new("r.json")).unwrap();
        let g = ok.modes[0].gflops_per_second().unwrap();
        assert!((g - 32.0 * 30.940528640 / 0.55).abs() < 1e-6, "{g}");
        // The batch that used to overflow the FLOPs, and other absurd counts.
        for batch in [serde_json::json!(u64::MAX), 0.into(), (1u64 << 21).into()] {
            let e = error(&peer_json(batch, &[0.5]));
            assert!(
                e.contains("the batch size is") && e.contains("corrupt"),
                "{e}"
            );
        }
        // Step times near f64::MAX, near zero, zero and negative.
        for step in [f64::MAX / 2.0, 1e-300, 0.0, -1.0, 2e6] {
            let e = error(&peer_json(32.into(), &[0.5, step]));
            assert!(e.contains("step time of"), "{step}: {e}");
        }
    }

    #[test]
    fn files_that_are_not_records_are_named() {
        assert!(error(b"{").contains("is not JSON"));
        assert!(error(b"{}").contains("no \"schema\""));
        assert!(error(br#"{"schema":"x/9"}"#).contains("schema 'x/9'"));
        assert!(error(br#"{"schema":"vgg-bench/1"}"#).contains("not a valid vgg-bench/1"));
    }
}
