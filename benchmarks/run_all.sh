#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Builds the hypergrad benchmarks (Release, -j1), runs them with JSON output and prints the summary
# table of every figure with its target (benchmarks/summarize.py).
#
#   benchmarks/run_all.sh              the paper's workload (MLP 784-50-50-50-10), T = 100 and 1000
#   benchmarks/run_all.sh --long       also T = 1000 hypergradients and the T = 10000 memory case
#   benchmarks/run_all.sh --smoke      tiny cases only (seconds)
#
# Environment: BUILD_DIR (default build-bench), JOBS (default 1), OUT_DIR (default
# $BUILD_DIR/benchmark-results), EXTRA_ARGS (passed to every benchmark binary, e.g.
# --benchmark_repetitions=3), NATIVE=1 (compile with -march=native: HYPERGRAD_NATIVE=ON; use its
# own BUILD_DIR, e.g. BUILD_DIR=build-bench-native).
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-bench}
JOBS=${JOBS:-1}
OUT_DIR=${OUT_DIR:-$BUILD_DIR/benchmark-results}
MODE=default
for arg in "$@"; do
  case "$arg" in
    --long) MODE=long ;;
    --smoke) MODE=smoke ;;
    -h|--help) sed -n '3,14p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$arg' (use --long, --smoke or nothing)" >&2; exit 2 ;;
  esac
done

NATIVE_FLAG=OFF
if [[ "${NATIVE:-0}" == 1 ]]; then NATIVE_FLAG=ON; fi
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DHYPERGRAD_BUILD_TESTS=OFF -DHYPERGRAD_BUILD_EXAMPLES=OFF \
      -DHYPERGRAD_BUILD_BENCHMARKS=ON "-DHYPERGRAD_NATIVE=$NATIVE_FLAG" >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS" --target bench_exact bench_hypergrad bench_threads bench_adam
mkdir -p "$OUT_DIR"

case "$MODE" in
  smoke) FILTER=smoke; WORKLOAD=smoke; COMMON=(--benchmark_min_time=0.01); LONG=() ;;
  long) FILTER='N:|mnist'; WORKLOAD=mnist; COMMON=(); LONG=(--hypergrad_long) ;;
  *) FILTER='N:|mnist'; WORKLOAD=mnist; COMMON=(); LONG=() ;;
esac

bin="$BUILD_DIR/benchmarks"
files=()
for b in bench_exact bench_hypergrad bench_threads bench_adam; do
  out="$OUT_DIR/$b.json"
  echo "== $b" >&2
  "$bin/$b" "--benchmark_filter=$FILTER" "${COMMON[@]}" "${LONG[@]}" ${EXTRA_ARGS:-} \
    "--benchmark_out=$out" --benchmark_out_format=json >&2
  files+=("$out")
done

echo
echo "Machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs available;" \
     "compiler: $(${CXX:-c++} --version | head -1)"
python3 benchmarks/summarize.py --workload "$WORKLOAD" "${files[@]}"
echo
echo "JSON: ${files[*]}"
