#!/usr/bin/env bash
# Installs what Sheaf needs, builds it, and starts a single-node Sheaf on
# the embedded SQLite store with its API on https://127.0.0.1:6443.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
./scripts/build-ui.sh
cargo build --release --locked -p sheaf
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
$SUDO install -m 0755 target/release/sheaf /usr/local/bin/sheaf

DATA_DIR=${SHEAF_DATA_DIR:-/var/lib/sheaf}
$SUDO mkdir -p "$DATA_DIR"
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
  $SUDO tee /etc/systemd/system/sheaf.service >/dev/null <<UNIT
[Unit]
Description=Sheaf server
After=network-online.target

[Service]
ExecStart=/usr/local/bin/sheaf server --data-dir $DATA_DIR
Restart=always
RestartSec=2
# Only the server: VMs (QEMU) and storage processes outlive a restart.
KillMode=process
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
UNIT
  $SUDO systemctl daemon-reload
  $SUDO systemctl enable sheaf >/dev/null 2>&1
  $SUDO systemctl restart sheaf
else
  # No systemd (containers): run it in the background.
  pkill -x sheaf 2>/dev/null || true
  $SUDO sh -c "nohup /usr/local/bin/sheaf server --data-dir '$DATA_DIR' >>/var/log/sheaf.log 2>&1 &"
fi

for _ in $(seq 1 100); do
  if curl -fsk https://127.0.0.1:6443/readyz >/dev/null 2>&1; then break; fi
  sleep 0.1
done
curl -fsk https://127.0.0.1:6443/readyz >/dev/null || { echo "sheaf did not start; see /var/log/sheaf.log or journalctl -u sheaf" >&2; exit 1; }

mkdir -p "$HOME/.kube"
if [[ -e "$HOME/.kube/config" ]] && ! grep -q "name: sheaf" "$HOME/.kube/config"; then
  $SUDO /usr/local/bin/sheaf kubeconfig --data-dir "$DATA_DIR" > "$HOME/.kube/sheaf.config"
  echo "Sheaf is running. Use it with: export KUBECONFIG=$HOME/.kube/sheaf.config"
else
  $SUDO /usr/local/bin/sheaf kubeconfig --data-dir "$DATA_DIR" > "$HOME/.kube/config"
  echo "Sheaf is running; kubectl is configured (~/.kube/config). Try: kubectl get namespaces"
fi
