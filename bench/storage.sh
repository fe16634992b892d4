#!/usr/bin/env bash
# Storage benchmark: one command, everything in the same run on the same
# disk. Workloads as Longhorn's kbench (fio): 4K random read/write IOPS at
# iodepth 64, 128K sequential bandwidth at iodepth 16, 4K random read/write
# latency at iodepth 1. Targets:
#   (a) baseline: a raw file with fio directly (O_DIRECT), and the same file
#       through qemu-nbd (QEMU's NBD server; same transport and page-cache
#       use as Sheaf) — ratios are against this one;
#   (b) a Sheaf volume with 1 replica; (c) with 3 replicas (all local here).
# Each Sheaf engine serves its volume over NBD (fio's nbd engine) and over
# vhost-user-blk at the same time; the -vu columns drive the vhost-user
# socket from the host with sheaf-bench-vhost-user (bench/vhost-user: the
# QEMU + guest driver side, one queue like one fio job, same workloads,
# ramp and size), so the vhost-user path is measured without a guest.
# Usage: bench/storage.sh [--runtime SECONDS] [--size 1G]   (fio sizes: K/M/G are binary)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNTIME=10
SIZE=1G
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runtime) RUNTIME=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

need=()
command -v fio >/dev/null || need+=(fio)
command -v qemu-nbd >/dev/null || need+=(qemu-utils)
command -v jq >/dev/null || need+=(jq)
if [[ ${#need[@]} -gt 0 ]]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "this fio has no nbd engine" >&2; exit 1; }

(cd "$ROOT" && cargo build --release --locked -q -p sheaf -p sheaf-bench-vhost-user)
SHEAF="$ROOT/target/release/sheaf"
VU="$ROOT/target/release/sheaf-bench-vhost-user"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/sheaf-bench-storage.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_sock() { for _ in $(seq 200); do [[ -S "$1" ]] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }

# fio job: name rw bs iodepth → prints IOPS, bandwidth MB/s, mean latency µs.
run_fio() {
  local target=$1 rw=$2 bs=$3 depth=$4
  local args=(--name=b --rw="$rw" --bs="$bs" --iodepth="$depth" --runtime="$RUNTIME" --time_based
              --ramp_time=2 --size="$SIZE" --randrepeat=0 --norandommap --output-format=json)
  if [[ $target == file ]]; then
    args+=(--ioengine=libaio --direct=1 --filename="$WORK/raw.img")
  else
    args+=(--ioengine=nbd --uri="nbd+unix:///$5?socket=$target")
  fi
  # The nbd engine prints "fio: connected to NBD server" before the JSON.
  fio "${args[@]}" | sed -n '/^{/,$p' | jq -r '.jobs[0] | [(.read.iops + .write.iops), ((.read.bw + .write.bw) / 1024), ((.read.lat_ns.mean + .write.lat_ns.mean) / 1000)] | @tsv'
}

# vhost-user job: socket rw bs iodepth → prints IOPS, bandwidth MB/s (MiB/s,
# as fio's bw/1024 above), mean latency µs. Any error status stops the script.
run_vu() {
  local out
  out=$("$VU" --socket "$1" --rw "$2" --bs "$3" --iodepth "$4" --runtime "$RUNTIME" --ramp 2 --size "$SIZE") || return 1
  sed -n 's/^iops=\([0-9.]*\) mbps=\([0-9.]*\) lat_us=\([0-9.]*\).*/\1\t\2\t\3/p' <<<"$out"
}

prefill() {  # target export
  if [[ $1 == file ]]; then
    fio --name=fill --rw=write --bs=1M --iodepth=8 --ioengine=libaio --direct=1 --size="$SIZE" --filename="$WORK/raw.img" >/dev/null
  else
    fio --name=fill --rw=write --bs=1M --iodepth=8 --ioengine=nbd --uri="nbd+unix:///$2?socket=$1" --size="$SIZE" >/dev/null
  fi
}

# Targets.
truncate -s "$SIZE" "$WORK/raw.img"
truncate -s "$SIZE" "$WORK/nbd.img"
qemu-nbd -f raw -t -e 8 --socket="$WORK/qemu-nbd.sock" -x bench "$WORK/nbd.img" & PIDS+=($!)
wait_sock "$WORK/qemu-nbd.sock"
for r in a b c d; do
  "$SHEAF" blk replica --dir "$WORK/r-$r" --volume v --size "${SIZE}i" --listen "unix:$WORK/r-$r.sock" 2>"$WORK/r-$r.log" & PIDS+=($!)
  wait_sock "$WORK/r-$r.sock"
done
# d serves the 1-replica volume: it needs a volume of its own name.
kill "${PIDS[-1]}"; unset 'PIDS[-1]'; rm -rf "$WORK/r-d" "$WORK/r-d.sock"
"$SHEAF" blk replica --dir "$WORK/r-d" --volume one --size "${SIZE}i" --listen "unix:$WORK/r-d.sock" 2>"$WORK/r-d.log" & PIDS+=($!)
wait_sock "$WORK/r-d.sock"
"$SHEAF" blk engine --volume one --replica "unix:$WORK/r-d.sock" --nbd "$WORK/one.sock" --vhost-user "$WORK/one.vhost" 2>"$WORK/e1.log" & PIDS+=($!)
wait_sock "$WORK/one.sock"; wait_sock "$WORK/one.vhost"
"$SHEAF" blk engine --volume v --replica "unix:$WORK/r-a.sock" --replica "unix:$WORK/r-b.sock" --replica "unix:$WORK/r-c.sock" --nbd "$WORK/three.sock" --vhost-user "$WORK/three.vhost" 2>"$WORK/e3.log" & PIDS+=($!)
wait_sock "$WORK/three.sock"; wait_sock "$WORK/three.vhost"

# Self-check of the vhost-user path: a pattern written, flushed, read back
# and compared (16 MiB, or the whole volume if smaller), before the prefill.
vsize=$(( $(numfmt --from=iec "$SIZE") < 16777216 ? $(numfmt --from=iec "$SIZE") : 16777216 ))
for v in one three; do
  check=$("$VU" --socket "$WORK/$v.vhost" --verify --size "$vsize" --iodepth 16)
  echo "# vhost-user self-check ($v): $check"
done

echo "# prefilling $SIZE on every target"
prefill file; prefill "$WORK/qemu-nbd.sock" bench; prefill "$WORK/one.sock" one; prefill "$WORK/three.sock" v

rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
# PSS shares the binary's pages among the processes mapping them; private
# memory is what the process alone holds (heap, stacks, buffers).
pss_kb() { awk '/^Pss:/{print $2}' "/proc/$1/smaps_rollup"; }
private_kb() { awk '/^Private_(Clean|Dirty):/{s+=$2} END{print s}' "/proc/$1/smaps_rollup"; }

declare -A R
workloads=("randread 4k 64 iops" "randwrite 4k 64 iops" "read 128k 16 bw" "write 128k 16 bw" "randread 4k 1 lat" "randwrite 4k 1 lat")
row='%-22s %12s %12s %12s %12s %9s %9s %12s %12s %10s %10s\n'
printf "$row" workload file-direct qemu-nbd sheaf-1r sheaf-3r "1r/nbd" "3r/nbd" sheaf-1r-vu sheaf-3r-vu "1r-vu/nbd" "3r-vu/nbd"
for w in "${workloads[@]}"; do
  read -r rw bs depth metric <<<"$w"
  line=()
  for t in file "$WORK/qemu-nbd.sock:bench" "$WORK/one.sock:one" "$WORK/three.sock:v" "vu:$WORK/one.vhost" "vu:$WORK/three.vhost"; do
    if [[ $t == file ]]; then out=$(run_fio file "$rw" "$bs" "$depth")
    elif [[ $t == vu:* ]]; then out=$(run_vu "${t#vu:}" "$rw" "$bs" "$depth")
    else out=$(run_fio "${t%%:*}" "$rw" "$bs" "$depth" "${t##*:}"); fi
    [[ -n $out ]] || { echo "no result from $t ($rw $bs qd$depth)" >&2; exit 1; }
    read -r iops bw lat <<<"$out"
    case $metric in iops) v=$iops ;; bw) v=$bw ;; lat) v=$lat ;; esac
    line+=("$(printf '%.0f' "$v")")
  done
  unit=$([[ $metric == iops ]] && echo IOPS || ([[ $metric == bw ]] && echo MB/s || echo µs))
  r1=$(awk -v a="${line[2]}" -v b="${line[1]}" 'BEGIN{printf "%.2f", a/b}')
  r3=$(awk -v a="${line[3]}" -v b="${line[1]}" 'BEGIN{printf "%.2f", a/b}')
  r1vu=$(awk -v a="${line[4]}" -v b="${line[1]}" 'BEGIN{printf "%.2f", a/b}')
  r3vu=$(awk -v a="${line[5]}" -v b="${line[1]}" 'BEGIN{printf "%.2f", a/b}')
  printf "$row" "$rw $bs qd$depth ($unit)" "${line[@]:0:4}" "$r1" "$r3" "${line[4]}" "${line[5]}" "$r1vu" "$r3vu"
