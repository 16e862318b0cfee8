#!/usr/bin/env bash
# Installs what Shoal needs on a fresh Debian/Ubuntu machine with Node 20: npm packages,
# nats-server (and prometheus, for the observability tests), then builds. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ] && [ -z "${SHOAL_NATS_SERVER:-}" ]; then
  need_apt+=(nats-server)
fi
# The observability tests need both binaries; Debian's prometheus package ships promtool too.
if [ "${SHOAL_SKIP_PROMETHEUS:-}" != "1" ]; then
  for tool in prometheus promtool; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/bin/$tool" ]; then
      need_apt+=(prometheus)
      break
    fi
  done
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian package starts a system prometheus on :9090; Shoal's tests run their own.
  if [[ " ${need_apt[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run build --silent
echo "setup: ready" >&2
