#!/usr/bin/env bash
# Checks Shoal's GPU path on a machine with an NVIDIA GPU, step by step, and says what it saw:
#   1. nvidia-smi is there and lists GPUs
#   2. Shoal's nvidia-smi parser (dist/worker/gpu/nvidia-smi.js) against the live output, side by side
#   3. the onnxruntime CUDA execution provider: installed? does a one-node model run on GPU 0?
#   4. `shoal up --gpu auto` (nats-server, a coordinator, one worker) comes up
#   5. a small batch of imagegen-tiny items finishes
#   6. the VRAM the worker reported (shoal workers, worker /metrics) next to nvidia-smi's
#   7. `shoal up --execution-provider cuda`: starts (and runs the batch on the GPU), or fails saying why
# Each step prints PASS/FAIL and the next one runs regardless; a summary comes last. Exit 0 only
# when every step passed.
#
# Needs: this checkout with dist/ (npm run build) and node_modules/, or without them the bundle
# scripts/gpu-check-bundle.sh makes (GPU_CHECK_BUNDLE, default ./gpu-check-bundle.tar.xz);
# `node` (20+) on PATH. No network is used. nats-server: $NATS_SERVER_BIN (the binary, or a directory holding it), else
# PATH, else /usr/sbin, else the bundle's. Everything printed also goes to $OUT/gpu-check.log when OUT is set.
# Other knobs: NVIDIA_SMI (default nvidia-smi), GPU_CHECK_ITEMS (default 6), GPU_CHECK_SIZE
# (image width = height, default 512), GPU_CHECK_PORT (first of the ports used; default random).

set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
NVIDIA_SMI="${NVIDIA_SMI:-nvidia-smi}"
ITEMS="${GPU_CHECK_ITEMS:-6}"
SIZE="${GPU_CHECK_SIZE:-512}"
SHOAL=(node "$ROOT/dist/cli/main.js")
WORK="$(mktemp -d /tmp/shoal-gpu-check.XXXXXX)"
LOG=/dev/null
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && LOG="$OUT/gpu-check.log" && : >"$LOG"
fi

say() { printf '%s\n' "$*" | tee -a "$LOG"; }
show() { tee -a "$LOG"; } # pipes a command's output to the terminal and the log
RESULTS=()
record() { # record STEP PASS|FAIL|SKIP DETAIL
  RESULTS+=("$(printf '%-4s  %-28s %s' "$2" "$1" "$3")")
  say "==> $2: $1${3:+ ($3)}"
}
heading() { say ""; say "=== $* ==="; }

