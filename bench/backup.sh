#!/usr/bin/env bash
# Backup benchmark, one command: a 4 GiB Sheaf volume of mixed content (50 %
# random, 25 % text-like, 25 % zeros, in 64 MiB extents) on a standalone
# replica server (1 replica: backups read one replica whatever the count)
# with its engine serving NBD, and in the same run, to the same target
# directory on the same disk, page cache dropped before every phase:
#   full backup:  `sheaf blk backup` (zstd level 3, the default; the code the
#                 agent runs) against `tar -cSf - raw.img | zstd -3 -T1`
#                 (and -T0) of the same data as a raw file, both synced;
#   incremental:  1 % of the volume changed (41 MiB of random data in 64 KiB
#                 writes), snapshot, `sheaf blk backup --parent-...`: its time
#                 against the full backup's. Two layouts: "extents" (the
#                 writes in 8 contiguous runs of 5.1 MiB: a file rewritten,
#                 a database's hot range; this is the target's figure) and
#                 "scattered" (each 64 KiB write at its own random offset:
#                 each touches its own 1 MiB chunk, so ~15 % of the chunks
#                 are read and sent; informative);
#   restore:      `sheaf blk restore` of the last backup into a new replica,
#                 flushed, against `zstd -dc | tar -xSf -` + sync; then the
#                 restored volume is read back over NBD and compared with
#                 the raw file as changed (`qemu-img compare`).
# Targets: full ≥ 80 % of the baseline's (-T1) throughput; incremental
# ≤ 5 % of the full's time. Results: docs/BENCHMARKS.md ("Backups").
#
#   bash bench/backup.sh [--size 4G]      RUNS=1 (default) or more: medians
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE=4G
RUNS=${RUNS:-1}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
BYTES=$(numfmt --from=iec "$SIZE")
(( BYTES % (64 << 20) == 0 )) || { echo "--size must be a multiple of 64M" >&2; exit 2; }
MIB=$(( BYTES >> 20 ))

