#!/usr/bin/env bash
# The images benchmark, one command: builds `sheaf` (release) and the tiny
# test guest, makes a 2 GiB qcow2 image (1.5 GiB of random data) and, in
# the same run:
#   1. import: `sheaf image create --url` from a loopback HTTP server, against
#      `curl` + `qemu-img convert -O raw` of the same file (the baseline);
#   2. a 20 GiB disk from the image: Sheaf's Volume (spec.image) from
#      `kubectl apply` to its replica serving, and a VM on it from apply to
#      QEMU running, against a full copy of the same image
#      (`qemu-img convert -O raw` + `qemu-img resize 20G`), RUNS times each.
# Prints the figures and the ratios. Results: docs/BENCHMARKS.md ("Images").
#
#   bash bench/images.sh            # 3 runs (about 3 minutes)
#   RUNS=5 bash bench/images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v curl >/dev/null || need+=(curl)
command -v kubectl >/dev/null || { echo "kubectl is needed: bash scripts/install-deps.sh" >&2; exit 1; }
if [[ ${#need[@]} -gt 0 ]]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -p sheaf
target_dir=${CARGO_TARGET_DIR:-target}
bash scripts/build-test-guests.sh tiny
guest=${SHEAF_GUEST_DIR:-$target_dir/test-guests}/tiny
sheaf=$PWD/$target_dir/release/sheaf

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sheaf-bench-images.XXXXXX")
cleanup() {
  set +e
  local pid args
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [[ $pid == "$$" ]] && continue
    args=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || continue
    if [[ $args == *"$WORK"* ]]; then kill -9 "$pid" 2>/dev/null; fi
  done
  ip link del shbimg0 2>/dev/null
  nft delete table ip sheaf-shbimg0 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, Linux $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ);" \
  "sheaf $(git describe --always --dirty 2>/dev/null || echo unknown); $(qemu-img --version | head -1)"

# The image: 2 GiB virtual, 1.5 GiB of random data (incompressible), qcow2.
mkdir -p "$WORK/www" "$WORK/images/sheaf_tiny"
ln -s "$PWD/$guest/vmlinuz" "$PWD/$guest/initramfs.cpio.gz" "$WORK/images/sheaf_tiny/"
truncate -s 2G "$WORK/src.raw"
dd if=/dev/urandom of="$WORK/src.raw" bs=4M count=384 conv=notrunc status=none
qemu-img convert -f raw -O qcow2 "$WORK/src.raw" "$WORK/www/big.qcow2"
rm "$WORK/src.raw"
size=$(stat -c %s "$WORK/www/big.qcow2")
echo "image: qcow2, $((size >> 20)) MiB file, 2 GiB virtual"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$WORK/www" && exec python3 -m http.server --bind 127.0.0.1 "$port" >/dev/null 2>&1) &
api=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$sheaf" server --data-dir "$WORK/data" --listen "127.0.0.1:$api" --image-dir "$WORK/images" --run-dir "$WORK/run" \
  --mgmt-bridge shbimg0 --mgmt-cidr 10.233.77.0/24 >"$WORK/server.log" 2>&1 &
for _ in $(seq 100); do [[ -f $WORK/data/admin.kubeconfig ]] && break; sleep 0.1; done
export KUBECONFIG=$WORK/data/admin.kubeconfig
until kubectl get nodes 2>/dev/null | grep -q Ready; do sleep 0.2; done
sync; echo 3 > /proc/sys/vm/drop_caches || true

# 1. Import.
t0=$(now)
"$sheaf" image create big --url "http://127.0.0.1:$port/big.qcow2" >/dev/null
t1=$(now)
sync
t2=$(now)
curl -s -o "$WORK/dl.qcow2" "http://127.0.0.1:$port/big.qcow2"
qemu-img convert -f qcow2 -O raw "$WORK/dl.qcow2" "$WORK/dl.raw"
sync
t3=$(now)
rm -f "$WORK/dl.qcow2" "$WORK/dl.raw"
imp=$(ms "$t0" "$t1"); base=$(ms "$t2" "$t3")
printf "import (download + convert + checksum every block)   sheaf %6d ms  %5.0f MiB/s   curl+qemu-img %6d ms  %5.0f MiB/s   ratio (throughput) %.2f\n" \
  "$imp" "$(awk -v s="$size" -v t="$imp" 'BEGIN{print s/1048576/(t/1000)}')" "$base" \
  "$(awk -v s="$size" -v t="$base" 'BEGIN{print s/1048576/(t/1000)}')" "$(awk -v a="$imp" -v b="$base" 'BEGIN{print b/a}')"

# 2. A 20 GiB disk from the image, RUNS times.
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
      domain:
        memory: {guest: 128Mi}
        firmware:
          kernelBoot:
            kernelArgs: console=ttyS0 quiet
            container: {image: sheaf/tiny, kernelPath: /vmlinuz, initrdPath: /initramfs.cpio.gz}
        devices:
          disks:
          - name: root
            disk: {bus: virtio}
      volumes:
      - name: root
        persistentVolumeClaim: {claimName: $1}
EOF
}
disk_ms=(); vm_ms=(); copy_ms=()
for i in $(seq "$RUNS"); do
  t0=$(now)
  printf 'apiVersion: sheaf.io/v1alpha1\nkind: Volume\nmetadata: {name: d%s}\nspec: {size: 20Gi, numberOfReplicas: 1, image: default/big}\n' "$i" | kubectl apply -f - >/dev/null
  until [[ $(kubectl get volume "d$i" -o jsonpath='{.status.replicas[0].state}' 2>/dev/null) == Running || \
           $(kubectl get replicas -o jsonpath="{.items[?(@.spec.volumeName==\"d$i\")].status.state}" 2>/dev/null) == Running ]]; do sleep 0.02; done
  t1=$(now)
  vm "d$i" | kubectl apply -f - >/dev/null
  until [[ $(kubectl get vmi "d$i" -o jsonpath='{.status.phase}' 2>/dev/null) == Running ]]; do sleep 0.05; done
  t2=$(now)
  disk_ms+=("$(ms "$t0" "$t1")"); vm_ms+=("$(ms "$t1" "$t2")")
  t0=$(now)
  qemu-img convert -f qcow2 -O raw "$WORK/www/big.qcow2" "$WORK/copy.raw"
  qemu-img resize -f raw "$WORK/copy.raw" 20G >/dev/null
  sync
  t1=$(now)
  rm -f "$WORK/copy.raw"
  copy_ms+=("$(ms "$t0" "$t1")")
  kubectl delete vm "d$i" --wait=false >/dev/null
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
d=$(median "${disk_ms[@]}"); v=$(median "${vm_ms[@]}"); c=$(median "${copy_ms[@]}")
echo "20 GiB disk from the 2 GiB image, median of $RUNS (runs: disk ${disk_ms[*]} ms; VM ${vm_ms[*]} ms; copy ${copy_ms[*]} ms)"
printf "  disk ready (apply Volume -> replica serving)   sheaf %6d ms   full copy (qemu-img convert + resize) %6d ms   ratio %.3f\n" \
  "$d" "$c" "$(awk -v a="$d" -v b="$c" 'BEGIN{print a/b}')"
printf "  VM on it: apply -> QEMU running (VMI Running)  sheaf %6d ms\n" "$v"
