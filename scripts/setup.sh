#!/usr/bin/env bash
# Installs what Shoal needs on a fresh Debian/Ubuntu machine with Node 20: npm packages,
# nats-server >= 2.10 (and prometheus, for the observability tests; redis-server, for the bench's
# BullMQ peer), then builds. Safe to re-run.
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
# The deployment tests (test/integration/deploy-*) build and run container images with podman
# (runc runtime; a Debian base made by mmdebstrap) and resolve the compose file with docker-compose.
if [ "${SHOAL_SKIP_CONTAINERS:-}" != "1" ]; then
  for tool in podman buildah runc mmdebstrap docker-compose; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then need_apt+=("$tool"); fi
  done
fi
# The web console's browser test drives Debian's chromium (playwright-core, no browser download);
# the TLS tests make their certificates with openssl.
if [ "${SHOAL_SKIP_BROWSER:-}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then need_apt+=(chromium); fi
if ! command -v openssl >/dev/null 2>&1; then need_apt+=(openssl); fi
# The bench's peer case runs BullMQ on a redis-server of its own (npm run bench -- --only peer).
if [ "${SHOAL_SKIP_REDIS:-}" != "1" ] && [ -z "${SHOAL_REDIS_SERVER:-}" ] && ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
  need_apt+=(redis-server)
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
  # Likewise the redis-server package's system service on :6379: the bench starts its own.
  if [[ " ${need_apt[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
fi

# nats-server >= 2.10: `shoal up --fsync always` sets JetStream's `sync_interval`, which older
# servers reject. Debian 12 ships 2.9.10, so when the server Shoal would use is older, fetch
# Debian trixie's package (a Go binary needing only libc >= 2.34, so it runs on bookworm)
# through apt, which checks the archive signature as usual, into a throwaway directory: the
# system's apt sources and caches stay as they are. Only the binary is installed, to
# /usr/local/bin (ahead of /usr/sbin on PATH).
NATS_MIN_VERSION="2.10.0"
nats_version() { "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n1; }
version_at_least() { [ -n "$1" ] && printf '%s\n%s\n' "$2" "$1" | sort -V -C; }
shoal_nats_server() {
  if [ -n "${SHOAL_NATS_SERVER:-}" ]; then echo "$SHOAL_NATS_SERVER"; return; fi
  command -v nats-server 2>/dev/null || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true
}
upgrade_nats_server() {
  local tmp list keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no apt-get here" >&2; return 1
  fi
  if [ ! -r "$keyring" ]; then
    echo "setup: $keyring is missing (Ubuntu: sudo apt-get install debian-archive-keyring), so Debian's package cannot be verified" >&2; return 1
  fi
  tmp="$(mktemp -d)"
  # apt downloads as the unprivileged _apt user when it can; let it into the directory.
  chmod 0755 "$tmp"
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
  list="$tmp/trixie.list"
  echo "deb [signed-by=$keyring] http://deb.debian.org/debian trixie main" > "$list"
  local apt_opts=(-o "Dir::Etc::sourcelist=$list" -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "APT::Get::List-Cleanup=0")
  if ! apt-get -qq "${apt_opts[@]}" update >"$tmp/apt.log" 2>&1 \
    || ! (cd "$tmp" && apt-get -qq "${apt_opts[@]}" download nats-server >>"$tmp/apt.log" 2>&1) \
    || ! dpkg-deb -x "$tmp"/nats-server_*.deb "$tmp/x"; then
    sed 's/^/setup:   /' "$tmp/apt.log" >&2
    rm -rf "$tmp"; return 1
  fi
  local got; got="$(nats_version "$tmp/x/usr/sbin/nats-server")"
  if ! version_at_least "$got" "$NATS_MIN_VERSION"; then
    echo "setup: Debian trixie's nats-server is ${got:-unrunnable here}, not >= $NATS_MIN_VERSION" >&2
    rm -rf "$tmp"; return 1
  fi
  if ! $SUDO install -m 0755 "$tmp/x/usr/sbin/nats-server" /usr/local/bin/nats-server; then
    rm -rf "$tmp"; return 1
  fi
  rm -rf "$tmp"
  echo "setup: installed nats-server v$got (Debian trixie's package) to /usr/local/bin/nats-server" >&2
}
if [ "${SHOAL_SKIP_NATS_UPGRADE:-}" != "1" ]; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  nats_bin="$(shoal_nats_server)"
  nats_ver="$(nats_version "${nats_bin:-/nonexistent}")"
  if [ -n "$nats_bin" ] && version_at_least "$nats_ver" "$NATS_MIN_VERSION"; then
    : # already new enough: nothing to do
  elif [ -n "${SHOAL_NATS_SERVER:-}" ]; then
    echo "setup: SHOAL_NATS_SERVER=$SHOAL_NATS_SERVER is v${nats_ver:-?}; \`shoal up --fsync always\` needs nats-server >= $NATS_MIN_VERSION (left as it is)" >&2
  else
    echo "setup: nats-server ${nats_bin:-(none)} is v${nats_ver:-?}; fetching nats-server >= $NATS_MIN_VERSION from Debian trixie" >&2
    if upgrade_nats_server; then
      now="$(shoal_nats_server)"
      if [ "$now" != /usr/local/bin/nats-server ]; then
        echo "setup: but $now comes first on PATH; put /usr/local/bin first or export SHOAL_NATS_SERVER=/usr/local/bin/nats-server" >&2
      fi
    else
      echo "setup: could not install nats-server >= $NATS_MIN_VERSION. Shoal still runs on v${nats_ver:-?}, but \`shoal up --fsync always\` will refuse to start. Get one from https://github.com/nats-io/nats-server/releases and put it on PATH or in SHOAL_NATS_SERVER." >&2
    fi
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run build --silent
echo "setup: ready" >&2
