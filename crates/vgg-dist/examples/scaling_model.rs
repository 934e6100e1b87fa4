//! Prints docs/scaling.md's tables: predicted VGG-16 scaling efficiency from 2 to 512 workers on
//! 10, 25, 100 and 400 Gb/s links, with and without overlap and with fp16 gradients, from a
//! step's measured compute time.
//!
//! `cargo run -p vgg-dist --example scaling_model -- COMPUTE_S OVERLAPPABLE_S [OPTIMIZER_S]`

use vgg_dist::scaling::{Exchange, StepModel};

fn main() {
    let args: Vec<f64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("seconds, as numbers"))
        .collect();
    let [compute, overlappable, ..] = args[..] else {
        eprintln!("usage: scaling_model COMPUTE_S OVERLAPPABLE_S [OPTIMIZER_S]");
        std::process::exit(2);
    };
    let optimizer = args.get(2).copied().unwrap_or(0.0);
    let workers = [2usize, 8, 32, 128, 512];
    println!(
        "compute {compute} s, of which {overlappable} s can hide communication; optimiser {optimizer} s; \
         553,430,176 gradient bytes; 5 us link latency\n"
    );
    let mut header = "| link | exchange |".to_string();
    for n in workers {
        header += &format!(" {n} |");
    }
    println!("{header}");
    println!("|---|---|{}", "---:|".repeat(workers.len()));
    for gbit in [10.0, 25.0, 100.0, 400.0] {
        let model = StepModel {
            compute,
            overlappable,
            optimizer,
            gradient_bytes: 553_430_176.0,
            link_bits_per_second: gbit * 1e9,
            latency: 5e-6,
        };
        for (name, exchange) in [
            (
                "after backward",
                Exchange {
                    overlap: false,
                    fp16: false,
                },
            ),
            (
                "overlapped",
                Exchange {
                    overlap: true,
                    fp16: false,
                },
            ),
            (
                "overlapped, fp16",
                Exchange {
                    overlap: true,
                    fp16: true,
                },
            ),
        ] {
            let mut row = format!("| {gbit:.0} Gb/s | {name} |");
            for n in workers {
                row += &format!(" {:.0}% |", 100.0 * model.efficiency(n, exchange));
            }
            println!("{row}");
        }
    }
}
