#!/usr/bin/env bash
# The API server benchmark, one command: builds `sheaf` and the benchmark
# in release mode, then measures create throughput, watch latency, list
# times (API and kubectl) and idle footprint on the embedded SQLite store
# and on etcd (started by the benchmark on free loopback ports), and
# prints a table. Results are recorded in docs/BENCHMARKS.md.
#
#   bash bench/api.sh                      # the full run (about 3-4 minutes)
#   bash bench/api.sh --stores sqlite      # extra arguments go to the benchmark;
#   bash bench/api.sh --help               # see --help for all of them
#
# Needs: a Rust toolchain, kubectl, and etcd (/usr/bin/etcd, or
# SHEAF_BENCH_ETCD=/path/to/etcd) for the etcd run.
set -euo pipefail
export RUST_LIB_BACKTRACE=${RUST_LIB_BACKTRACE:-0}  # short error messages
cd "$(dirname "$0")/.."

cargo build --release -p sheaf -p sheaf-bench-api
target_dir=${CARGO_TARGET_DIR:-target}

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, Linux $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ);" \
  "sheaf $(git describe --always --dirty 2>/dev/null || echo unknown); $(kubectl version --client 2>/dev/null | head -1);" \
  "$("${SHEAF_BENCH_ETCD:-/usr/bin/etcd}" --version 2>/dev/null | head -1)" >&2
exec "$target_dir/release/sheaf-bench-api" --sheaf "$target_dir/release/sheaf" "$@"