UP_PID=""
stop_up() {
  if [ -n "$UP_PID" ] && kill -0 "$UP_PID" 2>/dev/null; then
    kill -INT "$UP_PID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$UP_PID" 2>/dev/null && kill -KILL "$UP_PID" 2>/dev/null
  fi
  UP_PID=""
}
finish() {
  stop_up
  heading "summary"
  for r in "${RESULTS[@]}"; do say "$r"; done
  [ -n "${OUT:-}" ] && cp -r "$WORK"/*.log "$OUT"/ 2>/dev/null
  rm -rf "$WORK"
}
trap finish EXIT
trap 'exit 130' INT TERM

heading "machine"
# A bare machine without node_modules/: use the bundle made by scripts/gpu-check-bundle.sh.
BUNDLE="${GPU_CHECK_BUNDLE:-$ROOT/gpu-check-bundle.tar.xz}"
BUNDLE_NATS=""
if [ ! -d "$ROOT/node_modules/onnxruntime-node" ] && [ -f "$BUNDLE" ]; then
  mkdir -p "$WORK/bundle"
  if tar -xJf "$BUNDLE" -C "$WORK/bundle"; then
    say "no node_modules/ here: running from the bundle $BUNDLE (unpacked in $WORK/bundle)"
    ROOT="$WORK/bundle"; SHOAL=(node "$ROOT/dist/cli/main.js"); BUNDLE_NATS="$ROOT/bin/nats-server"
  else
    say "cannot unpack $BUNDLE"
  fi
fi
say "date: $(date -u +%FT%TZ)  host: $(hostname)  node: $(node --version 2>&1)  checkout: $ROOT"
if [ ! -f "$ROOT/dist/cli/main.js" ]; then
  record "build present" FAIL "no dist/cli/main.js: run npm run build first"
  exit 2
fi

# --- 1. nvidia-smi ------------------------------------------------------------------------
heading "1. nvidia-smi"
if ! command -v "$NVIDIA_SMI" >/dev/null 2>&1; then
  record "nvidia-smi" FAIL "no $NVIDIA_SMI on PATH: no NVIDIA driver on this machine, nothing to check"
  exit 1
fi
QUERY=(--query-gpu=index,name,memory.total,memory.free,uuid --format=csv,noheader,nounits)
if ! timeout 20 "$NVIDIA_SMI" >"$WORK/nvidia-smi.txt" 2>&1; then
  say "(plain nvidia-smi failed:)"
fi
show <"$WORK/nvidia-smi.txt"
if timeout 20 "$NVIDIA_SMI" "${QUERY[@]}" >"$WORK/query.csv" 2>"$WORK/query.err" && [ -s "$WORK/query.csv" ]; then
  GPUS=$(grep -c . "$WORK/query.csv")
  record "nvidia-smi" PASS "$GPUS GPU(s)"
else
  record "nvidia-smi" FAIL "nvidia-smi ${QUERY[*]} failed: $(head -c 300 "$WORK/query.err")"
  exit 1
fi

# --- 2. the parser against the live output --------------------------------------------------
heading "2. Shoal's nvidia-smi parser on the live output"
say "live: $NVIDIA_SMI ${QUERY[*]}"
show <"$WORK/query.csv"
if node --input-type=module -e '
  import { readFileSync } from "node:fs";
  import { parseNvidiaSmiCsv, NVIDIA_SMI_ARGS } from "'"$ROOT"'/dist/worker/gpu/nvidia-smi.js";
  const text = readFileSync(process.argv[1], "utf8");
  if (JSON.stringify(NVIDIA_SMI_ARGS) !== JSON.stringify(process.argv.slice(2))) {
    console.log("the worker queries " + NVIDIA_SMI_ARGS.join(" ") + ", this script " + process.argv.slice(2).join(" "));
    process.exit(1);
  }
  const gpus = parseNvidiaSmiCsv(text);
  const MiB = 1024 * 1024;
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== "");
  let bad = 0;
  console.log("parsed: index | name | total MiB | free MiB | uuid");
  for (const [i, g] of gpus.entries()) {
    const f = lines[i].split(",").map((s) => s.trim());
    const same = String(g.index) === f[0] && g.totalBytes === Number(f[f.length - 3]) * MiB && g.freeBytes === Number(f[f.length - 2]) * MiB && g.uuid === f[f.length - 1];
    if (!same) bad++;
    console.log(`  ${g.index} | ${g.name} | ${g.totalBytes / MiB} | ${g.freeBytes / MiB} | ${g.uuid}   ${same ? "= live" : "!= live line: " + lines[i]}`);
  }
  if (gpus.length !== lines.length) { console.log(`parsed ${gpus.length} GPUs from ${lines.length} lines`); bad++; }
  process.exit(bad === 0 ? 0 : 1);
' "$WORK/query.csv" "${QUERY[@]}" 2>&1 | show; then
  record "parser vs live output" PASS "$GPUS GPU(s) read the same"
else
  record "parser vs live output" FAIL "see above"
fi

# --- 3. the CUDA execution provider ---------------------------------------------------------
heading "3. onnxruntime CUDA execution provider"
if node --input-type=module -e '
  const m = await import("'"$ROOT"'/dist/worker/inference/cuda-provider.js");
  const dir = m.onnxruntimeBinDir();
  const missing = m.missingCudaFiles(dir);
  console.log(`onnxruntime-node binding dir: ${dir}`);
  console.log(missing.length === 0 ? "CUDA provider libraries: present" : `CUDA provider libraries missing: ${missing.join(", ")}`);
  try {
    await m.probeCuda(0);
    console.log("a one-node model ran on CUDA device 0");
  } catch (err) {
    console.log(err.message);
    process.exit(1);
  }
' 2>&1 | show; then
  record "CUDA provider probe" PASS "ran on GPU 0"
  CUDA_OK=1
else
  record "CUDA provider probe" FAIL "see the message above"
  CUDA_OK=0
fi

# --- nats-server ----------------------------------------------------------------------------
NATS_BIN=""
if [ -n "${NATS_SERVER_BIN:-}" ]; then
  if [ -d "$NATS_SERVER_BIN" ] && [ -x "$NATS_SERVER_BIN/nats-server" ]; then NATS_BIN="$NATS_SERVER_BIN/nats-server"
  elif [ -x "$NATS_SERVER_BIN" ]; then NATS_BIN="$NATS_SERVER_BIN"; fi
fi
[ -z "$NATS_BIN" ] && NATS_BIN="$(command -v nats-server 2>/dev/null || true)"
[ -z "$NATS_BIN" ] && [ -x /usr/sbin/nats-server ] && NATS_BIN=/usr/sbin/nats-server
[ -z "$NATS_BIN" ] && [ -n "$BUNDLE_NATS" ] && [ -x "$BUNDLE_NATS" ] && NATS_BIN="$BUNDLE_NATS"
if [ -n "$NATS_BIN" ]; then
  export SHOAL_NATS_SERVER="$NATS_BIN"
  say ""
  say "nats-server: $NATS_BIN ($("$NATS_BIN" --version 2>&1 | head -1))"
fi

BASE=${GPU_CHECK_PORT:-$((20000 + RANDOM % 20000))}  # gRPC; +1 coordinator metrics, +2 worker metrics, +10 NATS
GRPC=$BASE; METRICS=$((BASE + 1)); NATS_PORT=$((BASE + 10))
ADDR="127.0.0.1:$GRPC"

# start_up NAME EXTRA_ARGS...: shoal up in the background; waits for "Shoal is up"
start_up() {
  local name=$1; shift
  rm -rf "$WORK/data-$name"
  "${SHOAL[@]}" up --gpu auto --workers 1 --grpc-port "$GRPC" --metrics-port "$METRICS" --http-port 0 \
    --nats-port "$NATS_PORT" --data-dir "$WORK/data-$name" --log-format json "$@" >"$WORK/up-$name.log" 2>&1 &
  UP_PID=$!
  for _ in $(seq 1 600); do
    grep -q "Shoal is up" "$WORK/up-$name.log" 2>/dev/null && return 0
    kill -0 "$UP_PID" 2>/dev/null || break
    sleep 0.2
  done
  say "shoal up $* did not come up; the end of its output:"
  tail -n 25 "$WORK/up-$name.log" | cut -c1-1200 | show
  stop_up
  return 1
}

write_batch() {
  node -e '
    const n = Number(process.argv[1]), s = Number(process.argv[2]);
    const items = Array.from({ length: n }, (_, i) => ({ model: "imagegen-tiny", params: { prompt: `gpu check ${i}: a lighthouse at dusk`, width: s, height: s, steps: 4 } }));
    process.stdout.write(JSON.stringify({ items }));
  ' "$ITEMS" "$SIZE" >"$WORK/batch.json"
}

# run_batch NAME: submits the batch and waits; prints the outcome and each item's result
run_batch() {
  local name=$1
  if timeout 300 "${SHOAL[@]}" --addr "$ADDR" submit "$WORK/batch.json" --wait >"$WORK/submit-$name.log" 2>&1; then
    show <"$WORK/submit-$name.log" | tail -n 5
    return 0
  fi
  say "the batch did not succeed:"
  tail -n 20 "$WORK/submit-$name.log" | show
  return 1
}

# report_vram NAME: what the worker reported next to what nvidia-smi says now
report_vram() {
  local name=$1
  say "--- shoal workers (VRAM as the worker reported it in its last heartbeat) ---"
  timeout 30 "${SHOAL[@]}" --addr "$ADDR" workers 2>&1 | show
  say "--- nvidia-smi now ---"
  timeout 20 "$NVIDIA_SMI" --query-gpu=index,name,memory.total,memory.used,memory.free --format=csv 2>&1 | show
  say "--- per-process GPU memory (nvidia-smi --query-compute-apps) ---"
  timeout 20 "$NVIDIA_SMI" --query-compute-apps=pid,process_name,used_memory --format=csv 2>&1 | show
  say "--- worker /metrics: VRAM gauges and measured item peaks ---"
  node -e '
    fetch(`http://127.0.0.1:${process.argv[1]}/metrics`).then((r) => r.text()).then((t) => {
      for (const l of t.split("\n")) if (/^shoal_worker_(vram|gpu|item_peak_vram)/.test(l)) console.log(l);
    }, (e) => console.log("cannot read worker metrics: " + e.message));
  ' "$((METRICS + 1))" 2>&1 | show
  grep -h '"peakVramBytes"' "$WORK/up-$name.log" 2>/dev/null | tail -n 5 | cut -c1-400 | show
}

# compare_vram: the worker's gauges (what it heartbeats) against nvidia-smi, per GPU
compare_vram() {
  "$NVIDIA_SMI" --query-gpu=index,memory.total,memory.free --format=csv,noheader,nounits >"$WORK/now.csv" 2>&1
  node -e '
    const { readFileSync } = require("node:fs");
    const MiB = 1024 * 1024, GiB = 1024 * MiB;
    const smi = new Map(readFileSync(process.argv[2], "utf8").split(/\r?\n/).filter((l) => l.trim()).map((l) => {
      const [i, total, free] = l.split(",").map((s) => s.trim());
      return [i, { total: Number(total) * MiB, free: Number(free) * MiB }];
    }));
    fetch(`http://127.0.0.1:${process.argv[1]}/metrics`).then((r) => r.text()).then((text) => {
      const gauge = (name) => new Map([...text.matchAll(new RegExp(`^${name}\\{[^}]*gpu="(\\d+)"[^}]*\\} (\\S+)$`, "gm"))].map((m) => [m[1], Number(m[2])]));
      const total = gauge("shoal_worker_vram_total_bytes"), free = gauge("shoal_worker_vram_free_bytes");
      let bad = total.size === 0 ? 1 : 0;
      if (bad) console.log("the worker reports no GPU gauges");
      console.log("gpu | worker total MiB | nvidia-smi total MiB | worker free MiB | nvidia-smi free MiB");
      for (const [gpu, t] of total) {
        const s = smi.get(gpu), f = free.get(gpu);
        const ok = s !== undefined && t === s.total && f !== undefined && Math.abs(f - s.free) <= 2 * GiB;
        if (!ok) bad++;
        console.log(`${gpu} | ${t / MiB} | ${s ? s.total / MiB : "-"} | ${f === undefined ? "-" : (f / MiB).toFixed(0)} | ${s ? s.free / MiB : "-"}   ${ok ? "ok" : "DIFFERENT"}`);
      }
      process.exit(bad === 0 ? 0 : 1);
    }, (e) => { console.log("cannot read worker metrics: " + e.message); process.exit(1); });
  ' "$((METRICS + 1))" "$WORK/now.csv" 2>&1 | show
}

write_batch
if [ -z "$NATS_BIN" ]; then
  record "shoal up --gpu auto" FAIL "no nats-server: set NATS_SERVER_BIN to the binary (or its directory)"
  record "batch (cpu provider)" SKIP "needs shoal up"
  record "reported VRAM" SKIP "needs shoal up"
  record "shoal up (cuda provider)" SKIP "needs nats-server"
  exit 1
fi

# --- 4.-6. shoal up --gpu auto on the CPU provider ------------------------------------------
heading "4. shoal up --gpu auto --workers 1 (execution provider: cpu)"
if start_up cpu; then
  grep -E "Shoal is up|gRPC API|worker ready" "$WORK/up-cpu.log" | cut -c1-400 | show
  record "shoal up --gpu auto" PASS "gRPC on $ADDR"
  heading "5. a batch of $ITEMS imagegen-tiny items, ${SIZE}x$SIZE (cpu provider)"
  if run_batch cpu; then record "batch (cpu provider)" PASS "$ITEMS items"; else record "batch (cpu provider)" FAIL "see above"; fi
  heading "6. VRAM reported by the worker vs nvidia-smi"
  report_vram cpu
  if compare_vram; then
    record "reported VRAM" PASS "the worker's totals equal nvidia-smi's, free within 2 GiB"
  else
    record "reported VRAM" FAIL "see the comparison above"
  fi
  stop_up
else
  record "shoal up --gpu auto" FAIL "see the output above"
  record "batch (cpu provider)" SKIP "needs shoal up"
  record "reported VRAM" SKIP "needs shoal up"
fi

# --- 7. the CUDA provider end to end --------------------------------------------------------
heading "7. shoal up --gpu auto --execution-provider cuda"
if start_up cuda --execution-provider cuda; then
  grep -E "CUDA|worker ready" "$WORK/up-cuda.log" | cut -c1-400 | show
  if run_batch cuda; then
    record "shoal up (cuda provider)" PASS "the batch ran with the CUDA provider"
  else
    record "shoal up (cuda provider)" FAIL "up started, the batch did not finish"
  fi
  report_vram cuda
  stop_up
else
  if [ "$CUDA_OK" = 0 ]; then
    record "shoal up (cuda provider)" FAIL "refused to start, as expected without the CUDA provider (message above)"
  else
    record "shoal up (cuda provider)" FAIL "did not start although the probe passed (output above)"
  fi
fi

for r in "${RESULTS[@]}"; do case "$r" in FAIL*) exit 1 ;; esac; done
exit 0
