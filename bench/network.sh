#!/usr/bin/env bash
# The networking benchmark, one command: builds `sheaf` (release) and the
# tiny test guest, makes two "nodes" (network namespaces joined by a Linux
# bridge as the physical switch, as crates/sheaf/tests/support/nodes.rs
# does), runs `sheaf server --no-agent` on the switch and one `sheaf agent`
# per node, and starts on the same nodes, in the same run:
#   - Sheaf: a VM network (NetworkAttachmentDefinition, VLAN 10 on `mgmt`,
#     with an IPPool) and three tiny guests on it, A and B on node 0, C on
#     node 1; Sheaf makes the bridge, the VXLAN device, the taps, DHCP and
#     the QEMU command lines;
#   - the baseline: the same data path built by hand with `ip` (a bridge and
#     a VXLAN device with the same parameters: dstport 4789, learning,
#     local = the node's address, an all-zero FDB entry towards the other
#     node, MTU 1450; taps with MTU 1450 on the bridge) and three QEMUs
#     started by hand with the same guest, vCPUs, memory and virtio-net/tap
#     arguments, addressed statically over their serial consoles.
# Then, RUNS times, alternating which side goes first, it measures from the
# guests' serial consoles: TCP throughput (busybox `dd | nc` to `nc -l`,
# timed with the guest's /proc/uptime) and ping RTT (`ping -c 20 -i 0.2`),
# A->B (same node) and A->C (across the nodes, over VXLAN), and prints the
# medians and the Sheaf/baseline ratios. Results: docs/BENCHMARKS.md
# ("Networking").
#
#   bash bench/network.sh              # 3 runs: about 6 minutes plus the build
#   RUNS=5 MB=48 bash bench/network.sh # runs; MiB per transfer
#   KEEP=1 bash bench/network.sh       # keep the work directory (logs, devices.txt, transfers.log)
#   HOLD=1 bash bench/network.sh       # set up, then wait (to try things on the consoles)
#
# Before measuring it waits until no cargo, rustc, nextest or other QEMU
# runs on the machine (set QUIET_WAIT=0 to skip). It only sends traffic inside the
# namespaces it makes, and on exit (also on error or Ctrl-C) it kills every
# process it started and removes its namespaces and devices.
#
# Needs: root, a Rust toolchain, iproute2, qemu-system-x86, dnsmasq,
# python3 and kubectl (bash scripts/install-deps.sh).
set -euo pipefail
export RUST_LIB_BACKTRACE=${RUST_LIB_BACKTRACE:-0}
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
MB=${MB:-24}
PINGS=${PINGS:-20}
QUIET_WAIT=${QUIET_WAIT:-1}
KEEP=${KEEP:-0}

for c in ip bridge qemu-system-x86_64 dnsmasq python3 kubectl; do
  command -v "$c" >/dev/null || { echo "$c is needed: bash scripts/install-deps.sh" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "run as root (it makes network namespaces)" >&2; exit 1; }

cargo build --release -p sheaf
target_dir=${CARGO_TARGET_DIR:-target}
bash scripts/build-test-guests.sh tiny
guest=$(cd "${SHEAF_GUEST_DIR:-$target_dir/test-guests}/tiny" && pwd)
sheaf=$(cd "$target_dir/release" && pwd)/sheaf

# ---------------------------------------------------------------- names
# Unique per run: from this shell's pid. The switch's subnet, the nodes'
# management subnets and the two VM network subnets are checked to be free.
tag=$$
k=$((tag % 250 + 1))
switch=snb${tag}s
switch_prefix=10.250.$k
switch_ip=$switch_prefix.1
ns=("snb${tag}n0" "snb${tag}n1")
node_ip=("$switch_prefix.10" "$switch_prefix.11")
mgmt_cidr=("10.251.$k.0/24" "10.252.$k.0/24")
sheaf_prefix=172.29.$k     # the Sheaf VM network (IPPool)
base_prefix=172.28.$k      # the baseline network (static addresses)
VLAN=10
SHEAF_VNI=$((4096 + VLAN))
BASE_VNI=$((4096 + VLAN + 1))
for p in "$switch_prefix" "${mgmt_cidr[0]%.0/24}" "${mgmt_cidr[1]%.0/24}" "$sheaf_prefix" "$base_prefix"; do
  if { ip -4 -o addr; ip -4 route; } | grep -qF " $p."; then
    echo "this host already uses $p.0/24; the benchmark needs it" >&2
    exit 1
  fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sheaf-bench-net.XXXXXX")
