#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a bare GPU machine (no network, no npm) into one
# file of about 25 MB: dist/ (without tests and benchmarks), package.json, the production
# node_modules for linux/x64 only, and this machine's nats-server. On the GPU machine, with the
# checkout and the bundle (GPU_CHECK_BUNDLE, default ./gpu-check-bundle.tar.xz) and no
# node_modules/, gpu-check.sh unpacks it into a temp dir and runs from there.
#   npm run build && bash scripts/gpu-check-bundle.sh [OUTPUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT="${1:-gpu-check-bundle.tar.xz}"
[ -f dist/cli/main.js ] || { echo "gpu-check-bundle: no dist/: run npm run build first" >&2; exit 2; }
NATS="${NATS_SERVER_BIN:-$(command -v nats-server || true)}"
[ -d "$NATS" ] && NATS="$NATS/nats-server"
[ -x "$NATS" ] || { echo "gpu-check-bundle: no nats-server (set NATS_SERVER_BIN)" >&2; exit 2; }
mkdir -p "$(dirname "$OUTPUT")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
npm ls --omit=dev --all --parseable 2>/dev/null | sed "s#^$PWD/##" | grep '^node_modules/' | grep -v '^node_modules/.*/node_modules/' >"$tmp/modules"
mkdir -p "$tmp/bin" && cp "$NATS" "$tmp/bin/nats-server"
tar -cf - \
  --exclude='node_modules/onnxruntime-node/bin/napi-v6/darwin' \
  --exclude='node_modules/onnxruntime-node/bin/napi-v6/win32' \
  --exclude='node_modules/onnxruntime-node/bin/napi-v6/linux/arm64' \
  --exclude='dist/test' --exclude='dist/bench' \
  package.json bin dist proto/shoal proto/grpc scripts/gpu-check.sh examples -T "$tmp/modules" \
  -C "$tmp" bin/nats-server | xz -T2 -6 >"$OUTPUT"
echo "wrote $OUTPUT ($(du -h "$OUTPUT" | cut -f1))"
