//! The comparison table `cargo xtask bench --peers` prints: every framework's mean and median
//! s/batch per mode, effective GFLOP/s against our measured matrix-product rate, our median over
//! theirs, peak memory, and the best peer per mode.

use std::fmt::Write;

use vgg_bench::record::Run;
use vgg_bench::Mode;

/// The table for `runs`, ours first (the one the others are compared with).
pub fn comparison_table(runs: &[Run]) -> String {
    let mut out = String::new();
    let Some(ours) = runs.first() else {
        return out;
    };
    // The peak is the matrix-product rate our run measured on this machine.
    let peak = ours
        .ours
        .as_ref()
        .and_then(|r| r.matmul_peak.as_ref())
        .map(|p| p.gflops_per_second);
    let _ = writeln!(
        out,
        "{:<34} {:<17} {:>9} {:>9} {:>9} {:>8} {:>10} {:>10}",
        "framework", "mode", "mean", "median", "GFLOP/s", "of peak", "ours/this", "peak RSS"
    );
    let mut best: Vec<(Mode, &str, f64)> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        for m in &run.modes {
            let (mode, median) = (m.mode, m.stats.median);
            let ratio = ours
                .modes
                .iter()
                .find(|o| o.mode == mode)
                .map_or("-".to_string(), |o| {
                    format!("{:.2}x", o.stats.median / median)
                });
            let rss = m.peak_rss_bytes.map_or("-".to_string(), |b| {
                format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
            });
            let gflops = m.gflops_per_second();
            let of_peak = match (gflops, peak) {
                (Some(g), Some(p)) if p > 0.0 => format!("{:.0}%", 100.0 * g / p),
                _ => "-".to_string(),
            };
            let gflops = gflops.map_or("-".to_string(), |g| format!("{g:.1}"));
            let _ = writeln!(
                out,
                "{:<34} {:<17} {:>9.3} {median:>9.3} {gflops:>9} {of_peak:>8} {ratio:>10} {rss:>10}",
                run.name,
                mode.label(),
                m.stats.mean,
            );
            if i > 0 {
                match best.iter_mut().find(|b| b.0 == mode) {
                    Some(b) if b.2 <= median => {}
                    Some(b) => *b = (mode, &run.name, median),
                    None => best.push((mode, &run.name, median)),
                }
            }
        }
    }
    for (mode, name, median) in &best {
        if let Some(o) = ours.modes.iter().find(|o| o.mode == *mode) {
            let _ = writeln!(
                out,
                "best peer, {}: {name} at {median:.3} s; ours/best {:.2}x",
                mode.label(),
                o.stats.median / median
            );
        }
    }
    for run in &runs[1..] {
        if let Some(sentence) = crate::alike::not_alike(ours, run) {
            let _ = writeln!(out, "note: {sentence}");
        }
    }
    out.push_str(
        "ours/this: our median over this framework's median (below 1: we are faster). GFLOP/s: the \
         direct method's arithmetic over the mean step; of peak: against the matrix-product rate \
         `vgg bench` measured on this machine.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_another_precision_or_network_are_named_as_such() {
        let mut bf16 = peer("fast", &[0.5]);
        bf16.precision = Some("bf16".into());
        let mut vgg19 = peer("deep", &[2.0]);
        vgg19.network = "vgg19".into();
        let table = comparison_table(&[peer("ours", &[1.0]), bf16, vgg19]);
        assert!(
            table.contains(
                "note: fast 1 was not run with the same settings as ours 1: precision bf16 against f32;"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "note: deep 1 was not run with the same settings as ours 1: network vgg19 against vgg16;"
            ),
            "{table}"
        );
        let same = comparison_table(&[peer("ours", &[1.0]), peer("slow", &[2.0])]);
        assert!(!same.contains("note:"), "{same}");
    }

    fn peer(name: &str, forward: &[f64]) -> Run {
        let json = serde_json::json!({
            "schema": vgg_bench::record::PEER_SCHEMA, "framework": name, "version": "1",
            "threads": 2, "batch": 1, "image_size": 32,
            "modes": {"forward": {"step_seconds": forward}}
        });
        vgg_bench::record::parse(&serde_json::to_vec(&json).unwrap(), "x.json".as_ref()).unwrap()
    }

    #[test]
    fn the_table_compares_every_run_with_the_first_and_names_the_best_peer() {
        let runs = [
            peer("ours", &[1.0, 1.0, 1.0]),
            peer("slow", &[4.0, 4.0, 4.0]),
            peer("fast", &[0.5, 0.5, 0.5]),
        ];
        let table = comparison_table(&runs);
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row for {name}: {table}"))
                .to_string()
        };
        assert!(row("slow 1").contains("0.25x"), "{table}");
        assert!(row("fast 1").contains("2.00x"), "{table}");
        assert!(
            table.contains("best peer, Forward: fast 1 at 0.500 s; ours/best 2.00x"),
            "{table}"
        );
    }
}