done
echo "# latency rows: lower is better; added latency = sheaf minus qemu-nbd"
echo "# memory after the run (KiB): RSS, PSS (shared binary pages divided among processes), private"
names=(qemu-nbd replica-a replica-b replica-c replica-one engine-one engine-three)
declare -A MEM
for i in "${!PIDS[@]}"; do
  p=${PIDS[$i]}
  printf '#   %-13s rss %7d  pss %7d  private %7d\n' "${names[$i]}" "$(rss_kb "$p")" "$(pss_kb "$p")" "$(private_kb "$p")"
  MEM[${names[$i]}]="$(rss_kb "$p") $(pss_kb "$p") $(private_kb "$p")"
done
# A 3-replica volume: its engine and its three replica servers.
awk -v e="${MEM[engine-three]}" -v a="${MEM[replica-a]}" -v b="${MEM[replica-b]}" -v c="${MEM[replica-c]}" 'BEGIN{
  split(e,E," "); split(a,A," "); split(b,B," "); split(c,C," ");
  printf "# 3-replica volume (engine + 3 replica servers): rss %.1f MiB, pss %.1f MiB, private %.1f MiB\n",
    (E[1]+A[1]+B[1]+C[1])/1024, (E[2]+A[2]+B[2]+C[2])/1024, (E[3]+A[3]+B[3]+C[3])/1024 }'

