#!/bin/busybox sh
# /init of Sheaf's tiny test guest: busybox, the Debian cloud kernel's
# virtio modules, a NoCloud/ConfigDrive seed reader and DHCP. It reports
# what it sees on the serial console as lines starting with "SHEAF-GUEST",
# which tests wait for.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /run /seed /mnt
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio_pci virtio_blk virtio_net virtio_scsi sd_mod sr_mod ahci isofs vfat nls_cp437 nls_iso8859_1 nls_utf8 virtio_console virtio_rng; do
  modprobe "$m" 2>/dev/null
done
sleep 0.5
mdev -s 2>/dev/null
say() { echo "SHEAF-GUEST $*" > /dev/ttyS0; }
say "booted kernel=$(uname -r)"

# The seed: a block device labelled cidata (NoCloud) or config-2 (ConfigDrive).
seed=""
# The label is read from the raw device: the ISO 9660 volume id, or the
# FAT volume label (busybox blkid does not probe these).
label_of() {
  iso=$(dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \0')
  if [ -n "$iso" ]; then echo "$iso"; return; fi
  fat16=$(dd if="$1" bs=1 skip=43 count=11 2>/dev/null | tr -d ' \0')
  fat32=$(dd if="$1" bs=1 skip=71 count=11 2>/dev/null | tr -d ' \0')
  echo "$fat16 $fat32"
}
for dev in /dev/sr* /dev/vd* /dev/sd*; do
  [ -b "$dev" ] || continue
  for label in $(label_of "$dev"); do
    case "$label" in
      cidata|CIDATA|config-2|CONFIG-2)
        mount -o ro "$dev" /seed 2>/dev/null && seed="$dev" && break 2 ;;
    esac
  done
done
if [ -n "$seed" ]; then
  say "seed=$seed"
  ud=""
  for f in /seed/user-data /seed/openstack/latest/user_data; do [ -f "$f" ] && ud="$f" && break; done
  md=""
  for f in /seed/meta-data /seed/openstack/latest/meta_data.json; do [ -f "$f" ] && md="$f" && break; done
  if [ -n "$md" ]; then
    host=$(sed -n 's/^\(local-hostname\|hostname\): *//p; s/.*"hostname": *"\([^"]*\)".*/\1/p' "$md" | head -n1)
    [ -n "$host" ] && hostname "$host" && say "hostname=$host"
  fi
  if [ -n "$ud" ]; then
    # Every line "marker: TEXT" of the user data is echoed; a user data
    # that is a shell script is run.
    sed -n 's/^#* *marker: *//p' "$ud" | while read -r m; do say "marker=$m"; done
    if head -n1 "$ud" | grep -q '^#!'; then sh "$ud" > /dev/ttyS0 2>&1; fi
  fi
else
  say "seed=none"
fi

# Disks other than the seed: report their sizes.
for d in /sys/block/vd* /sys/block/sd*; do
  [ -e "$d" ] || continue
  say "disk=$(basename "$d") sectors=$(cat "$d/size") serial=$(cat "$d/serial" 2>/dev/null)"
done

ip link set lo up
for nic in /sys/class/net/*; do
  n=$(basename "$nic")
  [ "$n" = lo ] && continue
  ip link set "$n" up
  say "nic=$n mac=$(cat "$nic/address")"
  udhcpc -i "$n" -q -n -t 10 -T 1 -s /bin/udhcpc-script >/dev/null 2>&1 && \
    say "ip=$n $(ip -4 -o addr show dev "$n" | awk '{print $4}')"
done
say "ready"

# Stay up. An ACPI power-button press (QEMU system_powerdown) powers off.
mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\npoweroff -f\n' > /etc/acpi/PWRF/00000080
chmod +x /etc/acpi/PWRF/00000080
modprobe button 2>/dev/null
modprobe evdev 2>/dev/null
# acpid opens the event devices present when it starts: wait for them.
for _ in 1 2 3 4 5 6 7 8 9 10; do
  want=$(grep -c 'Handlers=.*event' /proc/bus/input/devices)
  [ "$(ls /dev/input/event* 2>/dev/null | wc -l)" -ge "$want" ] && break
  sleep 0.2
done
mkdir -p /var/log
acpid -c /etc/acpi 2>/dev/null
# A shell on the serial console (for console tests), respawned on exit.
while :; do setsid cttyhack sh; sleep 1; done
