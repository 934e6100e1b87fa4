//! `vgg report`: the benchmark report page (`vgg_report::page`) from records on disk.

use std::path::PathBuf;

use anyhow::Result;
use vgg_bench::record;
use vgg_nn::io::NamedPath;
use vgg_report::{comparison_table, distinct_names, page, roofline_chart};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Benchmark records to draw: `vgg bench --json` files (schema vgg-bench/1) and the peers'
    /// (`cargo xtask bench --peers` writes them to target/bench/). The first is the one the
    /// others are compared with
    #[arg(required = true, value_name = "RECORD.json")]
    pub records: Vec<PathBuf>,
    /// Where to write the page [default: stdout]
    #[arg(long, short, value_name = "FILE.html")]
    pub output: Option<PathBuf>,
    /// What to write: the HTML page, or a text table comparing every record with the first
    /// (mean and median s/batch, GFLOP/s, ratios, the best peer per mode)
    #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
    pub format: ReportFormat,
}

/// What `vgg report` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// One self-contained HTML page
    Html,
    /// A text table, ours against each other record
    Table,
    /// The first record's roofline as SVG: each layer's achieved rate against its arithmetic
    /// intensity, under the measured roofs (needs a `vgg bench --per-layer` record)
    Roofline,
}

/// The roofline of the first record's first mode that has one.
fn first_roofline(runs: &[vgg_bench::record::Run], path: &std::path::Path) -> Result<String> {
    let first = &runs[0];
    for m in &first.modes {
        if let Some(svg) = roofline_chart(first, m)? {
            return Ok(svg);
        }
    }
    anyhow::bail!(
        "{} counts no layer's FLOPs and bytes: make it with vgg bench --per-layer --json FILE",
        path.display()
    )
}

/// `vgg report`: the page from records on disk, to `--output` or stdout.
pub fn run(a: &ReportArgs) -> Result<String> {
    if let Some(path) = &a.output {
        vgg_nn::io::check_output(path)?;
        let records: Vec<NamedPath> = a
            .records
            .iter()
            .map(|path| NamedPath {
                name: "a record",
                path,
            })
            .collect();
        vgg_nn::io::check_distinct(
            &[NamedPath {
                name: "--output",
                path,
            }],
            &records,
        )?;
    }
    let runs = a
        .records
        .iter()
        .map(|path| record::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    let runs = distinct_names(runs, &a.records);
    let html = match a.format {
        ReportFormat::Html => page(&runs)?,
        ReportFormat::Table => comparison_table(&runs),
        ReportFormat::Roofline => first_roofline(&runs, &a.records[0])?,
    };
    match &a.output {
        Some(path) => {
            vgg_nn::io::write_atomic(path, html.as_bytes())?;
            Ok(String::new())
        }
        None => Ok(html),
    }
}
