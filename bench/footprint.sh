#!/usr/bin/env bash
# Footprint benchmark, one command: Sheaf's own memory and CPU on an idle
# single-node install, against the figures Harvester's users and
# developers measured. Builds `sheaf` (release) and the tiny test guest,
# starts a fresh `sheaf server` (embedded agent, SQLite, management
# network with its bridge, NAT and dnsmasq) on its own data directory and
# free port, runs one VM (the tiny guest, 128 MiB) whose second disk is a
# claim on a volume with two replicas, waits until the guest has booted,
# then idles and samples /proc every second: RSS and PSS
# (smaps_rollup) and CPU (utime+stime) of Sheaf's processes (the server,
# the volume's engine and replica servers, dnsmasq), the guest's QEMU
# apart. Prints the table side by side with Harvester's figures, whether
# the targets are met, and what `sheaf status` says against what was
# measured. Results: docs/BENCHMARKS.md ("Footprint").
#
#   bash bench/footprint.sh [--idle 60]     seconds of idle sampling
#   SHEAF_BIN=target/debug/sheaf bash bench/footprint.sh   (default: a release build)
#   --json FILE                              also write the figures as JSON
#   --server-env KEY=VALUE                   environment of the server (and so of
#                                            its helpers), e.g. MALLOC_ARENA_MAX=2
#
# Targets: < 100 MB RSS and < 2 % of one core, idle.
#
# Harvester's figures (the comparison column):
# - A blank single-node Harvester (master-head, 2023-01-09) "actually use
#   12Gib memory" and 0.84 cores; its biggest process is kube-apiserver,
#   2598Mi and 95m CPU (`kubectl top pod`), in Harvester's own issue
#   "[FEATURE] Reduce System Footprint / Overhead",
#   https://github.com/harvester/harvester/issues/3262. The project's seed
#   documents say the same: "a blank node uses ~12 GB" (shared/PRODUCT.md,
#   distilled from shared/seeds/), and the Russian article
#   (seeds/004_44ba80d1c5213a57.txt): "Система отжирает прилично процессора
#   и памяти, поэтому рекомендуется минимум 16 ядер на ноду" (the system
#   eats a lot of CPU and memory, hence at least 16 cores per node).
# - Harvester's documented hardware requirements
#   (docs.harvesterhci.io, install/requirements): 8 cores and 32 GB minimum
#   for testing, 16 cores and 64 GB for production.
set -euo pipefail
export RUST_LIB_BACKTRACE=${RUST_LIB_BACKTRACE:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
IDLE=60
JSON_OUT=
SERVER_ENV=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --idle) IDLE=$2; shift 2 ;;
    --server-env) SERVER_ENV+=("$2"); shift 2 ;;
    --json) JSON_OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $IDLE =~ ^[0-9]+$ && $IDLE -ge 10 ]] || { echo "--idle takes whole seconds, at least 10" >&2; exit 2; }

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v genisoimage >/dev/null || need+=(genisoimage)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v nft >/dev/null || need+=(nftables)
if [[ ${#need[@]} -gt 0 ]]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v kubectl >/dev/null || { echo "needs kubectl" >&2; exit 1; }

BIN=${SHEAF_BIN:-$ROOT/target/release/sheaf}
if [[ -z "${SHEAF_BIN:-}" ]]; then (cd "$ROOT" && cargo build --release --locked -p sheaf -q); fi
bash "$ROOT/scripts/build-test-guests.sh" tiny
GUEST=${SHEAF_GUEST_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/test-guests}/tiny

# Everything the run makes lives in WORK; on exit every process whose
# command line names it (the server, its helpers, the daemonized QEMU and
# dnsmasq) is killed by pid, the bridge and NAT table go, WORK is removed.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sheaf-bench-footprint.XXXXXX")
BRIDGE=shfp$(( $$ % 100000 ))
NET=$(( 10 + $$ % 200 ))
CIDR=10.252.$NET.0/24
SERVER_PID=
cleanup() {
  set +e
  local pid args
  [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && sleep 1
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [[ $pid == "$$" ]] && continue
    args=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || continue
    if [[ $args == *"$WORK/"* || $args == *"$WORK "* ]]; then kill -9 "$pid" 2>/dev/null; fi
  done
  [[ -n $SERVER_PID ]] && kill -9 "$SERVER_PID" 2>/dev/null
  ip link del "$BRIDGE" 2>/dev/null
  nft delete table ip "sheaf-$BRIDGE" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

mkdir -p "$WORK/images/sheaf_tiny"
ln -s "$GUEST/vmlinuz" "$GUEST/initramfs.cpio.gz" "$WORK/images/sheaf_tiny/"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env "${SERVER_ENV[@]}" "$BIN" server --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --image-dir "$WORK/images" --run-dir "$WORK/run" \
  --mgmt-bridge "$BRIDGE" --mgmt-cidr "$CIDR" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do curl -fsk "https://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsk "https://127.0.0.1:$PORT/readyz" >/dev/null || { cat "$WORK/server.log" >&2; echo "the server did not start" >&2; exit 1; }
export KUBECONFIG=$WORK/kubeconfig
"$BIN" kubeconfig --data-dir "$WORK/data" --server "https://127.0.0.1:$PORT" > "$KUBECONFIG"
log "server $SERVER_PID on 127.0.0.1:$PORT ($BIN${SERVER_ENV[*]:+, env ${SERVER_ENV[*]}}); machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, Linux $(uname -r)"

kubectl apply -f - >/dev/null <<'YAML'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: two-copies
provisioner: driver.longhorn.io
parameters:
  numberOfReplicas: "2"
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  storageClassName: two-copies
  resources:
    requests:
      storage: 1Gi
---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: idle
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        cpu: {cores: 1}
        memory: {guest: 128Mi}
        firmware:
          kernelBoot:
            kernelArgs: console=ttyS0 quiet
            container: {image: sheaf/tiny, kernelPath: /vmlinuz, initrdPath: /initramfs.cpio.gz}
        devices:
          disks:
          - {name: cloudinit, disk: {bus: virtio}}
          - {name: data, disk: {bus: virtio}}
          interfaces:
          - {name: default, masquerade: {}}
      networks:
      - {name: default, pod: {}}
      volumes:
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #cloud-config
            # marker: footprint
      - name: data
        persistentVolumeClaim: {claimName: data}
YAML
for _ in $(seq 1 180); do
  [[ $(kubectl get vmi idle -o 'jsonpath={.status.phase}' 2>/dev/null) == Running ]] && break
  sleep 1
done
[[ $(kubectl get vmi idle -o 'jsonpath={.status.phase}' 2>/dev/null) == Running ]] ||
  { kubectl get vmi idle -o yaml >&2 || true; tail -20 "$WORK/server.log" >&2; echo "the VM did not start" >&2; exit 1; }
UID_=$(kubectl get vmi idle -o 'jsonpath={.metadata.uid}')
for _ in $(seq 1 120); do grep -q 'SHEAF-GUEST' "$WORK/run/$UID_/serial.log" 2>/dev/null && break; sleep 1; done
grep -q 'SHEAF-GUEST' "$WORK/run/$UID_/serial.log" 2>/dev/null || { echo "the guest did not boot" >&2; exit 1; }
log "VM Running and booted; settling 10 s, then $IDLE s of idle sampling"
sleep 10

python3 - "$WORK" "$SERVER_PID" "$IDLE" "$BIN" "$JSON_OUT" <<'PY'
import json, os, subprocess, sys, time
work, server, idle, sheaf, json_out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
HZ = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024

def stat(pid):
    try:
        t = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    comm, rest = t[t.index("(") + 1:t.rindex(")")], t[t.rindex(")") + 2:].split()
    # rest[0] is field 3: state, ppid 4, utime 14, stime 15, cutime 16, cstime 17, starttime 22
    return {"comm": comm, "state": rest[0], "ppid": int(rest[1]), "ticks": int(rest[11]) + int(rest[12]),
            "child_ticks": int(rest[13]) + int(rest[14]), "start": int(rest[19])}

def argv(pid):
    try:
        return [a.decode(errors="replace") for a in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0") if a]
    except OSError:
        return []

def memory(pid):
    rss = pss = anon = 0
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            k, *v = line.split()
            if k == "Rss:": rss = int(v[0]) * 1024
            if k == "Pss:": pss = int(v[0]) * 1024
            if k == "Anonymous:": anon = int(v[0]) * 1024
    except OSError:
        pass
    return rss, pss, anon

def kind(pid, a, comm):
    exe = os.path.basename(a[0]) if a else comm
    if exe.startswith("qemu-system"): return "guest"
    if pid == server: return "server"
    if len(a) > 2 and a[1] == "blk": return "blk-" + a[2]
    return exe

def sample():
    """Sheaf's processes: the server, its descendants, and whatever names WORK; QEMU apart."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() for s in [stat(p)] if s}
    def descends(pid):
        for _ in range(64):
            if pid == server: return True
            s = stats.get(pid)
            if not s or s["ppid"] in (0, pid): return False
            pid = s["ppid"]
        return False
    out = {}
    for pid, s in stats.items():
        if s["state"] in "ZX": continue
        a = argv(pid)
        if pid == os.getpid() or not a or not (descends(pid) or any(work + "/" in x or x == work for x in a)): continue
        rss, pss, anon = memory(pid)
        out[pid] = {"kind": kind(pid, a, s["comm"]), "ticks": s["ticks"], "child_ticks": s["child_ticks"],
                    "start": s["start"], "rss": rss, "pss": pss, "anon": anon}
    return {"t": time.time(), "procs": out}

def system_busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)  # busy (without idle, iowait), total jiffies

samples, busy0 = [], system_busy()
load0 = open("/proc/loadavg").read().split()[0]
end = time.time() + idle
while True:
    samples.append(sample())
    if time.time() >= end: break
    time.sleep(1)
busy1 = system_busy()
first, last = samples[0], samples[-1]
secs = last["t"] - first["t"]

def group(s, pred):
    ps = [p for p in s["procs"].values() if pred(p)]
    return {"processes": len(ps), "rss": sum(p["rss"] for p in ps), "pss": sum(p["pss"] for p in ps)}

def cpu(a, b, pred):
    """% of one core between samples a and b, processes alive in both (same start)."""
    ticks = 0
    for pid, p in b["procs"].items():
        if not pred(p): continue
        q = a["procs"].get(pid)
        if q and q["start"] == p["start"]: ticks += p["ticks"] - q["ticks"]
    return ticks / HZ / max(b["t"] - a["t"], 1e-9) * 100

sheaf_p = lambda p: p["kind"] != "guest"
guest_p = lambda p: p["kind"] == "guest"
rss_series = [group(s, sheaf_p)["rss"] for s in samples]
pss_series = [group(s, sheaf_p)["pss"] for s in samples]
now = group(last, sheaf_p)
guests = group(last, guest_p)
sheaf_cpu = cpu(first, last, sheaf_p)
guest_cpu = cpu(first, last, guest_p)
srv0, srv1 = first["procs"][server], last["procs"][server]
reaped_cpu = (srv1["child_ticks"] - srv0["child_ticks"]) / HZ / secs * 100
machine_cpu = (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1) * 100 * os.cpu_count()
load1 = open("/proc/loadavg").read().split()[0]

# What `sheaf status` says now, and what this run measured over the very
# interval its footprint covers.
st = json.loads(subprocess.run([sheaf, "status", "-o", "json"], check=True, capture_output=True, text=True).stdout)
fp = st["nodes"][0]["footprint"]
import datetime
f_end = datetime.datetime.fromisoformat(fp["measuredAt"].replace("Z", "+00:00")).timestamp()
f_begin = f_end - fp["intervalSeconds"]
near = lambda t: min(samples, key=lambda s: abs(s["t"] - t))
if f_begin >= first["t"] - 0.5:
    a, b = near(f_begin), near(f_end)
    bench_cpu_same = cpu(a, b, sheaf_p)
    window = f"{b['t'] - a['t']:.0f} s ending {time.time() - f_end:.0f} s ago"
else:
    bench_cpu_same, window = sheaf_cpu, "the whole idle window (the footprint's began before it)"
at_status = near(f_end)
bench_rss_same = group(at_status, sheaf_p)["rss"]

HARVESTER_USED = 12 * 1024 * MiB        # blank single node, "actually use 12Gib memory"
HARVESTER_APISERVER = 2598 * MiB        # kube-apiserver, kubectl top: 2598Mi
HARVESTER_CORES = 0.84                  # blank single node, "actually use 0.84 cores"
HARVESTER_APISERVER_CPU = 9.5           # kube-apiserver 95m
TARGET_RSS = 100e6                      # < 100 MB
TARGET_CPU = 2.0                        # < 2 % of one core
server_rss = last["procs"][server]["rss"]
mean = lambda xs: sum(xs) / len(xs)

print()
print(f"idle {secs:.0f} s, {len(samples)} samples; machine: {os.cpu_count()} cores, load {load0} -> {load1}, "
      f"all processes {machine_cpu:.0f}% of one core meanwhile")
print()
print("| idle, one running VM (128 MiB, a 2-replica volume) | Sheaf | Harvester (blank node) | Harvester / Sheaf | target |")
print("|---|---|---|---|---|")
print(f"| memory, all of Sheaf's processes (RSS, mean / max) | **{mean(rss_series)/MiB:.1f}** / {max(rss_series)/MiB:.1f} MiB "
      f"| ~12 GiB used | {HARVESTER_USED / mean(rss_series):.0f}x | < 100 MB: {'met' if max(rss_series) < TARGET_RSS else 'NOT met'} |")
print(f"| memory, PSS (mean) | {mean(pss_series)/MiB:.1f} MiB | | | |")
print(f"| biggest process | server {server_rss/MiB:.1f} MiB | kube-apiserver 2,598 MiB | {HARVESTER_APISERVER / server_rss:.0f}x | |")
print(f"| CPU, all of Sheaf's processes | **{sheaf_cpu:.2f}%** of one core | 0.84 cores (84%) | {HARVESTER_CORES * 100 / max(sheaf_cpu, 0.01):.0f}x "
      f"| < 2%: {'met' if sheaf_cpu < TARGET_CPU else 'NOT met'} |")
print(f"| CPU, server process | {cpu(first, last, lambda p: p['kind'] == 'server'):.2f}% | kube-apiserver 95m (9.5%) | | |")
print(f"| Sheaf's processes | {now['processes']}: " + ", ".join(sorted(p["kind"] for p in last["procs"].values() if sheaf_p(p))) + " | | | |")
print(f"| guests (apart) | {guests['processes']} QEMU, {guests['rss']/MiB:.0f} MiB RSS, {guest_cpu:.1f}% CPU | | | |")
print(f"| commands the server ran and reaped (not in the CPU above) | {reaped_cpu:.2f}% | | | |")
print()
print("per process (last sample):")
for pid, p in sorted(last["procs"].items(), key=lambda kv: -kv[1]["rss"]):
    print(f"  {pid:>7}  {p['kind']:<12} RSS {p['rss']/MiB:7.1f} MiB  PSS {p['pss']/MiB:7.1f} MiB  "
          f"anonymous {p['anon']/MiB:6.1f} MiB  "
          f"CPU {cpu(first, last, lambda q, pid=pid: q is last['procs'][pid]):5.2f}%")
print()
s_rss, s_cpu = fp["sheaf"]["rssBytes"], fp["sheaf"]["cpuPercent"]
rss_ok = abs(s_rss - bench_rss_same) <= 0.05 * bench_rss_same
cpu_ok = abs(s_cpu - bench_cpu_same) <= max(0.1, 0.1 * bench_cpu_same)
print(f"`sheaf status`: Sheaf {fp['sheaf']['processes']} processes, RSS {s_rss/MiB:.1f} MiB, PSS {fp['sheaf']['pssBytes']/MiB:.1f} MiB, "
      f"CPU {s_cpu:.2f}% over {fp['intervalSeconds']:.0f} s; guests {fp['guests']['processes']}, {fp['guests']['rssBytes']/MiB:.0f} MiB")
print(f"this run, same moment / interval ({window}): {group(at_status, sheaf_p)['processes']} processes, RSS {bench_rss_same/MiB:.1f} MiB, "
      f"CPU {bench_cpu_same:.2f}%: RSS {'agrees' if rss_ok else 'DIFFERS'} "
      f"({(s_rss / bench_rss_same - 1) * 100:+.1f}%), CPU {'agrees' if cpu_ok else 'DIFFERS'} ({s_cpu - bench_cpu_same:+.2f} points)")
if json_out:
    json.dump({"idle_seconds": secs, "sheaf_rss_mean": mean(rss_series), "sheaf_rss_max": max(rss_series),
               "sheaf_pss_mean": mean(pss_series), "sheaf_cpu_percent": sheaf_cpu, "server_rss": server_rss,
               "guests": guests, "guest_cpu_percent": guest_cpu, "reaped_cpu_percent": reaped_cpu,
               "machine_cpu_percent": machine_cpu, "status": fp, "bench_cpu_same_interval": bench_cpu_same,
               "bench_rss_same_moment": bench_rss_same}, open(json_out, "w"), indent=1)
PY
