#!/usr/bin/env bash
# Every benchmark on one GPU in one call (< 8 minutes on an H100), and one table of the figures:
#
#   bash benchmarks/gpu_check.sh [--device cuda] [--checkpoint CKPT] [--out DIR] [--short]
#
# Writes DIR (default gpu-check/) with each benchmark's log and JSON, and DIR/table.md (also printed):
# the floor, each pass as a multiple of it, the first name on a 512x512x300 CT (fp32 and auto, windows
# counted), a correction, a second click, ten names (in-process and whole process), peak GPU memory, the
# server's clicks per second. `--device cpu --short` is the same run, smaller, for checking the script on a
# machine without a GPU (the figures then say nothing about a GPU). A benchmark that fails is reported in the
# table and the others still run.
set -uo pipefail

device=cuda checkpoint="" out=gpu-check short=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --checkpoint) checkpoint=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --short) short=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$here/../SegVolSlicer:$here${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
weights=()
[ -n "$checkpoint" ] && weights=(--checkpoint "$checkpoint")
if [ "$short" = 1 ]; then
    shape=(64 200 200) clicks=1 names=3 quick=(--short) server_clicks=3
else
    shape=(300 512 512) clicks=3 names=10 quick=() server_clicks=20
fi

step() {  # step NAME TIMEOUT_S COMMAND...: run one benchmark into $out/NAME.log, never stopping the others
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" >&2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local status=$?
    echo "$name $status $((SECONDS - start))" >>"$out/status.txt"
    [ "$status" = 0 ] || { echo "   $name failed ($status), see $out/$name.log" >&2; tail -5 "$out/$name.log" >&2; }
}

: >"$out/status.txt"
replicas=$device
[ "$device" = cuda ] && replicas=cuda:0
step floor 120 python "$here/floor.py" --device "$device" "${quick[@]}"
step pipeline 900 python "$here/run_benchmarks.py" --device "$device" "${weights[@]}" "${quick[@]}" \
    --json "$out/pipeline.json"
for precision in fp32 auto; do
    step "first-name-$precision" 600 python "$here/refine_benchmark.py" --device "$device" "${weights[@]}" \
        --precision "$precision" --shape "${shape[@]}" --clicks "$clicks" --json "$out/first-name-$precision.json"
done
zoom=()
[ "$short" = 1 ] && zoom=(--no-zoom-in)
step ten-names 900 python "$here/process_benchmark.py" --device "$device" "${weights[@]}" --names "$names" \
    "${zoom[@]}" --json "$out/ten-names.json"
model=synthetic  # the network itself; --short: the test suite's stand-in (the server's own cost only)
[ "$short" = 1 ] && model=standin
[ -n "$checkpoint" ] && model=$checkpoint
step server 600 python "$here/server_benchmark.py" --model "$model" --device "$device" --clicks "$server_clicks" \
    --sessions 1 --replicas "$replicas"
python "$here/gpu_table.py" "$out" | tee "$out/table.md"
