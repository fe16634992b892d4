#!/usr/bin/env bash
# Builds the test guests from Debian packages, cached under
# target/test-guests (or $SHEAF_GUEST_DIR):
#   tiny/vmlinuz, tiny/initramfs.cpio.gz  Debian cloud kernel + busybox
#       initramfs that reads a NoCloud/ConfigDrive seed, runs DHCP and
#       reports "SHEAF-GUEST ..." lines on the serial console.
#   tiny/disk.img  the same guest as a 64 MiB BIOS-bootable raw disk
#       (SYSLINUX on FAT), for VMs booted from an image.
#   full/vmlinuz, full/initrd.img, full/disk.qcow2  Debian bookworm cloud
#       guest (systemd, cloud-init, OpenSSH, qemu-guest-agent) whose disk is
#       a bare ext4 filesystem labelled "rootfs" (no partition table, 2 GiB
#       virtual). Boot it by kernel: -kernel vmlinuz -initrd initrd.img
#       -append "root=LABEL=rootfs rw console=ttyS0", the disk on virtio-blk.
#       cloud-init reads a NoCloud (volume label cidata) or ConfigDrive seed
#       (tests/guests/full/90-sheaf.cfg), and runs without one too (None
#       datasource); either way its fallback brings up DHCP on the first NIC
#       via ifupdown. The default user is "debian" (passwordless sudo; root
#       SSH is refused by cloud-init's disable_root). "SHEAF-GUEST ready ..."
#       is printed on the serial console once cloud-init has finished.
#       The Debian cloud kernel has no AHCI driver: attach the seed on
#       virtio-blk, not as a SATA cdrom on q35.
#
# Usage: scripts/build-test-guests.sh [tiny|full|all]   (default: all)
#
# Each guest is rebuilt only when its own recipe (its build_* function
# below) or its input files under tests/guests change; its .stamp is removed
# before and written only after a successful build, so an interrupted build
# is redone on the next run. Missing host packages are installed with apt.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${SHEAF_GUEST_DIR:-$ROOT/target/test-guests}
SRC="$ROOT/tests/guests"
what=${1:-all}
case "$what" in
  tiny | full | all) ;;
  *) echo "usage: $0 [tiny|full|all]" >&2; exit 2 ;;
esac

# Work directories, removed on exit. debootstrap bind-mounts /dev nodes,
# /proc and /sys into its target; anything left mounted is unmounted first
# and rm never leaves the work directory's filesystem.
WORKS=()
cleanup() {
  local w m
  for w in "${WORKS[@]}"; do
    awk -v p="$w/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$w"
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Sets WORK to a new work directory.
mkwork() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/sheaf-guest.XXXXXX")
  WORKS+=("$WORK")
}

