#!/usr/bin/env bash
# Web UI benchmark, one command: a real `sheaf server` (control plane only,
# SQLite) holding N stopped VirtualMachines (default 1,000), and Debian's
# Chromium (Playwright, headless) opening the VM list logged in: time until
# every VM's row is on screen, and the bytes the page transferred (its own
# files as sent, gzip; the API's answers apart). Baseline in the same run
# and browser: the same rows as one plain HTML table without script.
# Targets: < 1 s to the full list, < 500 KB compressed for the page.
# Results: docs/BENCHMARKS.md ("Web UI").
#
#   bash bench/ui.sh [--vms 1000]     RUNS=3 (default): medians
#   SHEAF_BIN=target/debug/sheaf bash bench/ui.sh    (default: a release build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VMS=1000
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vms) VMS=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
"$ROOT/scripts/build-ui.sh" >/dev/null
BIN=${SHEAF_BIN:-$ROOT/target/release/sheaf}
if [[ -z "${SHEAF_BIN:-}" ]]; then (cd "$ROOT" && cargo build --release --locked -p sheaf -q); fi
[[ -x /usr/bin/chromium ]] || { echo "needs Debian's chromium: scripts/install-deps.sh --test" >&2; exit 1; }

WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" server --no-agent --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" > "$WORK/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do curl -fsk "https://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
TOKEN=$(awk '/token:/{print $2; exit}' "$WORK/data/admin.kubeconfig")
export KUBECONFIG=$WORK/kubeconfig
"$BIN" kubeconfig --data-dir "$WORK/data" --server "https://127.0.0.1:$PORT" > "$KUBECONFIG"
python3 - "$VMS" > "$WORK/vms.yaml" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    print(f"""---
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: vm-{i:04d}
  labels: {{app: bench}}
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        cpu: {{cores: 1}}
        memory: {{guest: 1Gi}}
        devices: {{}}""")
PY
kubectl apply -f "$WORK/vms.yaml" >/dev/null
echo "server: $BIN, $(kubectl get vm --no-headers | wc -l) VMs"
OUT=$(cd "$ROOT/ui" && SHEAF_URL="https://127.0.0.1:$PORT" SHEAF_TOKEN=$TOKEN SHEAF_VMS=$VMS RUNS=${RUNS:-3} node e2e/bench.mjs)
echo "$OUT"
python3 - "$OUT" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"VM list, {r['vms']} VMs: Sheaf {r['sheaf_ms']} ms (runs {r['sheaf_runs_ms']}), "
      f"static HTML table {r['static_html_ms']} ms: ratio {r['sheaf_ms'] / max(r['static_html_ms'], 1):.1f}; "
      f"target < 1000 ms: {'met' if r['sheaf_ms'] < 1000 else 'NOT met'}")
print(f"page transfer: {r['page_bytes'] / 1024:.0f} KiB compressed ({r['page_bytes_uncompressed'] / 1024:.0f} KiB "
      f"uncompressed); target < 500 KB: {'met' if r['page_bytes'] < 500_000 else 'NOT met'}; "
      f"API answers {r['api_bytes'] / 1024:.0f} KiB")
PY
