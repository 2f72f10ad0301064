// SPDX-License-Identifier: MIT
#pragma once

/// \file information_buffer.hpp
/// \brief The information buffer: a bounded-state streaming entropy coder (bits-back rANS) that
/// keeps the bits multiplication by γ < 1 destroys, at O(1) per push or pop.
///
/// Layout: one 64-bit rANS state per element, kept in [L, 2^64) with L = 2^32, and one stack of
/// 32-bit words per block of elements that the states spill into and refill from. Blocks are
/// independent, so the element loop can be split across threads by block; within a block the
/// operations must be undone in exactly the reverse order (the reversible multiply does that).
///
/// Symbols are coded at precision M = 2^MBits. A radix-2^k digit (k ≤ MBits) is coded with
/// frequency M/2^k each; a radix-n digit (n ≤ 2^(MBits−8) in practice) with the near-uniform
/// cumulative frequency cum(s) = ceil(s·M/n). L = 2^32 is a multiple of M, which makes encode and
/// decode exact inverses, spills and refills included (DESIGN.md §2). M must be finer than the
/// ratio denominator d: with M = d a pop only re-reads the digit just pushed and the buffer
/// stores 1.3–1.4× the entropy bound.
///
/// Below each block's stack lies an implicit infinite supply of zero words, so any sequence of
/// pushes and pops is a bijection on (values, buffer): popping from the empty buffer is allowed
/// (it draws zeros) and the matching pushes return it to exactly empty().

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../errors.hpp"

namespace hypergrad {

/// \tparam MBits coder precision, log2 M; 9 ≤ MBits ≤ 31 (default 24). Must exceed the ratio
/// denominator's bits by at least 8 for the 1.00x-of-bound figure.
template <int MBits = 24>
class InformationBuffer {
  static_assert(MBits >= 9 && MBits <= 31, "hypergrad::InformationBuffer<MBits>: MBits must be in [9, 31]");

 public:
  static constexpr int precisionBits = MBits;
  static constexpr std::uint64_t lowerBound = std::uint64_t(1) << 32;  ///< L, the empty state
  static constexpr std::uint32_t precision = std::uint32_t(1) << MBits;  ///< M
  static constexpr Index defaultBlockSize = 4096;

  InformationBuffer() = default;

  /// An empty buffer for `numElements` elements, grouped in blocks of `blockSize`.
  explicit InformationBuffer(Index numElements, Index blockSize = defaultBlockSize)
      : m_blockSize(blockSize) {
    if (numElements < 0 || blockSize <= 0) {
      throw InvalidArgument(detail::message("InformationBuffer: need numElements >= 0 and blockSize > 0, got ",
                                            numElements, " and ", blockSize));
    }
    m_states.assign(static_cast<std::size_t>(numElements), lowerBound);
    m_stacks.resize(static_cast<std::size_t>((numElements + blockSize - 1) / blockSize));
  }

  Index size() const noexcept { return static_cast<Index>(m_states.size()); }
  Index blockSize() const noexcept { return m_blockSize; }
  Index numBlocks() const noexcept { return static_cast<Index>(m_stacks.size()); }
  /// Block b covers elements [blockBegin(b), blockEnd(b)).
  Index blockBegin(Index b) const noexcept { return b * m_blockSize; }
  Index blockEnd(Index b) const noexcept { return std::min(size(), (b + 1) * m_blockSize); }
  Index blockOf(Index i) const noexcept { return i / m_blockSize; }

  /// True when every state is L and every stack is empty: the state of a new buffer.
  bool empty() const noexcept {
    for (const auto& s : m_stacks)
      if (!s.empty()) return false;
    for (std::uint64_t x : m_states)
      if (x != lowerBound) return false;
    return true;
  }

  /// Information held, in bits: 32 per spilled word plus log2(x/L) per state. This is what the
  /// entropy bound Σ log2(d/n) is compared with.
  double informationBits() const noexcept {
    double bits = 0.0;
    for (const auto& s : m_stacks) bits += 32.0 * static_cast<double>(s.size());
    for (std::uint64_t x : m_states) bits += std::log2(static_cast<double>(x)) - 32.0;
    return bits;
  }

  /// Bits of memory the buffer's content occupies: 64 per element (the states, a constant) plus
  /// 32 per spilled word. Capacity slack of the stacks is not counted (see memoryBytes()).
  double storageBits() const noexcept {
    double bits = 64.0 * static_cast<double>(size());
    for (const auto& s : m_stacks) bits += 32.0 * static_cast<double>(s.size());
    return bits;
  }

  /// Bytes actually allocated, capacity included.
  std::size_t memoryBytes() const noexcept {
    std::size_t bytes = m_states.capacity() * sizeof(std::uint64_t) + m_stacks.capacity() * sizeof(Stack);
    for (const auto& s : m_stacks) bytes += s.capacity() * sizeof(std::uint32_t);
    return bytes;
  }

  /// Number of spilled 32-bit words in all blocks.
  std::size_t spilledWords() const noexcept {
    std::size_t n = 0;
    for (const auto& s : m_stacks) n += s.size();
    return n;
  }

  /// Returns the buffer to its empty state (discarding its content).
  void clear() {
    for (auto& x : m_states) x = lowerBound;
    for (auto& s : m_stacks) s.clear();
  }

