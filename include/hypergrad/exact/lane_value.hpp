// SPDX-License-Identifier: MIT
#pragma once

/// \file lane_value.hpp
/// \brief LaneValue, eight doubles that an update rule's element code computes with when the
/// kernel runs it on a lane group of eight elements at once (rules that declare `laneCode`; see
/// optimizers/concept.hpp).
///
/// Each operation is the IEEE operation of double applied lane by lane — + − × ÷ and sqrt are
/// correctly rounded, so every lane holds the bits the same code gives on that element's doubles.
/// There is deliberately no comparison: element code that runs on lanes cannot branch on the
/// data, which is what makes one operation sequence valid for all eight elements. (As for the
/// scalar code, an addend must not contain a·b + c: under FMA flags the compiler may contract it,
/// and the vector and the scalar code need not contract alike.)

#include <cmath>

#include "lanes.hpp"

namespace hypergrad {

/// Eight doubles, one per lane of a group of elements (see the file comment).
struct LaneValue {
  /// The lanes' values. Not over-aligned: element code takes its values by value, and a 64-byte
  /// aligned argument would change the calling convention (GCC notes it).
  double v[8];

  LaneValue() noexcept = default;
  /// The same value in every lane (an implicit conversion, so that rule code can mix doubles in).
  LaneValue(double x) noexcept {  // NOLINT(google-explicit-constructor)
    for (double& y : v) y = x;
  }
  double operator[](int lane) const noexcept { return v[lane]; }  ///< Lane `lane`'s value.
  double& operator[](int lane) noexcept { return v[lane]; }       ///< Lane `lane`'s value.
};

/// \cond INTERNAL
#define HYPERGRAD_LANE_BINARY(op)                                                   \
  inline LaneValue operator op(const LaneValue& a, const LaneValue& b) noexcept {   \
    LaneValue r;                                                                    \
    for (int l = 0; l < 8; ++l) r.v[l] = a.v[l] op b.v[l];                          \
    return r;                                                                       \
  }                                                                                 \
  inline LaneValue operator op(const LaneValue& a, double b) noexcept {             \
    LaneValue r;                                                                    \
    for (int l = 0; l < 8; ++l) r.v[l] = a.v[l] op b;                               \
    return r;                                                                       \
  }                                                                                 \
  inline LaneValue operator op(double a, const LaneValue& b) noexcept {             \
    LaneValue r;                                                                    \
    for (int l = 0; l < 8; ++l) r.v[l] = a op b.v[l];                               \
    return r;                                                                       \
  }                                                                                 \
  inline LaneValue& operator op##=(LaneValue& a, const LaneValue& b) noexcept {     \
    for (int l = 0; l < 8; ++l) a.v[l] = a.v[l] op b.v[l];                          \
    return a;                                                                       \
  }
HYPERGRAD_LANE_BINARY(+)
HYPERGRAD_LANE_BINARY(-)
HYPERGRAD_LANE_BINARY(*)
HYPERGRAD_LANE_BINARY(/)
#undef HYPERGRAD_LANE_BINARY
/// \endcond

/// −a, lane by lane.
inline LaneValue operator-(const LaneValue& a) noexcept {
  LaneValue r;
  for (int l = 0; l < 8; ++l) r.v[l] = -a.v[l];
  return r;
}

/// √a, lane by lane (found by argument-dependent lookup: element code writes `using std::sqrt;`
/// and calls `sqrt` unqualified). With the lane coder compiled in it is one vsqrtpd: the kernel
/// runs lane element code inside an AVX-512 function that inlines this one (libm's scalar sqrt in a
/// loop would not vectorise, since it may set errno).
#if HYPERGRAD_LANE_CODER
HYPERGRAD_INTRINSICS_BEGIN
HYPERGRAD_TARGET_AVX512 inline LaneValue sqrt(const LaneValue& a) noexcept {
  LaneValue r;
  _mm512_storeu_pd(r.v, _mm512_sqrt_pd(_mm512_loadu_pd(a.v)));
  return r;
}
HYPERGRAD_INTRINSICS_END
#else
inline LaneValue sqrt(const LaneValue& a) noexcept {
  LaneValue r;
  for (int l = 0; l < 8; ++l) r.v[l] = std::sqrt(a.v[l]);
  return r;
}
#endif

}  // namespace hypergrad
