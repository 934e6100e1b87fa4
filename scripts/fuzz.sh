#!/usr/bin/env bash
# Coverage-guided fuzzing of the file loaders with cargo fuzz (libFuzzer + AddressSanitizer).
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 300 s, every target)
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a C++ compiler; on a stable toolchain the
# sanitizer flags are allowed with RUSTC_BOOTSTRAP=1. Corpora grow in fuzz/corpus/TARGET (from
# the committed seeds in fuzz/seeds/TARGET); a crash is saved in fuzz/artifacts/TARGET and
# should become a regression test (docs/robustness.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-300}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors npy image checkpoint cifar record pytorch weights)
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${seconds} s"
  cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -max_len=400000 -rss_limit_mb=4096 -print_final_stats=1
done
