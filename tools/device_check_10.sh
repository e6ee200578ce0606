#!/usr/bin/env bash
# Issue #10 (GPU throughput): everything a session with a lent GPU runs once, in one device call.
#
# Before the call, on the developer machine (the official code travels as a git-ignored folder and
# never becomes part of the product):
#   mkdir -p .cache/official-cut && (cd /work/official/taesungp+contrastive-unpaired-translation && \
#       tar --exclude=.git -cf - .) | tar -xf - -C .cache/official-cut
# Device call (run tool): command "bash tools/device_check_10.sh", carry [".cache/official-cut"],
# timeout_s 600. Results: JSON (and logs) under $OUT; read summary.md first.
#
# Stages, most important first, each under its own time limit so that a slow stage cannot eat the
# rest (sum ~600 s; with the machine's start-up, split it over two calls with STAGES if needed): 1 official CUT vs ours at 256 px; 2 options table (CUT all options, QS-Attn global
# vs CUT: plain/defaults/all-fast of both in one run); 3 packing K = 1,2,4,8; 4 GPU tests (equality of each option); 5 loader.
# Tiny dry run on a CPU: SIZE=32 NGF=8 STEPS=2 PACK_SECONDS=1 CELLS=1,2 DEVICE=cpu bash tools/device_check_10.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/device_check_10}
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
STAGES=${STAGES:-official options packing gpu_tests loader}  # e.g. two calls: "official options", "packing gpu_tests loader"
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
if want options; then
    stage options_cut 150 $PY -m qsattn bench --tables options --methods cut "${common[@]}" --out "$OUT/options_cut.json"
    stage options_qs 100 $PY -m qsattn bench --tables options --methods cut,qsattn-global --options defaults,all-fast \
        "${common[@]}" --out "$OUT/options_qs.json"
fi
want packing && stage packing 180 $PY -m qsattn bench --tables packing --methods cut,qsattn-global --cells "$CELLS" \
    --seconds "$SECONDS_PACK" --set "$FAST" "${common[@]}" --out "$OUT/packing.json"
if want gpu_tests && [ "$DEVICE" != cpu ]; then
    stage gpu_tests 120 $PY -m pytest tests/test_gpu.py -q -p no:cacheprovider --junitxml "$OUT/test_gpu.xml"
fi
want loader && stage loader 30 $PY -m qsattn bench --tables loader --sizes "$SIZE" --workers 0,2,4 --steps 40 --warmup 4 \
    --device cpu --out "$OUT/loader.json"

{ echo "# device check, issue #10"; cat "$OUT/machine.txt"; echo
  for log in official options_cut options_qs packing loader; do
      [ -f "$OUT/$log.log" ] && { echo "## $log"; grep '^|' "$OUT/$log.log"; echo; }
  done
  [ -f "$OUT/gpu_tests.log" ] && { echo "## gpu tests"; tail -5 "$OUT/gpu_tests.log"; }
  echo "## stages"; cat "$OUT/stages.jsonl"; } >"$OUT/summary.md"
cat "$OUT/summary.md"
