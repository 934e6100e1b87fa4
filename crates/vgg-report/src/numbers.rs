//! Counts and sizes as people read them, shared by the figures and the command line's tables.

pub use vgg_tensor::memory::human_bytes as bytes;

/// 138357544 -> "138,357,544".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Large counts with an SI suffix: "15.47 G".
pub fn si(n: u64) -> String {
    let v = n as f64;
    match v {
        v if v >= 1e12 => format!("{:.2} T", v / 1e12),
        v if v >= 1e9 => format!("{:.2} G", v / 1e9),
        v if v >= 1e6 => format!("{:.2} M", v / 1e6),
        v if v >= 1e3 => format!("{:.2} k", v / 1e3),
        v => format!("{v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(138_357_544), "138,357,544");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(553_430_176), "527.79 MiB");
        assert_eq!(si(15_470_264_320), "15.47 G");
    }
}
