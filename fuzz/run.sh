#!/usr/bin/env bash
# Run every fuzz target (or those named) for FUZZ_SECS seconds each, one after another, seeded
# with the committed corpus/. By hand, not in CI:
#   fuzz/run.sh                    # all targets, 60 s each
#   FUZZ_SECS=600 fuzz/run.sh range accept
# What libFuzzer finds beyond corpus/ goes to scratch/ (ignored); a crash is written to
# artifacts/<target>/ and stops the run. Add a finding's input to corpus/<target>/ once fixed
# (`cargo +nightly fuzz cmin <target> corpus/<target>` keeps corpus/ small).
set -euo pipefail

cd "$(dirname "$0")"
secs="${FUZZ_SECS:-60}"
max_len="${FUZZ_MAX_LEN:-4096}"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build
for t in "${targets[@]}"; do
    echo "== $t: ${secs}s"
    mkdir -p "scratch/$t" "corpus/$t"
    cargo +nightly fuzz run "$t" "scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len="$max_len" -timeout=10 -print_final_stats=1
done
