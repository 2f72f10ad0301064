#!/usr/bin/env bash
# Builds the libFuzzer targets with clang 14 (ASan + UBSan) and runs each for a bounded time on
# the corpus kept in the repository, after replaying the reproducers in crashes/<target>/. Not part of the CMake build: the main build needs no clang.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]     (default: 60 seconds each, targets exact idx)
#
# Environment: CXX (default clang++-14), FUZZ_BUILD_DIR (default build-fuzz), FUZZ_INCLUDE_DIR
# (default include/: point it at a patched copy of the headers to fuzz a fix).
# New inputs found while fuzzing go to a temporary directory (libFuzzer writes to the first corpus
# directory it is given), never into tests/fuzz/corpus/. A crash leaves its reproducer in
# $FUZZ_BUILD_DIR/artifacts/ and fails the script; replay one with
#   $FUZZ_BUILD_DIR/fuzz_exact path/to/crash-...      (minimise: add -minimize_crash=1 -runs=10000)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
seconds="${1:-60}"
shift || true
targets=("$@")
((${#targets[@]} > 0)) || targets=(exact idx)

cxx="${CXX:-clang++-14}"
build="${FUZZ_BUILD_DIR:-${root}/build-fuzz}"
include="${FUZZ_INCLUDE_DIR:-${root}/include}"
mkdir -p "${build}/artifacts"

if ! command -v "${cxx}" >/dev/null; then
  echo "fuzz: ${cxx} not found (Debian: apt-get install clang-14 libclang-rt-14-dev)" >&2
  exit 1
fi
eigen="$(pkg-config --cflags-only-I eigen3 2>/dev/null || echo -I/usr/include/eigen3)"

# No NDEBUG: HYPERGRAD_ASSERT stays active and a failed internal assertion is a crash too.
flags=(-std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=all -Wall -Wextra -I"${include}" ${eigen})

build_target() {
  local name="$1" out="${build}/fuzz_$1" src="${here}/fuzz_$1.cpp" libs=()
  [[ "$1" == idx ]] && libs=(-lz)
  # Rebuild only when the target or a library header changed.
  if [[ -x "${out}" ]] && [[ -z "$(find "${src}" "${include}" -newer "${out}" -print -quit)" ]]; then
    return
  fi
  echo "fuzz: building fuzz_${name}"
  "${cxx}" "${flags[@]}" "${src}" -o "${out}" "${libs[@]}"
}

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

status=0
for name in "${targets[@]}"; do
  build_target "${name}"
done
for name in "${targets[@]}"; do
  # Reproducers of fixed bugs (crashes/<target>/) run first, as regression tests.
  crashes=()
  [[ -d "${here}/crashes/${name}" ]] && crashes=("${here}/crashes/${name}")
  scratch="$(mktemp -d "${TMPDIR:-/tmp}/hypergrad-fuzz-${name}.XXXXXX")"
  echo "fuzz: running fuzz_${name} for ${seconds} s (corpus ${here}/corpus/${name}, new inputs in ${scratch})"
  # -timeout: one input taking > 10 s is a hang. -malloc_limit_mb: a single allocation above 64 MB
  # is a failure (the IDX reader must never allocate what a header claims but the input, at most
  # -max_len bytes, does not hold). -rss_limit_mb: libFuzzer's default; ASan's quarantine and the
  # in-memory corpus take about 0.5 GB after a minute.
  if ! "${build}/fuzz_${name}" -max_total_time="${seconds}" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=64 \
        -max_len=4096 \
        -print_final_stats=1 -artifact_prefix="${build}/artifacts/${name}-" \
        "${scratch}" "${here}/corpus/${name}" "${crashes[@]}" 2>"${build}/fuzz_${name}.log"; then
    status=1
    tail -n 60 "${build}/fuzz_${name}.log" >&2
    echo "fuzz: fuzz_${name} FAILED; reproducer(s) in ${build}/artifacts/, full log ${build}/fuzz_${name}.log" >&2
  else
    grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' \
      "${build}/fuzz_${name}.log" | sed "s/^/fuzz: ${name}: /"
    echo "fuzz: fuzz_${name} passed ($(ls "${scratch}" | wc -l) new corpus inputs, discarded)"
  fi
  rm -rf "${scratch}"
done
exit "${status}"
