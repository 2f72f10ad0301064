// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file config.hpp
/// \brief Version, index type and the internal-invariant assert macro.

#include <cstdint>

#include <Eigen/Core>

/// Major version; `find_package(hypergrad X.Y)` accepts only this major version (SameMajorVersion).
#define HYPERGRAD_VERSION_MAJOR 0
/// Minor version.
#define HYPERGRAD_VERSION_MINOR 1
/// Patch version.
#define HYPERGRAD_VERSION_PATCH 0

/// Internal invariants (never user input: that gets a typed exception). Override by defining
/// HYPERGRAD_ASSERT before including any hypergrad header.
#ifndef HYPERGRAD_ASSERT
#include <cassert>
#define HYPERGRAD_ASSERT(x) assert(x)
#endif

/// \cond INTERNAL
// Keeps a cold or large function out of its caller (hot loops stay small enough to inline their
// own callees).
#if defined(__GNUC__) || defined(__clang__)
#define HYPERGRAD_NOINLINE __attribute__((noinline))
#else
#define HYPERGRAD_NOINLINE
#endif
/// \endcond

/// \cond INTERNAL
// GCC 12 warns that AVX-512 intrinsics' own undefined pass-through operands "are" or "may be
// used uninitialized" once they are inlined (GCC bug 105593, fixed in GCC 13): code built on the
// intrinsics goes between these two.
#if defined(__GNUC__) && !defined(__clang__)
#define HYPERGRAD_INTRINSICS_BEGIN                                   \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define HYPERGRAD_INTRINSICS_END _Pragma("GCC diagnostic pop")
#else
#define HYPERGRAD_INTRINSICS_BEGIN
#define HYPERGRAD_INTRINSICS_END
#endif
/// \endcond

/// The public API of hypergrad (private helpers live in its nested namespace `detail`).
namespace hypergrad {

/// Index type used throughout, the same as Eigen's so sizes mix without casts.
using Index = Eigen::Index;

namespace detail {
// 128-bit integers for exact products of 64-bit fixed-point values (GCC and Clang).
// __extension__ keeps -Wpedantic quiet about the non-standard type.
__extension__ using Int128 = __int128;
__extension__ using UInt128 = unsigned __int128;
}  // namespace detail

}  // namespace hypergrad
