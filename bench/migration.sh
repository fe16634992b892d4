#!/usr/bin/env bash
# The live-migration and failover benchmark, one command: builds `sheaf`
# (release) and the tiny test guest, makes two "nodes" (network namespaces
# on a Linux bridge, as crates/sheaf/tests/support/nodes.rs does), runs
# `sheaf server --no-agent` on the switch and a `sheaf agent` per node, and
# measures in the same run, for guests of each size in SIZES (MiB):
#   - Sheaf: `sheaf vm migrate` of a tiny guest (kernel boot, 1 vCPU, half
#     its memory filled with random data first) from node to node, RUNS
#     times back and forth; downtime and total time as QEMU measured them
#     (the VMI's status.migrationState);
#   - the baseline: two bare QEMUs with the same guest, accelerator, CPU
#     model and memory, started by hand on the same nodes (one with
#     `-incoming tcp:...`), the same memory filled the same way, migrated
#     over the same switch with QMP `migrate` and the same parameters
#     (downtime-limit 100 ms, no bandwidth cap, TLS with a pre-shared key
#     as Sheaf's); `query-migrate`'s figures.
# Then failover: a VM with a 2-replica volume on node-0; every process of
# node-0 is SIGKILLed and its link cut; the time until the VM runs on
# node-1 (server started with --node-grace GRACE). Results:
# docs/BENCHMARKS.md ("Live migration and failover").
#
#   bash bench/migration.sh                  # SIZES="256 1024" RUNS=3 GRACE=30s
#   SIZES=256 RUNS=5 GRACE=10s bash bench/migration.sh
#   KEEP=1 bash bench/migration.sh           # keep the work directory
#
# Before measuring it waits until no cargo, rustc, nextest or other QEMU
# runs (QUIET_WAIT=0 to skip). Traffic stays inside its namespaces; on exit
# it kills what it started and removes its namespaces and devices.
#
# Needs: root, a Rust toolchain, iproute2, qemu-system-x86, dnsmasq,
# python3 and kubectl (bash scripts/install-deps.sh).
set -euo pipefail
export RUST_LIB_BACKTRACE=${RUST_LIB_BACKTRACE:-0}
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"256 1024"}
RUNS=${RUNS:-3}
GRACE=${GRACE:-30s}
QUIET_WAIT=${QUIET_WAIT:-1}
KEEP=${KEEP:-0}

for c in ip qemu-system-x86_64 dnsmasq python3 kubectl; do
  command -v "$c" >/dev/null || { echo "$c is needed: bash scripts/install-deps.sh" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "run as root (it makes network namespaces)" >&2; exit 1; }

cargo build --release -p sheaf
target_dir=${CARGO_TARGET_DIR:-target}
bash scripts/build-test-guests.sh tiny
guest=$(cd "${SHEAF_GUEST_DIR:-$target_dir/test-guests}/tiny" && pwd)
sheaf=$(cd "$target_dir/release" && pwd)/sheaf

tag=$$
k=$((tag % 250 + 1))
switch=smb${tag}s
switch_prefix=10.253.$k
switch_ip=$switch_prefix.1
ns=("smb${tag}n0" "smb${tag}n1")
node_ip=("$switch_prefix.10" "$switch_prefix.11")
mgmt_cidr="10.254.$k.0/24"   # the same management subnet on both nodes
for p in "$switch_prefix" "${mgmt_cidr%.0/24}"; do
  if { ip -4 -o addr; ip -4 route; } | grep -qF " $p."; then
    echo "this host already uses $p.0/24; the benchmark needs it" >&2
    exit 1
  fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sheaf-bench-mig.XXXXXX")
