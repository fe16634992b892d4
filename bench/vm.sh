#!/usr/bin/env bash
# The VM benchmark, one command: builds `sheaf`, the benchmark and the tiny
# test guest, then boots the same guest (Debian cloud kernel + busybox
# initramfs, kernel boot, NoCloud seed with a marker in its user data)
# alternately through Sheaf (POST a VirtualMachine to a `sheaf server` of
# its own) and with bare QEMU (a hand-written equivalent command line, and
# Sheaf's exact command line run by hand), and prints, side by side with
# ratios: create -> QEMU process / initialised / VMI Running, create ->
# guest markers on the serial console, and the server's memory per running
# VM. Results are recorded in docs/BENCHMARKS.md ("VMs").
#
#   bash bench/vm.sh                   # 5 runs of each kind + 4 VMs for memory (about 3 minutes)
#   bash bench/vm.sh --runs 10 --vms 8 # extra arguments go to the benchmark;
#   bash bench/vm.sh --help            # see --help for all of them
#
# Needs: a Rust toolchain, qemu-system-x86 and genisoimage (installed with
# apt when missing); the guest build needs the Debian package mirror once.
set -euo pipefail
export RUST_LIB_BACKTRACE=${RUST_LIB_BACKTRACE:-0}  # short error messages
cd "$(dirname "$0")/.."

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v genisoimage >/dev/null || need+=(genisoimage)
if [[ ${#need[@]} -gt 0 ]]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release -p sheaf -p sheaf-bench-vm
target_dir=${CARGO_TARGET_DIR:-target}
bash scripts/build-test-guests.sh tiny
guest=${SHEAF_GUEST_DIR:-$target_dir/test-guests}/tiny

# Everything the run makes lives here; on exit every process still running
# from it (daemonized QEMUs included) is killed by pid, then it is removed.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sheaf-bench-vm.XXXXXX")
BENCH_PID=
cleanup() {
  set +e
  local pid args
  if [[ -n "$BENCH_PID" ]]; then
    kill "$BENCH_PID" 2>/dev/null
    wait "$BENCH_PID" 2>/dev/null
  fi
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [[ $pid == "$$" ]] && continue
    args=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || continue
    if [[ $args == *"$WORK/"* || $args == *"$WORK "* ]]; then kill -9 "$pid" 2>/dev/null; fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, Linux $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ);" \
  "sheaf $(git describe --always --dirty 2>/dev/null || echo unknown); $(qemu-system-x86_64 --version | head -1)" >&2
"$target_dir/release/sheaf-bench-vm" --sheaf "$target_dir/release/sheaf" --guest "$guest" --work-dir "$WORK" "$@" &
BENCH_PID=$!
status=0
wait "$BENCH_PID" || status=$?
BENCH_PID=
exit "$status"