cleanup() {
  set +e
  local pid args n d dns
  # Agents first (they would recreate what is removed), then everything
  # else that runs from the work directory (server, QEMUs, dnsmasq) or in
  # the namespaces.
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
  done
  # Sheaf's DHCP namespaces (not inside a node's).
  for d in "$WORK"/node-*/vmnet/dhcp/*/netns; do
    [[ -f $d ]] || continue
    dns=$(cat "$d")
    [[ $dns == shd-* && -e /run/netns/$dns ]] && ip netns del "$dns"
  done
  for n in "${ns[@]}"; do [[ -e /run/netns/$n ]] && ip netns del "$n"; done
  for n in 0 1; do ip link del "snb${tag}h$n" 2>/dev/null; done
  ip link del "$switch" 2>/dev/null
  if [[ $KEEP == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

nsx() { local n=$1; shift; ip netns exec "${ns[$n]}" "$@"; }
# shellcheck source=bench/lib/guests.sh
source bench/lib/guests.sh  # (the working directory is the checkout)

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, Linux $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ);" \
  "sheaf $(git describe --always --dirty 2>/dev/null || echo unknown); $(qemu-system-x86_64 --version | head -1)"

# ---------------------------------------------------------------- nodes
log "nodes: namespaces ${ns[*]} on switch $switch ($switch_prefix.0/24)"
ip link add "$switch" type bridge
ip addr add "$switch_ip/24" dev "$switch"
ip link set "$switch" up
for n in 0 1; do
  ip netns add "${ns[$n]}"
  ip link add "snb${tag}h$n" type veth peer name "snb${tag}p$n" netns "${ns[$n]}"
  ip link set "snb${tag}h$n" master "$switch" up
  nsx "$n" ip link set lo up
  nsx "$n" ip addr add "${node_ip[$n]}/24" dev "snb${tag}p$n"
  nsx "$n" ip link set "snb${tag}p$n" up
  mkdir -p "$WORK/node-$n/run" "$WORK/node-$n/images/sheaf_tiny"
  ln -s "$guest/vmlinuz" "$guest/initramfs.cpio.gz" "$WORK/node-$n/images/sheaf_tiny/"
done

# ---------------------------------------------------------------- Sheaf
port=$(free_port "$switch_ip")
"$sheaf" server --no-agent --data-dir "$WORK/server" --listen "$switch_ip:$port" >"$WORK/server.log" 2>&1 &
disown  # killed by the cleanup, without bash's "Killed" notice
for _ in $(seq 200); do [[ -f $WORK/server/admin.kubeconfig && -f $WORK/server/admin.token ]] && break; sleep 0.1; done
export KUBECONFIG=$WORK/server/admin.kubeconfig
for _ in $(seq 100); do kubectl get ns default >/dev/null 2>&1 && break; sleep 0.2; done
for n in 0 1; do
  SHEAF_TOKEN=$(cat "$WORK/server/admin.token") ip netns exec "${ns[$n]}" "$sheaf" agent \
    --server "https://$switch_ip:$port" --ca-file "$WORK/server/pki/ca.crt" \
    --node-name "node-$n" --node-ip "${node_ip[$n]}" \
    --data-dir "$WORK/node-$n" --run-dir "$WORK/node-$n/run" --image-dir "$WORK/node-$n/images" \
    --mgmt-bridge "snb${tag}m" --mgmt-cidr "${mgmt_cidr[$n]}" </dev/null >"$WORK/node-$n/agent.log" 2>&1 &
  disown
done
for n in 0 1; do
  for i in $(seq 300); do
    [[ $(kubectl get node "node-$n" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]] && break
    [[ $i == 300 ]] && { echo "node-$n not Ready" >&2; tail -20 "$WORK/node-$n/agent.log" >&2; exit 1; }
    sleep 0.2
  done
done
log "sheaf server on https://$switch_ip:$port, agents on node-0 (${node_ip[0]}) and node-1 (${node_ip[1]}) Ready"

kubectl apply -f - >/dev/null <<EOF
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: benchnet
  labels:
    network.harvesterhci.io/clusternetwork: mgmt
    network.harvesterhci.io/type: L2VlanNetwork
spec:
  config: '{"cniVersion":"0.3.1","name":"benchnet","type":"bridge","bridge":"mgmt-br","promiscMode":true,"vlan":$VLAN,"ipam":{}}'
---
apiVersion: network.harvesterhci.io/v1alpha1
kind: IPPool
metadata:
  name: benchnet
spec:
  networkName: default/benchnet
  ipv4Config:
    serverIP: $sheaf_prefix.2
    cidr: $sheaf_prefix.0/24
    pool: {start: $sheaf_prefix.10, end: $sheaf_prefix.50}
    leaseTime: 3600
EOF
# The guests: 1 vCPU, 128 MiB, the tiny guest by kernel boot, one NIC on
# the VM network; no display and no hotplug ports, as the baseline.
vm() {
  cat <<EOF
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: $1
spec:
  runStrategy: Always
  template:
    spec:
      nodeSelector:
        kubernetes.io/hostname: $2
      terminationGracePeriodSeconds: 5
      domain:
        cpu: {cores: 1}
        memory: {guest: 128Mi}
        firmware:
          kernelBoot:
            kernelArgs: console=ttyS0 quiet
            container: {image: sheaf/tiny, kernelPath: /vmlinuz, initrdPath: /initramfs.cpio.gz}
        devices:
          autoattachGraphicsDevice: false
          disableHotplug: true
          interfaces:
          - name: net
            bridge: {}
      networks:
      - name: net
        multus: {networkName: benchnet}
EOF
}
guests=(a b c)
guest_node=(0 0 1)
declare -A sock ip
for i in 0 1 2; do vm "${guests[$i]}" "node-${guest_node[$i]}" | kubectl apply -f - >/dev/null; done

# ---------------------------------------------------------------- baseline
# The same data path by hand, in the same node namespaces: bridge + VXLAN
# (another VNI on the same port) + taps, and QEMU with the guest's NIC on
# the tap as Sheaf gives it.
for n in 0 1; do
  peer=${node_ip[$((1 - n))]}
  nsx "$n" ip link add nbbr0 type bridge
  nsx "$n" sysctl -qw net.ipv6.conf.nbbr0.disable_ipv6=1
  nsx "$n" ip link set nbbr0 mtu 1450
  nsx "$n" ip link add nbvx0 type vxlan id "$BASE_VNI" local "${node_ip[$n]}" dstport 4789 learning
  nsx "$n" bridge fdb append 00:00:00:00:00:00 dev nbvx0 dst "$peer"
  nsx "$n" ip link set nbvx0 mtu 1450 master nbbr0 up
  nsx "$n" ip link set nbbr0 up
done

# Sheaf's guests running (QEMU started) on the nodes they were put on.
declare -A uid
for i in 0 1 2; do
  g=${guests[$i]}; n=${guest_node[$i]}
  for t in $(seq 300); do
    [[ $(kubectl get vmi "$g" -o jsonpath='{.status.phase}' 2>/dev/null) == Running ]] && break
    [[ $t == 300 ]] && { echo "VMI $g not Running: $(kubectl get vmi "$g" -o jsonpath='{.status}')" >&2; exit 1; }
    sleep 0.2
  done
  uid[$g]=$(kubectl get vmi "$g" -o jsonpath='{.metadata.uid}')
  [[ $(kubectl get vmi "$g" -o jsonpath='{.status.nodeName}') == "node-$n" ]] || { echo "VMI $g not on node-$n" >&2; exit 1; }
  sock[sheaf-$g]=$WORK/node-$n/run/${uid[$g]}/serial.sock
done
qemu_of() { pgrep -f "qemu-system-x86_64 .*$WORK/node-[01]/run/${uid[$1]}/" | head -1; }

# The accelerator and CPU model Sheaf chose (from its KVM probe): the same.
sheaf_argv=$(tr '\0' '\n' < "/proc/$(qemu_of a)/cmdline")
accel=$(grep -A1 -x -- -accel <<<"$sheaf_argv" | tail -1)
cpu=$(grep -A1 -x -- -cpu <<<"$sheaf_argv" | tail -1)
for i in 0 1 2; do
  g=base-${guests[$i]}; n=${guest_node[$i]}
  d=$WORK/node-$n/base/$g
  mkdir -p "$d"
  nsx "$n" ip tuntap add dev "nbtap$i" mode tap
  nsx "$n" ip link set "nbtap$i" mtu 1450 master nbbr0 up
  nsx "$n" qemu-system-x86_64 -name "guest=$g,debug-threads=on" -nodefaults -no-user-config -accel "$accel" \
    -machine q35,usb=off -cpu "$cpu" -smp 1,sockets=1,cores=1,threads=1 -m 128M \
    -kernel "$guest/vmlinuz" -initrd "$guest/initramfs.cpio.gz" -append "console=ttyS0 quiet" \
    -chardev "socket,id=serial0,path=$d/serial.sock,server=on,wait=off,logfile=$d/serial.log,logappend=on" \
    -serial chardev:serial0 -display none -device virtio-rng-pci \
    -netdev "tap,id=net-net,ifname=nbtap$i,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=net-net,mac=02:5b:00:00:00:0$((i + 1)),id=net,host_mtu=1450" \
    -daemonize -pidfile "$d/qemu.pid"
  sock[base-${guests[$i]}]=$d/serial.sock
  ip[base-${guests[$i]}]=$base_prefix.$((11 + i))
done
log "baseline: bridge nbbr0 + VXLAN nbvx0 (VNI $BASE_VNI) + taps on both nodes, 3 QEMUs started ($accel, -cpu $cpu)"

# ---------------------------------------------------------------- guests up
for i in 0 1 2; do
  g=${guests[$i]}; n=${guest_node[$i]}
  slog=$WORK/node-$n/run/${uid[$g]}/serial.log
  for t in $(seq 600); do
    grep -q "SHEAF-GUEST ip=eth0 $sheaf_prefix\." "$slog" 2>/dev/null && break
    [[ $t == 600 ]] && { echo "guest $g got no address on the VM network: $(cat "$slog")" >&2; exit 1; }
    sleep 0.2
  done
  ip[sheaf-$g]=$(sed -n "s|.*SHEAF-GUEST ip=eth0 \($sheaf_prefix\.[0-9]*\)/.*|\1|p" "$slog" | head -1)
done
for i in 0 1 2; do
  g=base-${guests[$i]}
  console_ready "${sock[$g]}"
  console "${sock[$g]}" 10 "ip addr add ${ip[$g]}/24 dev eth0" >/dev/null
done
for i in 0 1 2; do console_ready "${sock[sheaf-${guests[$i]}]}"; done
log "guests up: sheaf a=${ip[sheaf-a]} b=${ip[sheaf-b]} c=${ip[sheaf-c]}; baseline a=${ip[base-a]} b=${ip[base-b]} c=${ip[base-c]}"

# What each side built: the devices' settings, side by side, and the QEMU
# command lines (in the work directory), plus the guests' NIC MTUs.
{
  for n in 0 1; do
    echo "== node-$n"
    nsx "$n" ip -d link show
    nsx "$n" bridge fdb show | grep -E 'shvx|nbvx' | grep 00:00:00:00:00:00
  done
  for g in a b c; do
    echo "== sheaf QEMU $g: $(tr '\0' ' ' < "/proc/$(qemu_of "$g")/cmdline")"
    echo "== baseline QEMU base-$g: $(tr '\0' ' ' < "/proc/$(cat "$WORK"/node-*/base/base-$g/qemu.pid)/cmdline")"
  done
} >"$WORK/devices.txt" 2>&1
mtus=""
for g in sheaf-a sheaf-c base-a base-c; do
  # shellcheck disable=SC2016  # expanded by the guest's shell
  m=$(console "${sock[$g]}" 10 'echo MTU=$(cat /sys/class/net/eth0/mtu)' | sed -n 's/^MTU=\([0-9]*\).*/\1/p' | tr -d '\r' | head -1)
  mtus+=" $g=$m"
