#!/usr/bin/env bash
# Builds the web UI (ui/ → ui/dist) from its npm packages; building Sheaf
# then compiles ui/dist into the binary (crates/sheaf-apiserver/build.rs).
# Skips the build when nothing in ui/ changed since the last one, so that
# the binary is not rebuilt for nothing.
set -euo pipefail
cd "$(dirname "$0")/../ui"

if ! command -v npm >/dev/null; then
  echo "error: npm not found; run scripts/install-deps.sh first" >&2
  exit 1
fi
inputs=()
for f in src public index.html package.json package-lock.json tsconfig.json vite.config.ts; do
  [[ -e $f ]] && inputs+=("$f")
done
sources=$(find "${inputs[@]}" -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
if [[ -f dist/index.html && "$(cat dist/.source-hash 2>/dev/null)" == "$sources" ]]; then
  exit 0
fi
lock=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ "$(cat node_modules/.sheaf-lock-hash 2>/dev/null)" != "$lock" ]]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock" > node_modules/.sheaf-lock-hash
fi
npm run build --silent
echo "$sources" > dist/.source-hash
echo "web UI built into ui/dist ($(du -sh dist | cut -f1))"
