#!/usr/bin/env bash
# Mutation testing of one result-deciding module against the tests that cover it (issue 29; docs/testing.md).
#
#   tools/mutation.sh inference/roi.py        # one module (path under SegVolSlicer/SegVolSlicerLib/)
#   tools/mutation.sh --list                  # the modules this script knows, with their tests
#
# mutmut 3 (the `mutation` extra) imports the mutated package from ./mutants, ./mutants/src or ./mutants/source
# only, and names each mutant by its file's path: the SegVolSlicer/SegVolSlicerLib layout fits neither. So each
# module runs in a scratch folder build/mutation/<module>/ holding a copy of SegVolSlicerLib and Testing/ with a
# setup.cfg of its own, where the package's path is its import name. Results: build/mutation/<module>/mutants/
# (`cd` there and `mutmut results`, `mutmut show NAME`); the summary line is printed at the end.
# Not run in CI (minutes per module on 2 cores); run it at nice 19 on a shared machine.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# module -> the test files that cover it (Testing/Python/...), the fast ones that name its mistakes.
declare -A TESTS=(
  [inference/roi.py]="test_inference_stages.py test_correction_windows.py"
  [inference/merge.py]="test_merge.py test_inference_stages.py"
  [inference/windows.py]="test_inference_stages.py test_correction_windows.py"
  [inference/window_prompts.py]="test_window_prompts.py test_inference_stages.py test_correction.py"
  [inference/correction.py]="test_correction.py test_correction_windows.py"
  [inference/model_space.py]="test_prompts.py test_prompt_mapping_offsets.py test_inference_stages.py"
  [inference/prompt_mapping.py]="test_prompts.py test_prompt_mapping_offsets.py"
  [geometry.py]="test_geometry.py test_geometry_axes.py test_prompts.py"
  [prompts.py]="test_prompts.py test_prompt_mapping_offsets.py"
  [datasets/records.py]="test_dataset_records.py"
  [server/guard.py]="test_server_upload_limit.py test_server_limits.py"
  [wire.py]="test_server.py"
  [clinical/statistics.py]="test_clinical.py"
  [clinical/confidence.py]="test_clinical.py"
)

# Tests that fail on the unmutated tree are left out (mutmut needs a green run to start from); each names
# why, and leaves this list when it passes again.
DESELECT=()  # tests that fail on the unmutated tree (none now)

if [[ "${1:-}" == "--list" ]]; then
  for module in "${!TESTS[@]}"; do echo "$module: ${TESTS[$module]}"; done | sort
  exit 0
fi
MODULE=${1:?"give a module under SegVolSlicer/SegVolSlicerLib/, e.g. inference/roi.py (or --list)"}
[[ -n "${TESTS[$MODULE]:-}" ]] || { echo "no tests are named for $MODULE in $0: add it to TESTS" >&2; exit 2; }
[[ -f "$ROOT/SegVolSlicer/SegVolSlicerLib/$MODULE" ]] || { echo "no module SegVolSlicerLib/$MODULE" >&2; exit 2; }
command -v mutmut >/dev/null || { echo "mutmut is not installed: pip install '.[mutation]' (mutmut==3.8.1)" >&2; exit 2; }

WORK="$ROOT/build/mutation/${MODULE//\//.}"
rm -rf "$WORK"
mkdir -p "$WORK"
cp -r "$ROOT/SegVolSlicer/SegVolSlicerLib" "$ROOT/SegVolSlicer/Testing" "$WORK/"
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +
{
  echo "[mutmut]"
  echo "source_paths = SegVolSlicerLib"
  echo "only_mutate = SegVolSlicerLib/$MODULE"
  echo "also_copy = Testing"
  echo "pytest_add_cli_args ="
  for arg in -p no:cacheprovider -q -x; do echo "    $arg"; done
  for test in "${DESELECT[@]}"; do printf '    --deselect\n    %s\n' "$test"; done
  echo "pytest_add_cli_args_test_selection ="
  for test in ${TESTS[$MODULE]}; do echo "    Testing/Python/$test"; done
} >"$WORK/setup.cfg"

cd "$WORK"
started=$(date +%s)
# PYTHONPATH unset: the mutated copy in ./mutants must be the only SegVolSlicerLib the tests can import first.
if ! env -u PYTHONPATH OMP_NUM_THREADS=1 nice -n 19 mutmut run --max-children 1 >run.log 2>&1; then
  tr '\r' '\n' <run.log | tail -n 30 >&2
  echo "mutmut failed on $MODULE: the whole log is $WORK/run.log" >&2
  exit 1
fi
seconds=$(($(date +%s) - started))
mutmut results --all true >results.txt
total=$(grep -c ': ' results.txt || true)
killed=$(grep -c ': killed$' results.txt || true)
echo "$MODULE: $killed killed of $total mutants in $seconds s; not killed (mutmut show NAME, in $WORK):"
grep -v ': killed$' results.txt || true
