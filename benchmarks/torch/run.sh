#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Peer comparison with libtorch autograd (benchmarks/torch/README.md). Builds the three
# executables of benchmarks/torch (Release, stand-alone CMake project, -j1), then runs the matrix
#   impl ∈ {hypergrad (default flags), hypergrad (-march=native), torch} × T ∈ {100, 1000} × threads ∈ {1, 2}
# one process per configuration (so VmHWM is that configuration's peak), interleaved over ROUNDS
# rounds (ratios are taken within one invocation), then compares the hypergradients and prints
# the table (summarize.py).
#
# Environment: BUILD_DIR (default build-torch), OUT_DIR (default $BUILD_DIR/torch-results, or
# $BUILD_DIR/torch-results-float32), ROUNDS (default 3), STEPS (default "100 1000"), THREADS
# (default "1 2"), REPS100 (repetitions inside one process at T = 100, default 3), JOBS (default 1),
# DTYPE (float64, default, or float32: hypergrad's MLP in float — MlpObjectiveFloat — against
# libtorch in torch::kFloat32).
set -euo pipefail

cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build-torch}
DTYPE=${DTYPE:-float64}
if [[ $DTYPE == float64 ]]; then OUT_DIR=${OUT_DIR:-$BUILD_DIR/torch-results}; else OUT_DIR=${OUT_DIR:-$BUILD_DIR/torch-results-$DTYPE}; fi
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-"100 1000"}
THREADS=${THREADS:-"1 2"}
REPS100=${REPS100:-3}
JOBS=${JOBS:-1}

cmake -S benchmarks/torch -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"
if [[ ! -x "$BUILD_DIR/bench_torch" ]]; then
  echo "run.sh: bench_torch was not built (libtorch not found? Debian: libtorch-dev)" >&2
  exit 1
fi
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"
COMPARE="$OUT_DIR/compare.jsonl"
: >"$RESULTS"
: >"$COMPARE"

{
  echo "date: $(date -Is)"
  echo "dtype: $DTYPE"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "mlp.hpp vs HEAD: $(git diff --stat HEAD -- include/hypergrad/objectives/mlp.hpp 2>/dev/null | tail -n1)"
  echo "sgd_momentum.hpp vs HEAD: $(git diff --stat HEAD -- include/hypergrad/optimizers/sgd_momentum.hpp 2>/dev/null | tail -n1)"
  update-alternatives --display libblas.so.3-x86_64-linux-gnu 2>/dev/null | sed -n '1,3p' || true
  echo "ldd bench_torch:"
  ldd "$BUILD_DIR/bench_torch" | grep -E 'blas|lapack|gomp|omp' || true
  echo "blas.so.3 resolves to: $(readlink -f "$(ldconfig -p | awk '/libblas.so.3 /{print $NF; exit}')")"
} >"$OUT_DIR/env.txt"
cat "$OUT_DIR/env.txt"

run() {  # run BINARY IMPL-LABEL STEPS THREADS ROUND
  local bin=$1 label=$2 steps=$3 threads=$4 round=$5 reps=1 impl=hypergrad
  [[ $label == torch ]] && impl=torch
  [[ $steps -le 100 ]] && reps=$REPS100
  local line
  line=$(OMP_NUM_THREADS=$threads "$BUILD_DIR/$bin" --impl "$impl" --dtype "$DTYPE" --steps "$steps" --threads "$threads" --reps "$reps" \
           --out "$OUT_DIR/$label.T$steps.k$threads.bin")
  echo "{\"label\":\"$label\",\"round\":$round,\"load\":\"$(cut -d' ' -f1 /proc/loadavg)\",${line#\{}" | tee -a "$RESULTS"
}

for round in $(seq 1 "$ROUNDS"); do
  for steps in $STEPS; do
    for threads in $THREADS; do
      run bench_torch_hypergrad hypergrad "$steps" "$threads" "$round"
      run bench_torch_hypergrad_native hypergrad-native "$steps" "$threads" "$round"
      run bench_torch torch "$steps" "$threads" "$round"
    done
  done
done

# Hypergradients: hypergrad against torch (same T, same threads), and each against itself
# across thread counts (hypergrad's must be bit-identical).
for steps in $STEPS; do
  for threads in $THREADS; do
    for label in hypergrad hypergrad-native; do
      echo "{\"what\":\"$label vs torch\",\"steps\":$steps,\"threads\":$threads,$("$BUILD_DIR/bench_torch_hypergrad" --compare \
        "$OUT_DIR/$label.T$steps.k$threads.bin" "$OUT_DIR/torch.T$steps.k$threads.bin" | cut -c2-)" | tee -a "$COMPARE"
    done
  done
  set -- $THREADS
  if [[ $# -ge 2 ]]; then
    for label in hypergrad hypergrad-native torch; do
      echo "{\"what\":\"$label threads $1 vs $2\",\"steps\":$steps,\"threads\":$2,$("$BUILD_DIR/bench_torch_hypergrad" --compare \
        "$OUT_DIR/$label.T$steps.k$2.bin" "$OUT_DIR/$label.T$steps.k$1.bin" | cut -c2-)" | tee -a "$COMPARE"
    done
  fi
done

python3 benchmarks/torch/summarize.py "$RESULTS" "$COMPARE" | tee "$OUT_DIR/summary.md"
