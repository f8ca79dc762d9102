#!/usr/bin/env bash
# wharf's whole test suite, the one command CI runs (.ci/run): installs what the tests need,
# checks formatting and lints, runs the unit and in-process tests (a fake Hub-like upstream in
# front of the real binary), a one-minute soak against upstreams that fail on purpose
# (tests/soak.rs), then the end-to-end tests with real clients (tests/e2e/clients.sh).
# Everything talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test
SOAK_SECS=60 cargo test --test soak -- --ignored --nocapture
if ((EUID == 0)); then
  tests/e2e/clients.sh
else
  echo "skipping the end-to-end client tests: they run daemons (dockerd, containerd) and need root" >&2
fi