need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v jq >/dev/null || need+=(jq)
if [[ ${#need[@]} -gt 0 ]]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v python3 >/dev/null || { echo "python3 is needed (the data generator)" >&2; exit 1; }

(cd "$ROOT" && cargo build --release -q -p sheaf)
SHEAF="$ROOT/target/release/sheaf"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/sheaf-bench-backup.XXXXXX")
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
wait_sock() { for _ in $(seq 400); do [[ -S "$1" ]] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "# cannot drop the page cache (not root?)" >&2; }
# control SOCKET JSON: one request to an engine's control socket.
control() {
  python3 - "$1" "$2" <<'EOF'
import socket, sys, json
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode() + b"\n")
buf = b""
while not buf.endswith(b"\n"):
    d = s.recv(65536)
    if not d: break
    buf += d
r = json.loads(buf)
if r.get("error"): sys.exit("control: " + r["error"])
EOF
}
median() { tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "# machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, Linux $(uname -r), $(df -h --output=fstype,avail "$WORK" | tail -1 | xargs);" \
  "$(date -u +%Y-%m-%dT%H:%MZ); sheaf $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown); $(zstd --version | sed 's/.*\(v[0-9.]*\).*/zstd \1/')"

# The data: deterministic, in 64 MiB extents cycling random, text-like
# (log lines from a pool of 20,000, compressible about as much as logs
# are), random, zeros (left as holes in the raw file).
python3 - "$WORK/raw.img" "$BYTES" <<'EOF'
import random, sys
path, size, ext = sys.argv[1], int(sys.argv[2]), 64 << 20
rnd = random.Random(20261201)
words = ["".join(rnd.choices("abcdefghijklmnopqrstuvwxyz", k=rnd.randint(2, 10))) for _ in range(5000)]
levels = ["INFO", "WARN", "DEBUG", "ERROR"]
lines = [(f"2026-12-01T{rnd.randint(0,23):02}:{rnd.randint(0,59):02}:{rnd.randint(0,59):02}.{rnd.randint(0,999999):06}Z "
          f"{rnd.choice(levels)} {' '.join(rnd.choices(words, k=rnd.randint(4, 14)))} id={rnd.getrandbits(32):08x}\n").encode()
         for _ in range(20000)]
with open(path, "wb") as f:
    f.truncate(size)
    for i, off in enumerate(range(0, size, ext)):
        kind = "RTRZ"[i % 4]
        if kind == "Z":
            continue
        f.seek(off)
        if kind == "R":
            f.write(rnd.randbytes(ext))
        else:
            buf = bytearray()
            while len(buf) < ext:
                buf += b"".join(rnd.choices(lines, k=4096))
            f.write(bytes(buf[:ext]))
EOF
echo "# data: $MIB MiB raw file, $(( $(du -B1M "$WORK/raw.img" | cut -f1) )) MiB allocated (50 % random, 25 % text-like, 25 % zeros as holes)"

# The source volume: one replica, its engine with NBD and a control socket.
"$SHEAF" blk replica --dir "$WORK/r-src" --volume bench --size "$BYTES" --listen "unix:$WORK/r-src.sock" 2>"$WORK/r-src.log" & PIDS+=($!)
wait_sock "$WORK/r-src.sock"
"$SHEAF" blk engine --volume bench --replica "unix:$WORK/r-src.sock" --nbd "$WORK/bench.nbd" --control "$WORK/bench.ctl" 2>"$WORK/engine.log" & PIDS+=($!)
wait_sock "$WORK/bench.nbd"; wait_sock "$WORK/bench.ctl"
SRC_NBD="nbd+unix:///bench?socket=$WORK/bench.nbd"
t0=$(now)
# The volume is new, hence blank: the raw file's holes are not written.
qemu-img convert -n --target-is-zero -f raw -O raw "$WORK/raw.img" "$SRC_NBD"
t1=$(now)
awk -v s="$t0" -v e="$t1" -v m="$MIB" 'BEGIN{printf "# volume filled through NBD in %.1f s\n", e-s}'

# change MODE SEED: 41 MiB (1 %) of random data in 64 KiB writes, into the
# raw file and (holes of delta.img skipped) into the volume over NBD.
change() {
  python3 - "$WORK/raw.img" "$WORK/delta.img" "$BYTES" "$1" "$2" <<'EOF'
import random, sys
raw, delta, size, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rnd, w = random.Random(seed), 64 << 10
writes = (size // 100) // w                      # 1 % in 64 KiB writes
slots = size // w
if mode == "extents":                            # 8 contiguous runs
    runs, per = 8, -(-writes // 8)
    starts = sorted(rnd.sample(range(0, slots - per, per), runs))
    offs = [(s + k) * w for s in starts for k in range(per)][:writes]
else:                                            # each write on its own
    offs = sorted(o * w for o in rnd.sample(range(slots), writes))
with open(raw, "r+b") as r, open(delta, "wb") as d:
    d.truncate(size)
    for o in offs:
        data = rnd.randbytes(w)
        r.seek(o); r.write(data); d.seek(o); d.write(data)
print(len(offs) * w >> 20, len({o >> 20 for o in offs}))
EOF
  qemu-img convert -n --target-is-zero -f raw -O raw "$WORK/delta.img" "$SRC_NBD"
  rm -f "$WORK/delta.img"
}

declare -a FULL INC SCAT RES B1 B0 BR
mkdir -p "$WORK/target"
for run in $(seq "$RUNS"); do
  T="$WORK/target/run-$run"; mkdir -p "$T"
  control "$WORK/bench.ctl" "{\"op\":\"snapshot\",\"name\":\"full-$run\"}"

  drop_caches
  t0=$(now)
  full=$("$SHEAF" blk backup --replica "unix:$WORK/r-src.sock" --snapshot "full-$run" --size "$BYTES" --to "$T" \
    --volume default/bench --name "full-$run")
  t1=$(now)
  echo "# sheaf full backup:        $full"
  FULL+=("$(awk -v s="$t0" -v e="$t1" 'BEGIN{print e-s}')")
  chunks_mib=$(( $(du -sb "$T/chunks" | cut -f1) >> 20 ))

  drop_caches
  t0=$(now)
  (cd "$WORK" && tar -cSf - raw.img | zstd -q -3 -T1 > "$T/baseline.tar.zst" && sync "$T/baseline.tar.zst")
  t1=$(now)
  B1+=("$(awk -v s="$t0" -v e="$t1" 'BEGIN{print e-s}')")
  base_mib=$(( $(stat -c %s "$T/baseline.tar.zst") >> 20 ))
  echo "# baseline tar | zstd -3 -T1: ${B1[-1]} s, $base_mib MiB (sheaf's chunks: $chunks_mib MiB)"

  drop_caches
  t0=$(now)
  (cd "$WORK" && tar -cSf - raw.img | zstd -q -3 -T0 > "$T/baseline-t0.tar.zst" && sync "$T/baseline-t0.tar.zst")
  t1=$(now)
  B0+=("$(awk -v s="$t0" -v e="$t1" 'BEGIN{print e-s}')")
  rm -f "$T/baseline-t0.tar.zst"
  echo "# baseline tar | zstd -3 -T0: ${B0[-1]} s"

  read -r mib chunks <<<"$(change extents $((run * 7)))"
  control "$WORK/bench.ctl" "{\"op\":\"snapshot\",\"name\":\"inc-$run\"}"
  drop_caches
  t0=$(now)
  inc=$("$SHEAF" blk backup --replica "unix:$WORK/r-src.sock" --snapshot "inc-$run" --size "$BYTES" --to "$T" \
    --volume default/bench --name "inc-$run" --parent-manifest "volumes/default/bench/full-$run.json" --parent-snapshot "full-$run")
  t1=$(now)
  echo "# sheaf incremental, $mib MiB changed in 8 extents ($chunks chunks): $inc"
  INC+=("$(awk -v s="$t0" -v e="$t1" 'BEGIN{print e-s}')")

  read -r mib chunks <<<"$(change scattered $((run * 7 + 1)))"
  control "$WORK/bench.ctl" "{\"op\":\"snapshot\",\"name\":\"scat-$run\"}"
  drop_caches
  t0=$(now)
  scat=$("$SHEAF" blk backup --replica "unix:$WORK/r-src.sock" --snapshot "scat-$run" --size "$BYTES" --to "$T" \
    --volume default/bench --name "scat-$run" --parent-manifest "volumes/default/bench/inc-$run.json" --parent-snapshot "inc-$run")
  t1=$(now)
  echo "# sheaf incremental, $mib MiB changed in scattered 64 KiB writes ($chunks chunks): $scat"
  SCAT+=("$(awk -v s="$t0" -v e="$t1" 'BEGIN{print e-s}')")

  # Restore the last backup into a new replica; then read it back.
  rm -rf "$WORK/r-new"
  "$SHEAF" blk replica --dir "$WORK/r-new" --volume restored --size "$BYTES" --listen "unix:$WORK/r-new.sock" 2>"$WORK/r-new.log" & PIDS+=($!)
  wait_sock "$WORK/r-new.sock"
  drop_caches
  t0=$(now)
  res=$("$SHEAF" blk restore --from "$T" --manifest "volumes/default/bench/scat-$run.json" --replica "unix:$WORK/r-new.sock" --volume restored)
  t1=$(now)
  echo "# sheaf restore:            $res"
  RES+=("$(awk -v s="$t0" -v e="$t1" 'BEGIN{print e-s}')")
  "$SHEAF" blk engine --volume restored --replica "unix:$WORK/r-new.sock" --nbd "$WORK/restored.nbd" 2>"$WORK/engine-new.log" & PIDS+=($!)
  wait_sock "$WORK/restored.nbd"
  if qemu-img compare -q -f raw -F raw "$WORK/raw.img" "nbd+unix:///restored?socket=$WORK/restored.nbd"; then
    echo "# restored volume == the raw file as changed: identical ($MIB MiB compared)"
  else
    echo "RESTORE MISMATCH: the restored volume differs from the raw file" >&2; exit 1
  fi
  kill "${PIDS[-1]}" "${PIDS[-2]}"; wait "${PIDS[-1]}" "${PIDS[-2]}" 2>/dev/null || true
  unset 'PIDS[-1]'; unset 'PIDS[-1]'
  rm -rf "$WORK/r-new" "$WORK/r-new.sock" "$WORK/restored.nbd"

  mkdir -p "$WORK/out"
  drop_caches
  t0=$(now)
  zstd -q -dc "$T/baseline.tar.zst" | tar -xSf - -C "$WORK/out"
  sync "$WORK/out/raw.img"
  t1=$(now)
  BR+=("$(awk -v s="$t0" -v e="$t1" 'BEGIN{print e-s}')")
  echo "# baseline zstd -dc | tar -xSf: ${BR[-1]} s"
  rm -rf "$WORK/out" "$T"
done

m() { echo "$@" | median; }
full=$(m "${FULL[@]}"); inc=$(m "${INC[@]}"); scat=$(m "${SCAT[@]}"); res=$(m "${RES[@]}")
b1=$(m "${B1[@]}"); b0=$(m "${B0[@]}"); br=$(m "${BR[@]}")
echo
echo "# $MIB MiB volume, 1 replica, directory target on the same disk, RUNS=$RUNS (medians); MiB/s of the volume's size"
row='%-42s %12s %14s %8s  %s\n'
printf "$row" figure sheaf baseline ratio target
awk -v m="$MIB" -v s="$full" -v b="$b1" -v row="$row" 'BEGIN{r=(m/s)/(m/b);
  printf row, "full backup (MiB/s), vs tar|zstd -3 -T1", sprintf("%.0f", m/s), sprintf("%.0f", m/b), sprintf("%.2f", r), (r >= 0.8 ? "≥ 0.80: met" : "≥ 0.80: not met")}'
awk -v m="$MIB" -v s="$full" -v b="$b0" -v row="$row" 'BEGIN{
  printf row, "full backup (MiB/s), vs tar|zstd -3 -T0", sprintf("%.0f", m/s), sprintf("%.0f", m/b), sprintf("%.2f", (m/s)/(m/b)), ""}'
awk -v s="$full" -v i="$inc" -v row="$row" 'BEGIN{r=i/s;
  printf row, "incremental, 1 % in 8 extents (s)", sprintf("%.2f", i), sprintf("full %.1f", s), sprintf("%.3f", r), (r <= 0.05 ? "≤ 0.05 of full: met" : "≤ 0.05 of full: not met")}'
awk -v s="$full" -v i="$scat" -v row="$row" 'BEGIN{
  printf row, "incremental, 1 % scattered 64K (s)", sprintf("%.2f", i), sprintf("full %.1f", s), sprintf("%.3f", i/s), "(informative)"}'
awk -v m="$MIB" -v s="$res" -v b="$br" -v row="$row" 'BEGIN{
  printf row, "restore (MiB/s), vs zstd -dc|tar -x", sprintf("%.0f", m/s), sprintf("%.0f", m/b), sprintf("%.2f", (m/s)/(m/b)), "verified identical"}'