done
log "guest eth0 MTU:$mtus"
sheaf_vx=$(printf 'shvx%06x' "$SHEAF_VNI")
for n in 0 1; do
  s=$(nsx "$n" ip -d -o link show "$sheaf_vx" | grep -o ' mtu [0-9]*\|vxlan id [0-9]*\|local [0-9.]*\|dstport [0-9]*\|nolearning\|ttl [a-z0-9]*\|ageing [0-9]*\|udpcsum\|noudpcsum' | tr '\n' ' ')
  b=$(nsx "$n" ip -d -o link show nbvx0 | grep -o ' mtu [0-9]*\|vxlan id [0-9]*\|local [0-9.]*\|dstport [0-9]*\|nolearning\|ttl [a-z0-9]*\|ageing [0-9]*\|udpcsum\|noudpcsum' | tr '\n' ' ')
  log "node-$n VXLAN: sheaf $sheaf_vx: $s| baseline nbvx0: $b"
done

# Connectivity (and the FDB and ARP caches warmed) on both sides.
for side in sheaf base; do
  for dst in b c; do
    console "${sock[$side-a]}" 30 "ping -c 3 -W 2 ${ip[$side-$dst]} >/dev/null 2>&1; echo RC=\$?" | grep 'RC=0' >/dev/null ||
      { echo "$side: a cannot reach $dst (${ip[$side-$dst]})" >&2; exit 1; }
  done
