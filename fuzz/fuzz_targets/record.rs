//! Any bytes as a benchmark record given to `vgg report`: ours (vgg-bench/1) or a peer's
//! (vgg-peer-bench/1). Reading ends in an error or a run whose every figure the page draws is
//! finite, never a crash, a spin or an overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(run) = vgg_bench::record::parse(data, std::path::Path::new("fuzz.json")) else {
        return;
    };
    for m in &run.modes {
        let figures = [
            m.images_per_second(run.batch),
            m.gflops_per_second(),
            Some(m.stats.mean),
            Some(m.stats.sd),
            Some(m.stats.p90),
        ];
        for f in figures.into_iter().flatten() {
            assert!(f.is_finite(), "{f}");
        }
    }
});