# Rebuild: replica c of the 3-replica volume is lost with its disk; a new,
# empty one takes its place and the engine copies the volume into it.
# Written-back first: the rebuild's snapshot syncs every replica, and the
# figure should be the copy's, not the workloads' leftover dirty pages.
sync
kill "${PIDS[3]}"; wait "${PIDS[3]}" 2>/dev/null || true
rm -rf "$WORK/r-c" "$WORK/r-c.sock"
# The engine logged a rebuild of r-c when it started (its resync); wait for the next one.
before=$(grep -c "replica rebuilt.*r-c.sock" "$WORK/e3.log" || true)
start=$(date +%s.%N)
"$SHEAF" blk replica --dir "$WORK/r-c" --volume v --size "${SIZE}i" --listen "unix:$WORK/r-c.sock" 2>"$WORK/r-c.log" & PIDS[3]=$!
for _ in $(seq 600); do [[ $(grep -c "replica rebuilt.*r-c.sock" "$WORK/e3.log" || true) -gt $before ]] && break; sleep 0.1; done
end=$(date +%s.%N)
copied=""
if [[ $(grep -c "replica rebuilt.*r-c.sock" "$WORK/e3.log" || true) -gt $before ]]; then
  copied=$(grep "replica rebuilt.*r-c.sock" "$WORK/e3.log" | tail -1 | sed -n 's/.*copied_mib=\([0-9]*\).*/\1/p')
fi
if [[ -n "$copied" ]]; then
  took=$(grep "replica rebuilt.*r-c.sock" "$WORK/e3.log" | tail -1 | sed -n 's/.*seconds="\{0,1\}\([0-9.]*\).*/\1/p')
  awk -v c="$copied" -v s="$start" -v e="$end" -v t="$took" 'BEGIN{printf "# rebuild of a new replica: %d MiB copied in %.2f s = %.0f MiB/s (the engine'"'"'s own timing of the rebuild); %.1f s = %.0f MiB/s from the replica'"'"'s start (includes the 2 s retry period at most)\n", c, t, c/t, e-s, c/(e-s)}'
else
  echo "# rebuild did not finish within 60 s"
fi