  bool operator==(const InformationBuffer& o) const {
    return m_blockSize == o.m_blockSize && m_states == o.m_states && m_stacks == o.m_stacks;
  }

  // ---- Coder primitives on element i (which lives in block blockOf(i)). --------------------
  // Each is O(1). A push is an rANS encode, a pop an rANS decode; pop(push(x, s)) == (x, s).

  /// Push digit s ∈ [0, 2^k) with uniform probability 2^−k, k ≤ MBits.
  void pushPow2(Index i, std::uint32_t s, int k) {
    HYPERGRAD_ASSERT(k >= 0 && k <= MBits && s < (std::uint64_t(1) << k));
    if (k == 0) return;  // radix 1: nothing to store
    const int fBits = MBits - k;  // f = 2^fBits
    std::uint64_t& x = m_states[static_cast<std::size_t>(i)];
    if (x >= (std::uint64_t(1) << (64 - k))) spill(i, x);  // x_max = f · 2^(64−MBits) = 2^(64−k)
    x = ((x >> fBits) << MBits) + (x & ((std::uint64_t(1) << fBits) - 1)) + (std::uint64_t(s) << fBits);
  }

  /// Pop a digit of radix 2^k (the inverse of pushPow2).
  std::uint32_t popPow2(Index i, int k) {
    HYPERGRAD_ASSERT(k >= 0 && k <= MBits);
    if (k == 0) return 0;
    const int fBits = MBits - k;
    std::uint64_t& x = m_states[static_cast<std::size_t>(i)];
    const std::uint64_t slot = x & (precision - 1);
    const std::uint32_t s = static_cast<std::uint32_t>(slot >> fBits);
    x = ((x >> MBits) << fBits) + (slot & ((std::uint64_t(1) << fBits) - 1));
    if (x < lowerBound) refill(i, x);
    return s;
  }

  /// Push digit s ∈ [0, n) with the near-uniform frequencies of radix n, 1 ≤ n ≤ M/2.
  void pushUniform(Index i, std::uint32_t s, std::uint32_t n) {
    HYPERGRAD_ASSERT(n >= 1 && n <= precision / 2 && s < n);
    if (n == 1) return;  // a radix-1 digit carries no information
    const std::uint64_t c = cumulative(s, n);
    const std::uint64_t f = cumulative(s + 1, n) - c;
    std::uint64_t& x = m_states[static_cast<std::size_t>(i)];
    if (x >= (f << (64 - MBits))) spill(i, x);
    x = ((x / f) << MBits) + (x % f) + c;
  }

  /// Pop a digit of radix n (the inverse of pushUniform).
  std::uint32_t popUniform(Index i, std::uint32_t n) {
    HYPERGRAD_ASSERT(n >= 1 && n <= precision / 2);
    if (n == 1) return 0;
    std::uint64_t& x = m_states[static_cast<std::size_t>(i)];
    const std::uint64_t slot = x & (precision - 1);
    // Largest s with ceil(s·M/n) ≤ slot is floor(slot·n/M).
    const std::uint32_t s = static_cast<std::uint32_t>((slot * n) >> MBits);
    const std::uint64_t c = cumulative(s, n);
    const std::uint64_t f = cumulative(s + 1, n) - c;
    x = f * (x >> MBits) + slot - c;
    if (x < lowerBound) refill(i, x);
    return s;
  }

  /// Raw access for tests and serialisation.
  const std::vector<std::uint64_t>& states() const noexcept { return m_states; }

 private:
  using Stack = std::vector<std::uint32_t>;

  /// cum(s) = ceil(s·M/n), in integers (s·M < 2^(2·MBits) fits 64 bits).
  static std::uint64_t cumulative(std::uint64_t s, std::uint32_t n) noexcept { return ((s << MBits) + n - 1) / n; }

  // The stack of a block is the top of an infinite stack of zero words: a refill from an empty
  // stack reads a zero, and a zero spilled onto an empty stack is dropped. The pair is still an
  // exact inverse, and it lets a run start with divisions (x d/n) from the empty state, as the
  // paper's arbitrary-precision buffer does, while "empty" keeps one representation.
  void spill(Index i, std::uint64_t& x) {
    Stack& stack = m_stacks[static_cast<std::size_t>(i / m_blockSize)];
    const auto word = static_cast<std::uint32_t>(x);
    if (word != 0 || !stack.empty()) {
      // Grow by 1.25x rather than the vector's doubling: allocated memory stays within 25% of
      // the content, which is what the memory-versus-trajectory figure is about.
      if (stack.size() == stack.capacity()) stack.reserve(stack.capacity() + stack.capacity() / 4 + 64);
      stack.push_back(word);
    }
    x >>= 32;
  }

  void refill(Index i, std::uint64_t& x) {
    Stack& stack = m_stacks[static_cast<std::size_t>(i / m_blockSize)];
    std::uint32_t word = 0;
    if (!stack.empty()) {
      word = stack.back();
      stack.pop_back();
    }
    x = (x << 32) | word;
  }

  std::vector<std::uint64_t> m_states;
  std::vector<Stack> m_stacks;
  Index m_blockSize = defaultBlockSize;
};

}  // namespace hypergrad
