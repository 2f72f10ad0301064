// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file simd.hpp
/// \brief Run-time dispatch to the AVX-512 kernels: the lane coder and the lane element code of
/// the exact layer (exact/lanes.hpp, exact/lane_value.hpp) and the MLP's GEMM kernel
/// (objectives/mlp/gemm.hpp). Each has a portable twin with the same bits, so whether they run
/// changes the speed, never the results.
///
/// They run when they are compiled in (x86-64 with GCC or Clang, HYPERGRAD_NO_SIMD not defined),
/// the processor has AVX-512F and AVX-512DQ, and they are not switched off
/// (setLaneCoderEnabled(false), or the environment variable HYPERGRAD_NO_SIMD=1 at start). No
/// -march flag is needed: the functions carry their own target attribute. Under valgrind, which
/// does not emulate AVX-512, the CPU check fails and the portable code runs.

#include <atomic>
#include <cstdlib>

#include "config.hpp"

/// \cond INTERNAL
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(HYPERGRAD_NO_SIMD)
#define HYPERGRAD_LANE_CODER 1  // the AVX-512 kernels are compiled in
#include <immintrin.h>
#define HYPERGRAD_TARGET_AVX512 __attribute__((target("avx512f,avx512dq")))
#define HYPERGRAD_TARGET_AVX2 __attribute__((target("avx2")))
#else
#define HYPERGRAD_LANE_CODER 0
#endif
/// \endcond

namespace hypergrad {

namespace detail {
inline std::atomic<int>& laneCoderSwitch() noexcept {
  // 1: on, 0: off; initialised from the environment once.
  static std::atomic<int> on{[] {
    const char* v = std::getenv("HYPERGRAD_NO_SIMD");
    return (v != nullptr && v[0] != '\0' && v[0] != '0') ? 0 : 1;
  }()};
  return on;
}

inline bool laneCoderSupported() noexcept {
#if HYPERGRAD_LANE_CODER
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  }();
  return ok;
#else
  return false;
#endif
}
}  // namespace detail

/// True when the AVX-512 kernels run: the lane coder for buffers in the lane layout
/// (exact/lanes.hpp) and the MLP's GEMM kernel (objectives/mlp/gemm.hpp) — compiled in,
/// supported by the processor, not switched off. The bits do not depend on it.
inline bool laneCoderActive() noexcept {
  return detail::laneCoderSupported() && detail::laneCoderSwitch().load(std::memory_order_relaxed) != 0;
}

/// Switches the AVX-512 kernels on or off for the whole process (for A/B measurements and tests;
/// the results are the same bits either way). Off also when HYPERGRAD_NO_SIMD=1 is set at start.
inline void setLaneCoderEnabled(bool on) noexcept { detail::laneCoderSwitch().store(on ? 1 : 0); }

}  // namespace hypergrad