done

# ---------------------------------------------------------------- measure
# Machine CPU busy (all cores, %) over 3 s.
busy() {
  local a b
  a=$(awk '/^cpu / {print $2+$3+$4+$6+$7+$8, $5}' /proc/stat); sleep 3
  b=$(awk '/^cpu / {print $2+$3+$4+$6+$7+$8, $5}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f", 100 * (y[1]-x[1]) / ((y[1]-x[1]) + (y[2]-x[2]))}'
}

# Mbit/s of one transfer of MB MiB from guest a to guest DST of SIDE.
throughput() {
  local side=$1 dst=$2 out t0 t1 rx host
  # busybox nc quits when its peer half-closes: the listener's input is
  # a pipe that stays open (and empty) until the transfer is over.
  console "${sock[$side-$dst]}" 10 'rm -f /tmp/rx; sleep 900 | nc -l -p 5001 | wc -c >/tmp/rx & sleep 1' >/dev/null
  out=$(console "${sock[$side-a]}" 300 \
    "t0=\$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=64k count=$((MB * 16)) 2>/dev/null | nc ${ip[$side-$dst]} 5001; t1=\$(cut -d' ' -f1 /proc/uptime); echo XFER \$t0 \$t1")
  read -r t0 t1 < <(echo "$out" | tr -d '\r' | sed -n 's/^XFER \([0-9.]*\) \([0-9.]*\).*/\1 \2/p' | head -1)
  host=$(echo "$out" | sed -n 's/^HOST-ELAPSED //p')
  # The listener ends at EOF (wc writes its count then): it must have
  # received every byte.
  # shellcheck disable=SC2016  # expanded by the guest's shell
  rx=$(console "${sock[$side-$dst]}" 30 'while [ ! -s /tmp/rx ]; do sleep 0.1; done; echo RX=$(cat /tmp/rx); killall sleep' | tr -d '\r' | sed -n 's/^RX=\([0-9]*\).*/\1/p' | head -1)
  [[ -n ${t1:-} && ${rx:-0} == $((MB << 20)) ]] || { echo "$side: transfer a->$dst failed (received ${rx:-?} bytes): $out" >&2; exit 1; }
  echo "$side a->$dst: guest $t0..$t1 host ${host}s" >>"$WORK/transfers.log"
  awk -v mb="$MB" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", mb * 8 * 1.048576 / (b - a)}'
}
# Average RTT (ms) of PINGS pings from guest a to guest DST of SIDE.
rtt() {
  local side=$1 dst=$2 out
  out=$(console "${sock[$side-a]}" 60 "ping -q -c $PINGS -i 0.2 ${ip[$side-$dst]}")
  echo "$out" | tr -d '\r' | sed -n 's|.*min/avg/max = [0-9.]*/\([0-9.]*\)/.*|\1|p' | head -1 | grep . ||
    { echo "$side: ping a->$dst failed: $out" >&2; exit 1; }
}

if [[ ${HOLD:-0} == 1 ]]; then
  declare -p sock ip >"$WORK/env"
  log "HOLD: everything is up (sockets and addresses in $WORK/env); Ctrl-C ends it"
  sleep infinity & wait $!
fi
wait_quiet
log "machine busy while everything idles (6 guests, server, 2 agents): $(busy) %"
declare -A res
t_start=$(date +%s)
for r in $(seq "$RUNS"); do
  if ((r % 2)); then order=(sheaf base); else order=(base sheaf); fi
  for what in tput rtt; do
    for dst in b c; do
      for side in "${order[@]}"; do
        # A measurement during which a build or test run started is
        # measured again once the machine is quiet.
        while :; do
          wait_quiet
          if [[ $what == tput ]]; then v=$(throughput "$side" "$dst"); else v=$(rtt "$side" "$dst"); fi
          [[ $QUIET_WAIT == 1 ]] && heavy && { log "run $r $side $what a->$dst: $v, discarded (a build, test run or other QEMU started)"; continue; }
          break
        done
        res[$what-$dst-$side]+="$v "
        log "run $r/$RUNS $side $what a->$dst: $v"
      done
    done
  done
done
log "measured in $(($(date +%s) - t_start)) s"

echo
echo "guest-to-guest, median of $RUNS (runs alternate which side goes first); $MB MiB per transfer, $PINGS pings at 0.2 s"
printf '%-46s %10s %10s %7s   %s\n' "" sheaf baseline ratio "runs (sheaf | baseline)"
for what in tput rtt; do
  for dst in b c; do
    # shellcheck disable=SC2086  # lists of numbers
    s=$(median ${res[$what-$dst-sheaf]})
    # shellcheck disable=SC2086
    b=$(median ${res[$what-$dst-base]})
    where=$([[ $dst == b ]] && echo "same node" || echo "across nodes (VXLAN)")
    if [[ $what == tput ]]; then
      label="TCP throughput, $where (Mbit/s)"; ratio=$(awk -v s="$s" -v b="$b" 'BEGIN {printf "%.3f", s / b}')
    else
      # Lower is better: the ratio is baseline/sheaf, >= 0.95 is the target for both.
      label="ping RTT avg, $where (ms)"; ratio=$(awk -v s="$s" -v b="$b" 'BEGIN {printf "%.3f", b / s}')
    fi
    printf '%-46s %10s %10s %7s   %s| %s\n' "$label" "$s" "$b" "$ratio" "${res[$what-$dst-sheaf]}" "${res[$what-$dst-base]}"
  done
done
echo "ratio: Sheaf's performance relative to the baseline (throughput sheaf/baseline, RTT baseline/sheaf); target >= 0.95"
