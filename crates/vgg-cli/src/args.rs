//! Parsers for the command line's values; each error names the problem and what would work.

use clap::ValueEnum;
use vgg_model::VggConfig;

pub fn model(s: &str) -> Result<VggConfig, String> {
    s.parse().map_err(|e: vgg_model::SpecError| e.to_string())
}

/// `224x224`, `224X200` or `224` (square).
pub fn input_size(s: &str) -> Result<(usize, usize), String> {
    let bad =
        || format!("'{s}' is not a size: write HxW with positive integers, e.g. 224x224 (or 224)");
    let (h, w) = match s.trim().split_once(['x', 'X']) {
        Some((h, w)) => (h.trim(), w.trim()),
        None => (s.trim(), s.trim()),
    };
    let h: usize = h.parse().map_err(|_| bad())?;
    let w: usize = w.parse().map_err(|_| bad())?;
    if h == 0 || w == 0 {
        return Err(format!(
            "input size {h}x{w} has a zero side: use positive sizes, e.g. 224x224"
        ));
    }
    Ok((h, w))
}

/// The adaptive pool before fc6: its side, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptivePool(pub Option<usize>);

/// `7` (torchvision's) or `none`.
pub fn adaptive_pool(s: &str) -> Result<AdaptivePool, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(AdaptivePool(None));
    }
    positive(s)
        .map(|side| AdaptivePool(Some(side)))
        .map_err(|_| {
            format!("'{s}' is not a pool size: give a side such as 7 (torchvision's), or none")
        })
}

/// A count that must be at least 1 (batch, classes, channels, steps).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a positive integer")),
    }
}

/// A CPU thread count: 0 (one per core) up to `MAX_THREADS_PER_CORE` per core.
pub fn threads(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a thread count (0: one per core)"))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = cores.saturating_mul(vgg_ndarray::MAX_THREADS_PER_CORE);
    if n > most {
        return Err(format!(
            "this machine has {cores} cores: use at most {most} threads (0: one per core)"
        ));
    }
    Ok(n)
}

/// A size in bytes: `1000`, `512K`, `64M`, `4G` or `1T` (binary units; `KiB`/`GiB` too).
pub fn byte_size(s: &str) -> Result<u64, String> {
    let bad = || format!("'{s}' is not a size: write a number of bytes, or e.g. 512M or 4G");
    let t = s.trim();
    let digits = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let bytes = value * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A width multiplier in (0, 16].
pub fn width_mult(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 && m <= 16.0 => Ok(m),
        _ => Err(format!(
            "'{s}' is not a width multiplier: use a number in (0, 16], e.g. 0.125"
        )),
    }
}

/// How a report is printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people
    Table,
    /// One JSON document with a schema field
    Json,
    /// RFC 4180 CSV, numbers without separators
    Csv,
    /// A Markdown table
    Markdown,
}

/// How a report that can also be drawn is printed on stdout (summary, rf): the report formats,
/// or its figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FigureFormat {
    /// Aligned columns for people
    Table,
    /// One JSON document with a schema field
    Json,
    /// RFC 4180 CSV, numbers without separators
    Csv,
    /// A Markdown table
    Markdown,
    /// The figure, as SVG
    Svg,
}

impl FigureFormat {
    /// The report format, or None for the figure.
    pub fn report(self) -> Option<Format> {
        match self {
            FigureFormat::Table => Some(Format::Table),
            FigureFormat::Json => Some(Format::Json),
            FigureFormat::Csv => Some(Format::Csv),
            FigureFormat::Markdown => Some(Format::Markdown),
            FigureFormat::Svg => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(input_size("224x200"), Ok((224, 200)));
        assert_eq!(input_size("32"), Ok((32, 32)));
        assert!(input_size("0x224").unwrap_err().contains("zero"));
        assert!(input_size("axb").unwrap_err().contains("HxW"));
        assert!(input_size("-3x3").is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(byte_size("1000"), Ok(1000));
        assert_eq!(byte_size("512M"), Ok(512 << 20));
        assert_eq!(byte_size("1.5 GiB"), Ok(3 << 29));
        assert!(byte_size("4X").is_err());
        assert!(byte_size("-1G").is_err());
        assert!(byte_size("0").is_err());
        assert!(byte_size("99999999999T").is_err());
    }

    #[test]
    fn thread_counts() {
        assert_eq!(threads("0"), Ok(0));
        assert!(threads("100000").unwrap_err().contains("at most"));
    }

    #[test]
    fn counts() {
        assert_eq!(positive("3"), Ok(3));
        assert!(positive("0").unwrap_err().contains("at least 1"));
        assert!(positive("x").is_err());
        assert!(width_mult("0").is_err());
        assert_eq!(width_mult("0.125"), Ok(0.125));
    }
}
