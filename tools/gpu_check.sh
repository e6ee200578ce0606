#!/usr/bin/env bash
# The GPU checks (issues #10, #17): everything a session with a lent GPU runs, in one prepared device call.
#
# Before the call, on the developer machine (the official code travels as a git-ignored folder and
# never becomes part of the product): .cache/official-cut is a copy of taesungp/contrastive-unpaired-translation
# (as `make` sets it up for the parity fixtures).
# Device call (run tool): command "bash tools/gpu_check.sh", carry [".cache/official-cut"], timeout_s 600.
# Results: JSON (and logs) under $OUT; read summary.md first.
#
# Stages, most important first, each under its own time limit so that a slow stage cannot eat the
# rest (sum ~600 s; with the machine's start-up, split it over two calls with STAGES if needed):
#   official   official CUT vs ours at 256 px (target: ours <= 0.5x)
#   key_reuse  the step with key_reuse never/always at 256, 512, 1024 px, CUT and the three QS modes,
#              chunked (QS x CUT in time and peak memory under the same value; target <= 1.10x)
#   options    options table (CUT all options; QS-Attn global vs CUT: plain/defaults/all-fast)
#   packing    K = 1,2,4,8 cells per GPU
#   gpu_tests  tests/test_gpu.py (equality of each option and of key reuse; diffs in gpu_option_diffs.jsonl)
#   loader     the data pipeline alone
# Tiny dry run on a CPU: SIZE=32 NGF=8 STEPS=2 PACK_SECONDS=1 CELLS=1,2 REUSE_SIZES=32 DEVICE=cpu bash tools/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
SIZE=${SIZE:-256}
NGF=${NGF:-64}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-5}
SECONDS_PACK=${PACK_SECONDS:-5}
CELLS=${CELLS:-1,2,4,8}
DEVICE=${DEVICE:-cuda}
OFFICIAL=${OFFICIAL:-.cache/official-cut}
FAST=${FAST:-adam_impl=fused,cudnn_benchmark=true,compile=reduce-overhead}
[ "$DEVICE" = cpu ] && FAST=${FAST_CPU:-adam_impl=fused}   # inductor compiles take minutes on a CPU
REUSE_SIZES=${REUSE_SIZES:-256,512,1024}
REUSE_METHODS=${REUSE_METHODS:-cut,qsattn-global,qsattn-global-local,qsattn-local}
REUSE_STEPS=${REUSE_STEPS:-10}   # 24 cases of ~10 s each with the process start
STAGES=${STAGES:-official key_reuse options packing gpu_tests loader}  # e.g. two calls: "official key_reuse options", "packing gpu_tests loader"
want() { case " $STAGES " in *" $1 "*) return 0;; esac; return 1; }
export PYTHONPATH=. OUT
mkdir -p "$OUT"
PY=${PY:-python}
[ -x .venv/bin/python ] && [ "$DEVICE" = cpu ] && PY=.venv/bin/python
common=(--device "$DEVICE" --sizes "$SIZE" --ngf "$NGF" --steps "$STEPS" --warmup "$WARMUP")

stage() {  # stage NAME LIMIT_S CMD...: run, log, record the exit status and the time taken
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0)), \"limit\": $limit}" >>"$OUT/stages.jsonl"
    echo "stage $name: rc=$rc in $((SECONDS - t0)) s" >&2
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"; } >"$OUT/machine.txt" 2>&1

if want official; then
    if [ -d "$OFFICIAL" ]; then
        stage official 120 $PY -m qsattn bench --tables official --official "$OFFICIAL" "${common[@]}" --out "$OUT/official.json"
    else
        echo "no official checkout at $OFFICIAL: stage skipped" | tee "$OUT/official.log" >&2
    fi
fi
want key_reuse && stage key_reuse 240 $PY -m qsattn bench --tables step --methods "$REUSE_METHODS" --impl chunked \
    --key-reuse never,always --device "$DEVICE" --sizes "$REUSE_SIZES" --ngf "$NGF" --steps "$REUSE_STEPS" \
    --warmup "$WARMUP" --out "$OUT/key_reuse.json"
if want options; then
    stage options_cut 150 $PY -m qsattn bench --tables options --methods cut "${common[@]}" --out "$OUT/options_cut.json"
    stage options_qs 100 $PY -m qsattn bench --tables options --methods cut,qsattn-global --options defaults,all-fast \
        "${common[@]}" --out "$OUT/options_qs.json"
fi
want packing && stage packing 180 $PY -m qsattn bench --tables packing --methods cut,qsattn-global --cells "$CELLS" \
    --seconds "$SECONDS_PACK" --set "$FAST" "${common[@]}" --out "$OUT/packing.json"
if want gpu_tests && [ "$DEVICE" != cpu ]; then
    stage gpu_tests 150 $PY -m pytest tests/test_gpu.py -q -p no:cacheprovider --junitxml "$OUT/test_gpu.xml"
fi
want loader && stage loader 30 $PY -m qsattn bench --tables loader --sizes "$SIZE" --workers 0,2,4 --steps 40 --warmup 4 \
    --device cpu --out "$OUT/loader.json"

{ echo "# GPU check (tools/gpu_check.sh), issues #10 and #17"; cat "$OUT/machine.txt"; echo
  for log in official key_reuse options_cut options_qs packing loader; do
      [ -f "$OUT/$log.log" ] && { echo "## $log"; grep '^|' "$OUT/$log.log"; echo; }
  done
  [ -f "$OUT/gpu_tests.log" ] && { echo "## gpu tests"; tail -5 "$OUT/gpu_tests.log"; }
  [ -f "$OUT/gpu_option_diffs.jsonl" ] && { echo "## measured differences"; cat "$OUT/gpu_option_diffs.jsonl"; }
  echo "## stages"; cat "$OUT/stages.jsonl"; } >"$OUT/summary.md"
cat "$OUT/summary.md"
