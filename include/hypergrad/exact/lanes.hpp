// SPDX-License-Identifier: MIT
#pragma once

/// \file lanes.hpp
/// \brief The lane coder: the bits-back multiply and divide by n/2^DBits of ratio_multiply.hpp
/// on eight elements at once (AVX-512), with the same bits as the scalar coder.
///
/// Same bits by construction: in the lane layout of InformationBuffer (`lanes = 8`) element i
/// spills into stack i mod 8 of its block, so each stack sees one element of every group of
/// eight, in the same order whether the elements go one by one or eight at a time. The lane code
/// is the scalar code written with 64-bit lane operations:
///
/// | scalar                     | lanes                                                        |
/// |----------------------------|--------------------------------------------------------------|
/// | shifts, masks, adds        | the same on int64 lanes                                      |
/// | slot · n (< 2^(MBits+32))  | 32×32→64 products (vpmuludq)                                 |
/// | ⌈s·M/n⌉ (dividend < 2^50)  | double reciprocal, truncation, one correction each way: exact |
/// | ⌊c/n⌋ (int64 c, n ≥ 2)     | two reciprocal steps (the first leaves a remainder < 2^43), one correction: exact |
/// | x / f, x % f (x < 2^64)    | f is ⌊M/n⌋ or ⌈M/n⌉ (two reciprocals); two steps as above     |
/// | f·(x >> M), q·n            | 64-bit products (vpmullq, AVX-512DQ)                          |
/// | spill / refill             | masked scatter / gather of 32-bit words at each lane's stack top |
///
/// A lane whose stack must switch chunks (its top at the end of a chunk, or at the start of one
/// that is not the bottom) pushes or pops through the stack itself; a group with a quotient at the
/// edge of the int64 range, when dividing, goes to the scalar coder (which gives the typed error).
/// Rare events, the same bits.
///
/// Dispatch is at run time (simd.hpp: laneCoderActive()): no -march flag is needed, the
/// functions carry their own target attribute; without AVX-512 the scalar coder runs.

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <limits>

#include "../config.hpp"
#include "../simd.hpp"
#include "information_buffer.hpp"

namespace hypergrad {

namespace detail {

/// Whether the lane coder handles this coder and ratio precision: the dividends of the
/// cumulative frequencies, below 2^(MBits+DBits), must be exact in a double with room for the
/// correction, and slot · n must fit a 32×32-bit product.
template <int DBits, int MBits>
constexpr bool laneCoderFits() noexcept {
  return MBits + DBits <= 50 && MBits <= 31 && DBits <= 31 && MBits > DBits;
}

#if HYPERGRAD_LANE_CODER
// NOLINTBEGIN(performance-no-int-to-ptr): the cursors hold the stacks' addresses in vector lanes.

HYPERGRAD_INTRINSICS_BEGIN

// The stack cursor of one block's eight lanes, in memory so that code compiled without AVX-512
// can hold it: each stack's top, chunk start and end as addresses, and `floor`, the chunk start
// of a stack whose top chunk is its bottom one (its empty position), else an address no top can
// have. While a cursor is open its tops are the stacks' tops: store() it before the stacks are
// used directly, load() it after.
struct LaneStacks {
  alignas(64) std::uint64_t top[8];
  alignas(64) std::uint64_t begin[8];
  alignas(64) std::uint64_t end[8];
  alignas(64) std::uint64_t floor[8];
  Index firstStack = 0;