# Installs the Debian packages given that are not installed yet.
need_pkgs() {
  local need=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [[ ${#need[@]} -gt 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# The Debian mirror apt uses here ($SHEAF_DEBIAN_MIRROR overrides it).
debian_mirror() {
  local m=${SHEAF_DEBIAN_MIRROR:-}
  if [[ -z "$m" ]]; then
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
      grep -v '^[[:space:]]*#' | grep -oE 'https?://[^[:space:]]+/debian/?([[:space:]]|$)' | head -n1 | tr -d '[:space:]' || true)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

build_tiny() {
  need_pkgs busybox-static cpio kmod
  mkwork
  local work=$WORK
  local kpkg kver
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image/{print $2; exit}')
  (cd "$work" && apt-get download "$kpkg" >/dev/null)
  dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
  kver=$(ls "$work/k/lib/modules")
  depmod -b "$work/k" "$kver"

  local rootfs="$work/rootfs"
  mkdir -p "$rootfs"/{bin,sbin,etc,proc,sys,dev,tmp,run,lib/modules/"$kver"}
  cp /bin/busybox "$rootfs/bin/busybox"
  install -m 0755 "$SRC/tiny-init.sh" "$rootfs/init"
  install -m 0755 "$SRC/udhcpc-script.sh" "$rootfs/bin/udhcpc-script"

  # The modules the init loads, with their dependencies.
  local mods="virtio_pci virtio_blk virtio_net virtio_scsi sd_mod sr_mod ahci isofs vfat nls_cp437 nls_iso8859_1 nls_utf8 virtio_console virtio_rng button evdev"
  local kmods="$work/k/lib/modules/$kver"
  local -A want=()
  local m dep f rel
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
  # The same guest as a BIOS-bootable disk image, for VMs that boot from an
  # image as a user's do (the web UI's test uploads it): a FAT file system
  # over the whole disk (no partition table) with SYSLINUX, the kernel and
  # the initramfs.
  need_pkgs syslinux syslinux-common mtools dosfstools
  local disk="$work/disk.img"
  truncate -s 64M "$disk"
  mkfs.vfat -n SHEAFTINY "$disk" >/dev/null
  printf 'DEFAULT sheaf\nPROMPT 0\nTIMEOUT 0\nLABEL sheaf\n  KERNEL /vmlinuz\n  INITRD /initramfs.cpio.gz\n  APPEND console=ttyS0 quiet\n' \
    > "$work/syslinux.cfg"
  mcopy -i "$disk" "$OUT/tiny/vmlinuz" "$OUT/tiny/initramfs.cpio.gz" "$work/syslinux.cfg" ::/
  syslinux --install "$disk"
  cp --sparse=always "$disk" "$OUT/tiny/disk.img"
  echo "tiny guest: $OUT/tiny (kernel $kver, ${#want[@]} modules; disk.img boots it by SYSLINUX)"
}

build_full() {
  need_pkgs debootstrap e2fsprogs qemu-utils
  mkwork
  local work=$WORK
  local rootfs="$work/rootfs" full="$SRC/full" mirror
  mirror=$(debian_mirror)
  local pkgs=(python3-cffi-backend linux-image-cloud-amd64 systemd-sysv udev dbus
    cloud-init openssh-server ifupdown isc-dhcp-client iproute2 iputils-ping
    netbase sudo ca-certificates procps qemu-guest-agent e2fsprogs)
  local incl
  incl=$(IFS=,; echo "${pkgs[*]}")
  echo "full guest: debootstrap bookworm from $mirror"
  if ! debootstrap --arch=amd64 --variant=minbase --include="$incl" \
    bookworm "$rootfs" "$mirror" > "$work/debootstrap.out" 2>&1; then
    tail -n 30 "$work/debootstrap.out" >&2
    [[ -f "$rootfs/debootstrap/debootstrap.log" ]] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
    echo "full guest: debootstrap failed" >&2
    return 1
  fi

  # cloud-init: the seed sources, no locale generation, /etc/hosts.
  install -D -m 0644 "$full/90-sheaf.cfg" "$rootfs/etc/cloud/cloud.cfg.d/90-sheaf.cfg"
  # cloud-init runs without a seed too (None datasource: DHCP, host keys).
  install -m 0644 "$full/ds-identify.cfg" "$rootfs/etc/cloud/ds-identify.cfg"
  # Units: host keys if cloud-init made none, and the "ready" console line.
  local sd="$rootfs/etc/systemd/system" u
  install -m 0755 "$full/sheaf-ready.sh" "$rootfs/usr/local/sbin/sheaf-ready"
  for u in sheaf-ssh-hostkeys.service sheaf-ready.service; do
    install -m 0644 "$full/$u" "$sd/$u"
    ln -sfn "/etc/systemd/system/$u" "$sd/multi-user.target.wants/$u"
  done
  # Nothing waits for systemd-networkd (ifupdown configures the network),
  # and no apt runs behind the tests' back.
  for u in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer; do
    ln -sfn /dev/null "$sd/$u"
  done
  # qemu-guest-agent runs whenever the virtio-serial port
  # org.qemu.guest_agent.0 appears: the package's udev rule wants it for that
  # device (SYSTEMD_WANTS); the .wants link says the same to systemd.
  if ! grep -qs 'SYSTEMD_WANTS.*qemu-guest-agent' "$rootfs"/lib/udev/rules.d/*qemu-guest-agent*.rules ||
    [[ ! -f "$rootfs/lib/systemd/system/qemu-guest-agent.service" ]]; then
    echo "full guest: qemu-guest-agent's unit or udev rule is missing" >&2
    return 1
  fi
  local qga='dev-virtio\x2dports-org.qemu.guest_agent.0.device'
  mkdir -p "$sd/$qga.wants"
  ln -sfn /lib/systemd/system/qemu-guest-agent.service "$sd/$qga.wants/qemu-guest-agent.service"
  # Networking: with no network config in the seed, cloud-init's fallback
  # writes DHCP on the first NIC to /etc/network/interfaces.d (ifupdown).
  if ! grep -q '^source /etc/network/interfaces.d/\*' "$rootfs/etc/network/interfaces"; then
    echo "full guest: /etc/network/interfaces does not read interfaces.d" >&2
    return 1
  fi

  # First-boot state: no SSH host keys (cloud-init or sheaf-ssh-hostkeys
  # make them), a fresh machine id, no root password, the host's resolver
  # and hostname not inherited, no apt lists or package cache.
  rm -f "$rootfs"/etc/ssh/ssh_host_*
  : > "$rootfs/etc/machine-id"
  rm -f "$rootfs/var/lib/dbus/machine-id"
  ln -s /etc/machine-id "$rootfs/var/lib/dbus/machine-id"
  sed -i 's/^root:[^:]*:/root:*:/' "$rootfs/etc/shadow"
  rm -f "$rootfs/etc/resolv.conf"
  echo debian > "$rootfs/etc/hostname"
  echo 'LABEL=rootfs / ext4 rw,errors=remount-ro 0 1' > "$rootfs/etc/fstab"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  rm -rf "$rootfs"/var/lib/cloud "$rootfs"/var/log/journal/*

  local kernels=("$rootfs"/boot/vmlinuz-*)
  [[ ${#kernels[@]} -eq 1 && -f "${kernels[0]}" ]] || { echo "full guest: expected one kernel in /boot" >&2; return 1; }
  local kver=${kernels[0]##*/vmlinuz-}
  [[ -f "$rootfs/boot/initrd.img-$kver" ]] || { echo "full guest: no initrd for $kver" >&2; return 1; }

  local img="$work/rootfs.img"
  truncate -s 2G "$img"
  mkfs.ext4 -q -F -L rootfs -d "$rootfs" "$img"
  e2fsck -fn "$img" > "$work/fsck.out" 2>&1 || { cat "$work/fsck.out" >&2; return 1; }

  # New files are renamed into place: a running VM keeps the old ones.
  local dir="$OUT/full"
  mkdir -p "$dir"
  # zstd: as small as zlib, compresses ~7x faster (QEMU >= 5.1 reads it).
  qemu-img convert -q -c -o compression_type=zstd -O qcow2 "$img" "$dir/disk.qcow2.tmp"
  cp "$rootfs/boot/vmlinuz-$kver" "$dir/vmlinuz.tmp"
  cp "$rootfs/boot/initrd.img-$kver" "$dir/initrd.img.tmp"
  mv -f "$dir/disk.qcow2.tmp" "$dir/disk.qcow2"
  mv -f "$dir/vmlinuz.tmp" "$dir/vmlinuz"
  mv -f "$dir/initrd.img.tmp" "$dir/initrd.img"
  echo "full guest: $dir (kernel $kver, disk $(du -h "$dir/disk.qcow2" | cut -f1))"
}

# The stamp of a guest: its build function and its input files.
stamp_of() {
  local name=$1 f
  local inputs=()
  case "$name" in
    tiny) inputs=("$SRC/tiny-init.sh" "$SRC/udhcpc-script.sh") ;;
    full) mapfile -t inputs < <(find "$SRC/full" -type f | LC_ALL=C sort) ;;
  esac
  {
    declare -f "build_$name"
    for f in "${inputs[@]}"; do
      echo "== ${f#"$SRC/"}"
      cat "$f"
    done
  } | sha256sum | cut -c1-16
}

build() {
  local name=$1 stamp
  stamp=$(stamp_of "$name")
  if [[ -f "$OUT/$name/.stamp" && $(cat "$OUT/$name/.stamp") == "$stamp" ]]; then
    return 0
  fi
  rm -f "$OUT/$name/.stamp"
  "build_$name"
  echo "$stamp" > "$OUT/$name/.stamp"
}

case "$what" in
  tiny) build tiny ;;
  full) build full ;;
  all) build tiny; build full ;;
esac
