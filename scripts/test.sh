#!/usr/bin/env bash
# Runs Sheaf's whole test suite: unit tests, store conformance on SQLite and
# a real etcd, and end-to-end tests of the real binary with the real kubectl
# and real QEMU guests (built from Debian packages by build-test-guests.sh),
# and the web UI in Debian's Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh --test
./scripts/build-ui.sh
./scripts/build-test-guests.sh
cargo nextest run --workspace --locked --no-fail-fast "$@"