  template <class Buffer>
  void load(Buffer& buf, Index first) noexcept {
    firstStack = first;
    for (int l = 0; l < 8; ++l) {
      const ChunkedWordStack& s = buf.stack(first + l);
      top[l] = reinterpret_cast<std::uintptr_t>(s.chunkTop());
      begin[l] = reinterpret_cast<std::uintptr_t>(s.chunkBegin());
      end[l] = reinterpret_cast<std::uintptr_t>(s.chunkEnd());
      floor[l] = s.bottomChunk() ? begin[l] : ~std::uint64_t(0);
    }
  }
  template <class Buffer>
  void store(Buffer& buf) const noexcept {
    for (int l = 0; l < 8; ++l) buf.stack(firstStack + l).setChunkTop(reinterpret_cast<std::uint32_t*>(top[l]));
  }
};

// The cursor's vectors in registers, for the span of one group operation.
struct LaneCursor {
  __m512i top, begin, end, floor;
};

HYPERGRAD_TARGET_AVX512 inline LaneCursor openCursor(const LaneStacks& st) noexcept {
  return {_mm512_load_si512(st.top), _mm512_load_si512(st.begin), _mm512_load_si512(st.end),
          _mm512_load_si512(st.floor)};
}

HYPERGRAD_TARGET_AVX512 inline void closeCursor(LaneStacks& st, const LaneCursor& c) noexcept {
  _mm512_store_si512(st.top, c.top);
}

// Spills the low words of the lanes in `mask` (x ≥ their bound): the scalar spill, a zero onto
// an empty stack dropped. A lane whose chunk is full pushes through its stack (which moves to the
// next chunk, reserved beforehand: no allocation fails here); the cursor is then reloaded.
template <class Buffer>
HYPERGRAD_TARGET_AVX512 inline __m512i laneSpill(__m512i x, __mmask8 mask, LaneCursor& c, LaneStacks& st, Buffer& buf) {
  if (mask == 0) return x;
  const __m256i word = _mm512_cvtepi64_epi32(x);
  const __mmask8 keep = mask & (_mm512_cmpneq_epu64_mask(_mm512_cvtepu32_epi64(word), _mm512_setzero_si512()) |
                                _mm512_cmpneq_epu64_mask(c.top, c.floor));
  const __mmask8 full = keep & _mm512_cmpeq_epu64_mask(c.top, c.end);
  const __mmask8 fast = keep & static_cast<__mmask8>(~full);
  _mm512_mask_i64scatter_epi32(nullptr, fast, c.top, word, 1);
  c.top = _mm512_mask_add_epi64(c.top, fast, c.top, _mm512_set1_epi64(4));
  if (full != 0) {
    closeCursor(st, c);
    st.store(buf);
    alignas(32) std::uint32_t w[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(w), word);
    for (int l = 0; l < 8; ++l)
      if ((full >> l) & 1) buf.stack(st.firstStack + l).push(w[l]);
    st.load(buf, st.firstStack);
    c = openCursor(st);
  }
  return _mm512_mask_srli_epi64(x, mask, x, 32);
}

// Refills the lanes whose state fell below L: x ← x·2^32 + the popped word (0 from an empty
// stack). A lane at the start of a chunk above the bottom one pops through its stack (which moves
// down a chunk); the cursor is then reloaded.
template <class Buffer>
HYPERGRAD_TARGET_AVX512 inline __m512i laneRefill(__m512i x, LaneCursor& c, LaneStacks& st, Buffer& buf) noexcept {
  const __mmask8 low = _mm512_cmplt_epu64_mask(x, _mm512_set1_epi64(std::int64_t(1) << 32));
  if (low == 0) return x;
  const __mmask8 nonEmpty = low & _mm512_cmpneq_epu64_mask(c.top, c.floor);
  const __mmask8 chunkStart = nonEmpty & _mm512_cmpeq_epu64_mask(c.top, c.begin);
  const __mmask8 fast = nonEmpty & static_cast<__mmask8>(~chunkStart);
  c.top = _mm512_mask_sub_epi64(c.top, fast, c.top, _mm512_set1_epi64(4));
  __m256i word = _mm512_mask_i64gather_epi32(_mm256_setzero_si256(), fast, c.top, nullptr, 1);
  if (chunkStart != 0) {
    closeCursor(st, c);
    st.store(buf);
    alignas(32) std::uint32_t w[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(w), word);
    for (int l = 0; l < 8; ++l)
      if ((chunkStart >> l) & 1) w[l] = buf.stack(st.firstStack + l).popOrZero();
    word = _mm256_load_si256(reinterpret_cast<const __m256i*>(w));
    st.load(buf, st.firstStack);
    c = openCursor(st);
  }
  return _mm512_mask_or_epi64(x, low, _mm512_slli_epi64(x, 32), _mm512_cvtepu32_epi64(word));
}

// ⌊a / n⌋ for 0 ≤ a < 2^50: the reciprocal's estimate is off by at most one either way.
HYPERGRAD_TARGET_AVX512 inline __m512i laneDivSmall(__m512i a, __m512d inv, __m512i n) noexcept {
  __m512i q = _mm512_cvttpd_epu64(_mm512_mul_pd(_mm512_cvtepu64_pd(a), inv));
  const __m512i r = _mm512_sub_epi64(a, _mm512_mullo_epi64(q, n));
  const __mmask8 neg = _mm512_cmplt_epi64_mask(r, _mm512_setzero_si512());
  q = _mm512_mask_sub_epi64(q, neg, q, _mm512_set1_epi64(1));
  const __m512i r2 = _mm512_mask_add_epi64(r, neg, r, n);
  return _mm512_mask_add_epi64(q, _mm512_cmpge_epi64_mask(r2, n), q, _mm512_set1_epi64(1));
}

// ⌊a / n⌋ and a mod n for a remainder-sized signed a (|a / n| < 2^51), given an estimate q0 with
// |a − q0·n| small: one more reciprocal step and a correction each way.
HYPERGRAD_TARGET_AVX512 inline __m512i laneRefineDiv(__m512i a, __m512i q0, __m512d inv, __m512i n, __m512i& rem) noexcept {
  __m512i r = _mm512_sub_epi64(a, _mm512_mullo_epi64(q0, n));
  const __m512i q2 = _mm512_cvtpd_epi64(
      _mm512_roundscale_pd(_mm512_mul_pd(_mm512_cvtepi64_pd(r), inv), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
  __m512i q = _mm512_add_epi64(q0, q2);
  r = _mm512_sub_epi64(r, _mm512_mullo_epi64(q2, n));
  const __m512i one = _mm512_set1_epi64(1);
  const __mmask8 neg = _mm512_cmplt_epi64_mask(r, _mm512_setzero_si512());
  q = _mm512_mask_sub_epi64(q, neg, q, one);
  r = _mm512_mask_add_epi64(r, neg, r, n);
  const __mmask8 big = _mm512_cmpge_epi64_mask(r, n);
  q = _mm512_mask_add_epi64(q, big, q, one);
  rem = _mm512_mask_sub_epi64(r, big, r, n);
  return q;
}

/// c8[l] ← c8[l] · n/2^DBits for the eight elements i..i+7 (i a multiple of 8, inside the block
/// whose stacks `st` holds open), with BitsBackRounding::multiplyOne's bits. 1 ≤ n < 2^DBits.
template <int DBits, int MBits, class Buffer>
HYPERGRAD_TARGET_AVX512 void laneMultiply8(std::int64_t* c8, Index i, std::uint32_t n, Buffer& buf, LaneStacks& st) {
  constexpr int fBits = MBits - DBits;
  std::uint64_t* states = buf.stateData() + i;
  const __m512i nv = _mm512_set1_epi64(n);
  const __m512d inv = _mm512_set1_pd(1.0 / n);
  LaneCursor cur = openCursor(st);
  __m512i x = _mm512_loadu_si512(states);
  const __m512i cv = _mm512_loadu_si512(c8);
  const __m512i q = _mm512_srai_epi64(cv, DBits);
  const __m512i r = _mm512_and_si512(cv, _mm512_set1_epi64((std::int64_t(1) << DBits) - 1));
  // pushPow2(r, DBits)
  x = laneSpill(x, _mm512_cmpge_epu64_mask(x, _mm512_set1_epi64(std::int64_t(1) << (64 - DBits))), cur, st, buf);
  x = _mm512_add_epi64(_mm512_add_epi64(_mm512_slli_epi64(_mm512_srli_epi64(x, fBits), MBits),
                                        _mm512_and_si512(x, _mm512_set1_epi64((std::int64_t(1) << fBits) - 1))),
                       _mm512_slli_epi64(r, fBits));
  // popUniform(n)
  const __m512i slot = _mm512_and_si512(x, _mm512_set1_epi64((std::int64_t(1) << MBits) - 1));
  const __m512i s = _mm512_srli_epi64(_mm512_mul_epu32(slot, nv), MBits);
  const __m512i a = _mm512_add_epi64(_mm512_slli_epi64(s, MBits), _mm512_set1_epi64(n - 1));
  const __m512i cs = laneDivSmall(a, inv, nv);
  const __m512i f = _mm512_sub_epi64(laneDivSmall(_mm512_add_epi64(a, _mm512_set1_epi64(std::int64_t(1) << MBits)), inv, nv), cs);
  x = _mm512_add_epi64(_mm512_mullo_epi64(f, _mm512_srli_epi64(x, MBits)), _mm512_sub_epi64(slot, cs));
  x = laneRefill(x, cur, st, buf);
  _mm512_storeu_si512(states, x);
  _mm512_storeu_si512(c8, _mm512_add_epi64(_mm512_mullo_epi64(q, nv), s));
  closeCursor(st, cur);
}

/// The inverse of laneMultiply8, with BitsBackRounding::tryDivideOne's bits; false, with nothing
/// changed, when a quotient is at the edge of the int64 range (the scalar code decides those, and
/// the multiply never produces them but for q = qMin, r ≠ 0). 2 ≤ n < 2^DBits.
template <int DBits, int MBits, class Buffer>
HYPERGRAD_TARGET_AVX512 bool laneDivide8(std::int64_t* c8, Index i, std::uint32_t n, Buffer& buf, LaneStacks& st) {
  constexpr int fBits = MBits - DBits;
  const __m512i nv = _mm512_set1_epi64(n);
  const __m512d inv = _mm512_set1_pd(1.0 / n);
  const __m512i cv = _mm512_loadu_si512(c8);
  // ⌊c / n⌋: |c / n| ≤ 2^62, the estimate within ≈ 2^11 of it.
  const __m512i q0 = _mm512_cvtpd_epi64(
      _mm512_roundscale_pd(_mm512_mul_pd(_mm512_cvtepi64_pd(cv), inv), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
  __m512i rem;
  const __m512i q = laneRefineDiv(cv, q0, inv, nv, rem);
  // q·2^DBits + r must stay in (INT64_MIN, INT64_MAX]: q in (qMin, qMax] here.
  const __mmask8 inRange =
      _mm512_cmple_epi64_mask(q, _mm512_set1_epi64(std::numeric_limits<std::int64_t>::max() >> DBits)) &
      _mm512_cmpgt_epi64_mask(q, _mm512_set1_epi64(std::numeric_limits<std::int64_t>::min() >> DBits));
  if (static_cast<__mmask8>(inRange) != 0xFF) return false;
  std::uint64_t* states = buf.stateData() + i;
  LaneCursor cur = openCursor(st);
  __m512i x = _mm512_loadu_si512(states);
  // pushUniform(rem, n); every frequency is fLo = ⌊M/n⌋ or fLo + 1.
  const __m512i a = _mm512_add_epi64(_mm512_slli_epi64(rem, MBits), _mm512_set1_epi64(n - 1));
  const __m512i cs = laneDivSmall(a, inv, nv);
  const __m512i f = _mm512_sub_epi64(laneDivSmall(_mm512_add_epi64(a, _mm512_set1_epi64(std::int64_t(1) << MBits)), inv, nv), cs);
  x = laneSpill(x, _mm512_cmpge_epu64_mask(x, _mm512_slli_epi64(f, 64 - MBits)), cur, st, buf);
  const std::uint64_t fLo = (std::uint64_t(1) << MBits) / n;
  const __m512d invF = _mm512_mask_blend_pd(_mm512_cmpeq_epi64_mask(f, _mm512_set1_epi64(static_cast<std::int64_t>(fLo))),
                                            _mm512_set1_pd(1.0 / static_cast<double>(fLo + 1)),
                                            _mm512_set1_pd(1.0 / static_cast<double>(fLo)));
  const __m512i qx0 = _mm512_cvttpd_epu64(_mm512_mul_pd(_mm512_cvtepu64_pd(x), invF));
  __m512i rx;
  const __m512i qx = laneRefineDiv(x, qx0, invF, f, rx);
  x = _mm512_add_epi64(_mm512_add_epi64(_mm512_slli_epi64(qx, MBits), rx), cs);
  // popPow2(DBits)
  const __m512i slot = _mm512_and_si512(x, _mm512_set1_epi64((std::int64_t(1) << MBits) - 1));
  const __m512i r = _mm512_srli_epi64(slot, fBits);
  x = _mm512_add_epi64(_mm512_slli_epi64(_mm512_srli_epi64(x, MBits), fBits),
                       _mm512_and_si512(slot, _mm512_set1_epi64((std::int64_t(1) << fBits) - 1)));
  x = laneRefill(x, cur, st, buf);
  _mm512_storeu_si512(states, x);
  _mm512_storeu_si512(c8, _mm512_add_epi64(_mm512_slli_epi64(q, DBits), r));
  closeCursor(st, cur);
  return true;
}

/// c[i] ← c[i] · n/2^DBits for i in [begin, end), whole groups of eight inside one block of a
/// lane-layout buffer, in increasing order.
template <int DBits, int MBits, class Buffer>
void laneMultiply(std::int64_t* c, Index begin, Index end, std::uint32_t n, Buffer& buf) {
  LaneStacks st;
  st.load(buf, buf.stackOf(begin));
  for (Index i = begin; i < end; i += 8) laneMultiply8<DBits, MBits>(c + i, i, n, buf, st);
  st.store(buf);
}

/// The inverse of laneMultiply over the same range, groups in decreasing order; a group with a
/// quotient at the edge of the int64 range goes to `scalarOne` (which throws the typed error).
template <int DBits, int MBits, class Buffer>
void laneDivide(std::int64_t* c, Index begin, Index end, std::uint32_t n, Buffer& buf,
                void (*scalarOne)(std::int64_t&, std::uint32_t, Index, Buffer&)) {
  LaneStacks st;
  st.load(buf, buf.stackOf(begin));
  for (Index i = end; i > begin;) {
    i -= 8;
    if (!laneDivide8<DBits, MBits>(c + i, i, n, buf, st)) {
      st.store(buf);
      for (Index j = i + 8; j-- > i;) scalarOne(c[j], n, j, buf);
      st.load(buf, st.firstStack);
    }
  }
  st.store(buf);
}

HYPERGRAD_INTRINSICS_END

// NOLINTEND(performance-no-int-to-ptr)
#endif  // HYPERGRAD_LANE_CODER

}  // namespace detail
}  // namespace hypergrad
