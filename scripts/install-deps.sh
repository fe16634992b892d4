#!/usr/bin/env bash
# Installs the Debian packages Sheaf needs to build and run, and, with
# --test, those its test suite needs. Idempotent; needs root.
set -euo pipefail

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# Build, and what a node runs: QEMU, the management network's bridge,
# DHCP (dnsmasq) and NAT (nftables), and etcd (the store of an HA control
# plane: `sheaf server --cluster-init` runs its own member).
packages=(build-essential pkg-config protobuf-compiler ca-certificates curl
  qemu-system-x86 qemu-utils iproute2 dnsmasq-base nftables etcd-server)
if [[ $want_test -eq 1 ]]; then
  # Test guests (built from Debian packages), the tools tests drive
  # guests and volumes with, and the browser the web UI's test drives.
  packages+=(genisoimage busybox-static cpio kmod debootstrap e2fsprogs dosfstools mtools
    iputils-ping openssh-client python3 python3-venv procps syslinux syslinux-common zstd
    chromium)
fi
etcd_was_installed=0
dpkg-query -W -f='${Status}' etcd-server 2>/dev/null | grep -q "install ok installed" && etcd_was_installed=1

# Twice: installing one package can remove another that conflicts with it
# (Debian's qemu-system-x86 removes a backported qemu-utils), and the
# second pass puts back the matching version.
updated=0
for _pass in 1 2; do
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && break
  echo "installing: ${missing[*]}"
  if [[ $updated -eq 0 ]]; then $SUDO apt-get update -qq; updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
done

# etcd-server's package starts a system etcd on 127.0.0.1:2379, the port
# of the member `sheaf server --cluster-init` runs itself; Sheaf's tests
# start their own too. Stop it when this script installed it (or for the
# tests); a system etcd that was there before is left alone.
if { [[ $want_test -eq 1 ]] || [[ $etcd_was_installed -eq 0 ]]; } && command -v systemctl >/dev/null \
  && systemctl is-active --quiet etcd 2>/dev/null; then
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi

# Node.js and npm build the web UI (scripts/build-ui.sh) from its npm
# packages; Debian's are recent enough. Kept when a newer one is there.
if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  echo "installing: nodejs npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "error: no Rust toolchain: install Rust 1.85 or newer with rustup, then run this again" >&2
  exit 1
fi

if [[ $want_test -eq 1 ]]; then
  if ! command -v cargo-nextest >/dev/null; then
    cargo install --locked cargo-nextest
  fi
  if ! command -v kubectl >/dev/null; then
    # Debian's own kubectl is old but speaks the same API.
    echo "kubectl not found; installing Debian's kubernetes-client"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kubernetes-client >/dev/null
  fi
  # moto's S3 server, which sheaf-backup's tests run the S3 store against
  # (tests/support/moto.rs finds it here, or at $SHEAF_MOTO).
  moto_venv=/opt/sheaf-test/moto
  if [[ ! -x $moto_venv/bin/moto_server ]]; then
    echo "installing moto's S3 server into $moto_venv"
    $SUDO rm -rf "$moto_venv"
    $SUDO mkdir -p "$(dirname "$moto_venv")"
    $SUDO python3 -m venv "$moto_venv"
    $SUDO "$moto_venv/bin/pip" install -q 'moto[server]==5.1.22'
  fi
fi
