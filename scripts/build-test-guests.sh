#!/usr/bin/env bash
# Builds the test guests from Debian packages, cached under
# target/test-guests (or $SHEAF_GUEST_DIR):
#   tiny/vmlinuz, tiny/initramfs.cpio.gz  Debian cloud kernel + busybox
#       initramfs that reads a NoCloud/ConfigDrive seed, runs DHCP and
#       reports "SHEAF-GUEST ..." lines on the serial console.
# Rebuilt only when this script or the init scripts change.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${SHEAF_GUEST_DIR:-$ROOT/target/test-guests}
SRC="$ROOT/tests/guests"
stamp=$(cat "$0" "$SRC"/tiny-init.sh "$SRC"/udhcpc-script.sh | sha256sum | cut -c1-16)
if [[ -f "$OUT/tiny/.stamp" && $(cat "$OUT/tiny/.stamp") == "$stamp" ]]; then
  exit 0
fi

need=()
for p in busybox-static cpio kmod; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [[ ${#need[@]} -gt 0 ]]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image/{print $2; exit}')
(cd "$work" && apt-get download "$kpkg" >/dev/null)
dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
kver=$(ls "$work/k/lib/modules")
depmod -b "$work/k" "$kver"

rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,sbin,etc,proc,sys,dev,tmp,run,lib/modules/"$kver"}
cp /bin/busybox "$rootfs/bin/busybox"
install -m 0755 "$SRC/tiny-init.sh" "$rootfs/init"
install -m 0755 "$SRC/udhcpc-script.sh" "$rootfs/bin/udhcpc-script"

# The modules the init loads, with their dependencies.
mods="virtio_pci virtio_blk virtio_net virtio_scsi sr_mod ahci isofs vfat nls_cp437 nls_iso8859_1 nls_utf8 virtio_console virtio_rng button evdev"
kmods="$work/k/lib/modules/$kver"
declare -A want=()
for m in $mods; do
  while read -r dep; do
    [[ -n "$dep" ]] && want["$dep"]=1
  done < <(modprobe -d "$work/k" -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}')
done
for f in "${!want[@]}"; do
  rel=${f#"$work/k/"}
  mkdir -p "$rootfs/$(dirname "$rel")"
  cp "$f" "$rootfs/$rel"
done
cp "$kmods"/modules.{dep,alias,builtin,order} "$rootfs/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$rootfs" "$kver"

mkdir -p "$OUT/tiny"
cp "$work/k/boot/vmlinuz-$kver" "$OUT/tiny/vmlinuz"
(cd "$rootfs" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/tiny/initramfs.cpio.gz"
echo "$stamp" > "$OUT/tiny/.stamp"
echo "tiny guest: $OUT/tiny (kernel $kver, ${#want[@]} modules)"