cleanup() {
  set +e
  local pid args n
  for pid in $(pgrep -f "$sheaf agent .*$WORK/"); do kill -9 "$pid" 2>/dev/null; done
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    [[ $pid == "$$" ]] && continue
    args=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || continue
    if [[ $args == *"$WORK/"* ]]; then kill -9 "$pid" 2>/dev/null; fi
  done
  for n in "${ns[@]}"; do
    [[ -e /run/netns/$n ]] || continue
    for _ in 1 2 3 4 5; do
      pid=$(ip netns pids "$n" 2>/dev/null | tr '\n' ' ')
      [[ -z ${pid// /} ]] && break
      # shellcheck disable=SC2086
      kill -9 $pid 2>/dev/null
      sleep 0.2
    done
    ip netns del "$n"
  done
  for n in 0 1; do ip link del "smb${tag}h$n" 2>/dev/null; done
  ip link del "$switch" 2>/dev/null
  if [[ $KEEP == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

nsx() { local n=$1; shift; ip netns exec "${ns[$n]}" "$@"; }
# shellcheck source=bench/lib/guests.sh
source bench/lib/guests.sh  # (the working directory is the checkout)

# QMP: runs commands (JSON, one per argument) on a QEMU's monitor socket
# and prints the last answer.
qmp() {
  python3 - "$@" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
def rd():
    while True:
        m = json.loads(f.readline())
        if "event" not in m:
            return m
rd(); f.write('{"execute":"qmp_capabilities"}\n'); f.flush(); rd()
ans = None
for c in sys.argv[2:]:
    f.write(c + "\n"); f.flush(); ans = rd()
    if "error" in ans:
        sys.exit(f"QMP {c}: {ans['error']}")
print(json.dumps(ans.get("return")))
EOF
}

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, Linux $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ);" \
  "sheaf $(git describe --always --dirty 2>/dev/null || echo unknown); $(qemu-system-x86_64 --version | head -1)"

# ---------------------------------------------------------------- nodes
ip link add "$switch" type bridge
ip addr add "$switch_ip/24" dev "$switch"
ip link set "$switch" up
for n in 0 1; do
  ip netns add "${ns[$n]}"
  ip link add "smb${tag}h$n" type veth peer name "smb${tag}p$n" netns "${ns[$n]}"
  ip link set "smb${tag}h$n" master "$switch" up
  nsx "$n" ip link set lo up
  nsx "$n" ip addr add "${node_ip[$n]}/24" dev "smb${tag}p$n"
  nsx "$n" ip link set "smb${tag}p$n" up
  mkdir -p "$WORK/node-$n/run" "$WORK/node-$n/images/sheaf_tiny"
  ln -s "$guest/vmlinuz" "$guest/initramfs.cpio.gz" "$WORK/node-$n/images/sheaf_tiny/"
done
port=$(free_port "$switch_ip")
"$sheaf" server --no-agent --data-dir "$WORK/server" --listen "$switch_ip:$port" --node-grace "$GRACE" >"$WORK/server.log" 2>&1 &
disown
for _ in $(seq 200); do [[ -f $WORK/server/admin.kubeconfig && -f $WORK/server/admin.token ]] && break; sleep 0.1; done
export KUBECONFIG=$WORK/server/admin.kubeconfig
for _ in $(seq 100); do kubectl get ns default >/dev/null 2>&1 && break; sleep 0.2; done
start_agent() {
  SHEAF_TOKEN=$(cat "$WORK/server/admin.token") ip netns exec "${ns[$1]}" "$sheaf" agent \
    --server "https://$switch_ip:$port" --ca-file "$WORK/server/pki/ca.crt" \
    --node-name "node-$1" --node-ip "${node_ip[$1]}" \
    --data-dir "$WORK/node-$1" --run-dir "$WORK/node-$1/run" --image-dir "$WORK/node-$1/images" \
    --mgmt-bridge "smb${tag}m" --mgmt-cidr "$mgmt_cidr" </dev/null >>"$WORK/node-$1/agent.log" 2>&1 &
  disown
}
for n in 0 1; do start_agent "$n"; done
for n in 0 1; do
  for i in $(seq 300); do
    [[ $(kubectl get node "node-$n" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]] && break
    [[ $i == 300 ]] && { echo "node-$n not Ready" >&2; tail -20 "$WORK/node-$n/agent.log" >&2; exit 1; }
    sleep 0.2
  done
done
log "sheaf server on https://$switch_ip:$port (--node-grace $GRACE), agents on node-0 and node-1 Ready"

vm() {  # NAME MEMORY_MIB [CLAIM]
  local disks="" vols=""
  if [[ -n ${3:-} ]]; then
    disks=$'\n          disks:\n          - name: data\n            disk: {bus: virtio}'
    vols=$'\n      volumes:\n      - name: data\n        persistentVolumeClaim: {claimName: '"$3"'}'
  fi
  cat <<EOF
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: $1
spec:
  runStrategy: Always
  template:
    spec:
      terminationGracePeriodSeconds: 5
      domain:
        cpu: {cores: 1}
        memory: {guest: ${2}Mi}
        firmware:
          kernelBoot:
            kernelArgs: console=ttyS0 quiet
            container: {image: sheaf/tiny, kernelPath: /vmlinuz, initrdPath: /initramfs.cpio.gz}
        devices:
          autoattachGraphicsDevice: false
          disableHotplug: true$disks
          interfaces:
          - name: default
            masquerade: {}
      networks:
      - name: default
        pod: {}$vols
EOF
}
running_on() {  # NAME -> "UID NODE" once Running
  local t
  for t in $(seq 600); do
    if [[ $(kubectl get vmi "$1" -o jsonpath='{.status.phase}' 2>/dev/null) == Running ]]; then
      kubectl get vmi "$1" -o jsonpath='{.metadata.uid} {.status.nodeName}{"\n"}'
      return
    fi
    sleep 0.2
  done
  echo "VMI $1 not Running: $(kubectl get vmi "$1" -o jsonpath='{.status}')" >&2
  exit 1
}
fill() {  # SOCKET MIB: random data in the guest's memory (its rootfs is RAM)
  console "$1" 600 "dd if=/dev/urandom of=/fill bs=1M count=$2 2>/dev/null; sync" >/dev/null
}

declare -A s_down s_total b_down b_total
for size in $SIZES; do
  # ------------------------------------------------------------ Sheaf
  name=mig-$size
  # It starts on node-0 (node-1 cordoned meanwhile), then goes back and forth.
  "$sheaf" node cordon node-1 >/dev/null
  vm "$name" "$size" | kubectl apply -f - >/dev/null
  read -r uid node < <(running_on "$name")
  "$sheaf" node uncordon node-1 >/dev/null
  sock=$WORK/$node/run/$uid/serial.sock
  console_ready "$sock"
  fill "$sock" $((size / 2))
  # The same from QEMU's point of view for the baseline.
  sheaf_argv=$(tr '\0' '\n' < "/proc/$(pgrep -f "qemu-system-x86_64 .*$WORK/$node/run/$uid/" | head -1)/cmdline")
  accel=$(grep -A1 -x -- -accel <<<"$sheaf_argv" | tail -1)
  cpu=$(grep -A1 -x -- -cpu <<<"$sheaf_argv" | tail -1)
  wait_quiet
  downs=() totals=()
  for r in $(seq "$RUNS"); do
    to=node-$(( r % 2 ))
    out=$("$sheaf" vm migrate "$name" --node "$to" --timeout 600 2>&1) ||
      { echo "migration $r of $name failed: $out" >&2; exit 1; }
    d=$(sed -n 's/.*downtime \([0-9]*\) ms, total \([0-9]*\) ms.*/\1/p' <<<"$out")
    t=$(sed -n 's/.*downtime \([0-9]*\) ms, total \([0-9]*\) ms.*/\2/p' <<<"$out")
    downs+=("$d"); totals+=("$t")
    log "sheaf $size MiB run $r → $to: downtime $d ms, total $t ms"
  done
  s_down[$size]=$(median "${downs[@]}"); s_total[$size]=$(median "${totals[@]}")
  kubectl delete vm "$name" --wait=true >/dev/null

  # ------------------------------------------------------------ baseline
  d0=$WORK/base-$size
  mkdir -p "$d0"
  psk=$WORK/base-psk
  mkdir -p "$psk"
  (umask 077; echo "sheaf:$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$psk/keys.psk")
  base_qemu() {  # NODE DIR [QEMU ARGS...]: with TLS credentials to receive
    local n=$1 d=$2; shift 2
    mkdir -p "$d"
    nsx "$n" qemu-system-x86_64 -name "guest=base-$size" -nodefaults -no-user-config -accel "$accel" \
      -machine q35,usb=off -cpu "$cpu" -smp 1,sockets=1,cores=1,threads=1 -m "${size}M" \
      -kernel "$guest/vmlinuz" -initrd "$guest/initramfs.cpio.gz" -append "console=ttyS0 quiet" \
      -chardev "socket,id=serial0,path=$d/serial.sock,server=on,wait=off" -serial chardev:serial0 \
      -qmp "unix:$d/qmp.sock,server=on,wait=off" -display none -device virtio-rng-pci \
      -object "tls-creds-psk,id=tls0,endpoint=server,dir=$psk" \
      -daemonize -pidfile "$d/qemu.pid" "$@"
  }
  src=0; sdir=$d0/run0
  base_qemu 0 "$sdir"
  console_ready "$sdir/serial.sock"
  fill "$sdir/serial.sock" $((size / 2))
  wait_quiet
  downs=() totals=()
  for r in $(seq "$RUNS"); do
    dst=$((1 - src)); ddir=$d0/run$r
    mport=$(nsx "$dst" python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "${node_ip[$dst]}")
    base_qemu "$dst" "$ddir" -incoming defer
    for _ in $(seq 50); do [[ -S $ddir/qmp.sock ]] && break; sleep 0.1; done
    qmp "$ddir/qmp.sock" '{"execute":"migrate-set-parameters","arguments":{"tls-creds":"tls0"}}' \
      "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"tcp:${node_ip[$dst]}:$mport\"}}" >/dev/null
    # Credentials to send with, as Sheaf adds them before it migrates.
    qmp "$sdir/qmp.sock" \
      "{\"execute\":\"object-add\",\"arguments\":{\"qom-type\":\"tls-creds-psk\",\"id\":\"send$r\",\"endpoint\":\"client\",\"dir\":\"$psk\",\"username\":\"sheaf\"}}" \
      "{\"execute\":\"migrate-set-parameters\",\"arguments\":{\"downtime-limit\":100,\"max-bandwidth\":10737418240,\"tls-creds\":\"send$r\"}}" \
      "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"tcp:${node_ip[$dst]}:$mport\"}}" >/dev/null
    while :; do
      info=$(qmp "$sdir/qmp.sock" '{"execute":"query-migrate"}')
      st=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("status",""))' "$info")
      [[ $st == completed ]] && break
      [[ $st == failed || $st == cancelled ]] && { echo "baseline migration failed: $info" >&2; exit 1; }
      sleep 0.1
    done
    d=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["downtime"])' "$info")
    t=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["total-time"])' "$info")
    downs+=("$d"); totals+=("$t")
    log "baseline $size MiB run $r → node-$dst: downtime $d ms, total $t ms"
    kill -9 "$(cat "$sdir/qemu.pid")" 2>/dev/null || true
    src=$dst; sdir=$ddir
  done
  b_down[$size]=$(median "${downs[@]}"); b_total[$size]=$(median "${totals[@]}")
  kill -9 "$(cat "$sdir/qemu.pid")" 2>/dev/null || true
done

# ---------------------------------------------------------------- failover
"$sheaf" volume create fo-data --size 64Mi --replicas 2 >/dev/null
"$sheaf" node cordon node-1 >/dev/null
vm fo 128 fo-data | kubectl apply -f - >/dev/null
read -r fo_uid _ < <(running_on fo)
"$sheaf" node uncordon node-1 >/dev/null
console_ready "$WORK/node-0/run/$fo_uid/serial.sock"
log "failover: killing every process of node-0 and cutting its link"
t0=$(date +%s.%N)
for _ in 1 2 3 4 5; do
  pids=$(ip netns pids "${ns[0]}" | tr '\n' ' ')
  [[ -z ${pids// /} ]] && break
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null || true
  sleep 0.1
done
ip link set "smb${tag}h0" down
while :; do
  now=$(kubectl get vmi fo -o jsonpath='{.metadata.uid} {.status.phase} {.status.nodeName}' 2>/dev/null || true)
  read -r u p n <<<"$now"
  [[ ${u:-} != "$fo_uid" && ${p:-} == Running && ${n:-} == node-1 ]] && break
  (( $(date +%s) - ${t0%.*} > 300 )) && { echo "no failover within 300 s: $now" >&2; exit 1; }
  sleep 0.2
done
failover=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
log "failover: running on node-1 after $failover s"

echo
echo "Live migration (median of $RUNS; QEMU's downtime and total time; target: downtime < 100 ms):"
printf '  %-8s %-22s %-22s %s\n' "guest" "Sheaf down/total ms" "bare QEMU down/total" "ratio total (Sheaf/QEMU)"
for size in $SIZES; do
  ratio=$(python3 -c "import sys; print(f'{float(sys.argv[1]) / max(float(sys.argv[2]), 1):.2f}')" "${s_total[$size]}" "${b_total[$size]}")
  printf '  %-8s %-22s %-22s %s\n' "${size}MiB" "${s_down[$size]} / ${s_total[$size]}" "${b_down[$size]} / ${b_total[$size]}" "$ratio"
done
echo "Failover (node lost → VM running on the other node, --node-grace $GRACE): ${failover} s (target < 30 s; Harvester: minutes)"
