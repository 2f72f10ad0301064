// SPDX-License-Identifier: MIT
#pragma once

/// \file information_buffer.hpp
/// \brief The information buffer: a bounded-state streaming entropy coder (bits-back rANS) that
/// keeps the bits multiplication by γ < 1 destroys, at O(1) per push or pop.
///
/// Layout: one 64-bit rANS state per element, kept in [L, 2^64) with L = 2^32, and one stack of
/// 32-bit words per block of elements that the states spill into and refill from — or, in the
/// lane layout (`lanes = 8`), eight stacks per block, element i spilling into stack i mod 8 of
/// its block. Blocks are independent, so the element loop can be split across threads by block;
/// within a stack the operations must be undone in exactly the reverse order (the reversible
/// multiply does that).
///
/// Why lanes: with one stack per block, the words of neighbouring elements interleave on the
/// stack in the order the elements are processed, so a kernel that processes eight elements
/// operation by operation (SIMD) would write other words than one that goes element by element.
/// With a stack per lane, each stack sees one element of every group of eight, in the same order
/// under both schedules: the SIMD coder (exact/lanes.hpp) and the scalar one leave the same bits by
/// construction. The two layouts code the same information but not the same words, so a buffer's
/// lane count is part of its content (saved runs record it).
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
///
/// Memory: each block's stack is a detail::ChunkedWordStack, a list of chunks that never move,
/// so a long run allocates close to what it stores (no regrow-and-copy, no freed copies left to
/// fragment the heap); see that class for the chunk sizes and the worst-case overhead.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../errors.hpp"

namespace hypergrad {

namespace detail {

/// A stack of 32-bit words stored in chunks that are allocated on demand and never move: a push
/// never copies what is already stored, so the memory a stack holds stays close to its content
/// on arbitrarily long runs.
///
/// Chunk k holds capacity(k) = min(firstChunkWords · 2^k, maxChunkWords) words: 256 B doubling up
/// to 4 KiB. A pop never frees (it is noexcept, and a pass that pops and pushes again does not
/// call the allocator twice); trim() frees the chunks more than one above the top, keeping one
/// spare so that a push/pop pair at a chunk boundary, the common case in training, does not call
/// the allocator each time. reserve(n) allocates ahead so that the next n pushes cannot fail: the
/// exact kernel reserves a pass's worst case before it changes anything, so that no allocation
/// can fail half-way through a step (failure atomicity without copies).
///
/// Worst-case overhead after trim() of a stack of s words, allocated − stored: the free part of
/// the top chunk plus the spare, at most two chunks, and a directory of 8 bytes per chunk (16 with
/// the vector's slack, 0.4% of a 4 KiB chunk). From s = 960 words on (after the doublings) that
/// is ≤ 2 × 4 KiB per stack: ≤ 1% of a 1 MiB stack (the paper's MLP holds ≈ 0.8 MiB per stack
/// after 10^4 steps). Below, allocated ≤ 4 s + 192 words: at most 1,792 bytes for s ≤ 64 words.
/// Chunk memory is not touched before it is written, so unused capacity (a reservation above all)
/// is address space, not RSS.
///
/// Why 4 KiB: measured on the paper's MLP over steps 1,000–10,000 (benchmarks/bench_memory.cpp),
/// resident memory grew 1.024× the content with 2 or 4 KiB chunks, 1.05× with 8 KiB, 1.065× with
/// 16 KiB and 1.04× with 64 KiB: glibc splits the holes that a step's temporaries leave into a chunk
/// and a remainder too small for the next chunk, and small chunks fill those holes.
///
/// Invariants: m_chunks holds every allocated chunk, bottom to top; the first m_used are in use,
/// the rest are spares for the positions above. The top chunk m_chunks[m_used − 1] is
/// [m_begin, m_end) with m_top in [m_begin, m_end]; every chunk below it is full. With no chunk
/// in use, m_top = m_begin = m_end = nullptr. The top chunk may be empty (m_top == m_begin) after
/// pops: moving down is left to the next pop, so a push right after does not switch chunks.
class ChunkedWordStack {
 public:
  static constexpr std::size_t firstChunkWords = 64;   ///< 256 bytes
  static constexpr std::size_t maxChunkWords = 1024;   ///< 4 KiB
  static constexpr std::size_t growthChunks = 4;       ///< chunks 0..3 double: log2(max / first)
  static_assert((firstChunkWords << growthChunks) == maxChunkWords, "growthChunks = log2(max / first)");

  ChunkedWordStack() = default;
  ~ChunkedWordStack() = default;

  ChunkedWordStack(const ChunkedWordStack& o) { assign(o.words()); }
  ChunkedWordStack(ChunkedWordStack&& o) noexcept
      : m_top(std::exchange(o.m_top, nullptr)),
        m_begin(std::exchange(o.m_begin, nullptr)),
        m_end(std::exchange(o.m_end, nullptr)),
        m_chunks(std::move(o.m_chunks)),
        m_used(std::exchange(o.m_used, 0)) {
    o.m_chunks.clear();
  }
  ChunkedWordStack& operator=(const ChunkedWordStack& o) {
    if (this != &o) *this = ChunkedWordStack(o);
    return *this;
  }
  ChunkedWordStack& operator=(ChunkedWordStack&& o) noexcept {
    if (this != &o) {
      m_top = std::exchange(o.m_top, nullptr);
      m_begin = std::exchange(o.m_begin, nullptr);
      m_end = std::exchange(o.m_end, nullptr);
      m_chunks = std::move(o.m_chunks);
      m_used = std::exchange(o.m_used, 0);
      o.m_chunks.clear();
    }
    return *this;
  }

  /// Words in chunk k (the same for every stack: content equality compares chunk by chunk).
  static constexpr std::size_t capacity(std::size_t k) noexcept {
    return k < growthChunks ? firstChunkWords << k : maxChunkWords;
  }
  /// Words in chunks 0..k−1.
  static constexpr std::size_t capacityBelow(std::size_t k) noexcept {
    return k <= growthChunks ? firstChunkWords * ((std::size_t(1) << k) - 1)
                             : firstChunkWords * ((std::size_t(1) << growthChunks) - 1) + (k - growthChunks) * maxChunkWords;
  }

  bool empty() const noexcept { return m_top == m_begin && m_used <= 1; }
  std::size_t size() const noexcept {
    return m_used == 0 ? 0 : capacityBelow(m_used - 1) + static_cast<std::size_t>(m_top - m_begin);
  }

  /// Pushes w. Strong guarantee: if a new chunk cannot be allocated the stack is unchanged; after
  /// reserve(n), the next n pushes allocate nothing.
  void push(std::uint32_t w) {
    if (m_top == m_end) nextChunk();
    *m_top++ = w;
  }

  /// Pops the top word; 0 from an empty stack (the caller's implicit zeros below the bottom).
  std::uint32_t popOrZero() noexcept {
    if (m_top == m_begin && !previousChunk()) return 0;
    return *--m_top;
  }

  /// Allocates ahead so that the next `n` pushes cannot fail (strong guarantee: on bad_alloc the
  /// content is unchanged; chunks allocated before the failure stay as spares).
  void reserve(std::size_t n) {
    std::size_t room = static_cast<std::size_t>(m_end - m_top);
    for (std::size_t k = m_used; k < m_chunks.size(); ++k) room += capacity(k);
    if (room >= n) return;
    std::size_t k = m_chunks.size(), need = m_chunks.size();
    for (std::size_t r = room; r < n; r += capacity(need)) ++need;
    m_chunks.reserve(need);  // the directory too: push() must not reallocate it
    for (; room < n; ++k) {
      m_chunks.push_back(Chunk(new std::uint32_t[capacity(k)]));  // uninitialised: not resident
      room += capacity(k);
    }
  }

  /// Frees the chunks above the top (what pops and reserve() left) beyond those needed for
  /// `keepWords` more pushes, keeping at least one spare chunk. Never allocates.
  void trim(std::size_t keepWords = 0) noexcept {
    std::size_t keep = m_used + 1, room = static_cast<std::size_t>(m_end - m_top);
    for (std::size_t k = m_used; k < m_chunks.size() && room < keepWords; ++k) {
      room += capacity(k);
      keep = std::max(keep, k + 1);
    }
    if (m_chunks.size() > keep) m_chunks.resize(keep);
  }

  /// The words, bottom to top.
  std::vector<std::uint32_t> words() const {
    std::vector<std::uint32_t> out;
    out.reserve(size());
    for (std::size_t k = 0; k < m_used; ++k) {
      const std::uint32_t* c = m_chunks[k].get();
      out.insert(out.end(), c, k + 1 < m_used ? c + capacity(k) : m_top);
    }
    return out;
  }

  /// Replaces the content with `words` (bottom to top), in the fewest chunks.
  void assign(const std::vector<std::uint32_t>& words) {
    ChunkedWordStack s;
    std::size_t done = 0;
    while (done < words.size()) {
      s.nextChunk();
      const std::size_t n = std::min(words.size() - done, capacity(s.m_used - 1));
      s.m_top = std::copy_n(words.data() + done, n, s.m_top);
      done += n;
    }
    *this = std::move(s);
  }

  /// Frees every chunk.
  void release() noexcept { *this = ChunkedWordStack(); }

  /// \cond INTERNAL
  // The lane coder's cursor (exact/lanes.hpp): it writes at chunkTop() while chunkTop() !=
  // chunkEnd() and reads below it while chunkTop() != chunkBegin(), then stores the new top with
  // setChunkTop(); a push or pop that would switch chunks goes through push() / popOrZero(). The
  // stack is empty exactly when chunkTop() == chunkBegin() and bottomChunk().
  std::uint32_t* chunkTop() const noexcept { return m_top; }
  std::uint32_t* chunkBegin() const noexcept { return m_begin; }
  std::uint32_t* chunkEnd() const noexcept { return m_end; }
  bool bottomChunk() const noexcept { return m_used <= 1; }
  void setChunkTop(std::uint32_t* top) noexcept {
    HYPERGRAD_ASSERT(top >= m_begin && top <= m_end);
    m_top = top;
  }
  /// \endcond

  /// Bytes allocated: chunks in use, the spares and the chunk directory.
  std::size_t memoryBytes() const noexcept {
    return capacityBelow(m_chunks.size()) * sizeof(std::uint32_t) + m_chunks.capacity() * sizeof(Chunk);
  }

  /// Content equality (allocation aside).
  bool operator==(const ChunkedWordStack& o) const noexcept {
    const std::size_t n = size();
    if (n != o.size()) return false;
    for (std::size_t k = 0, done = 0; done < n; done += capacity(k), ++k) {
      const std::size_t len = std::min(capacity(k), n - done);
      if (!std::equal(m_chunks[k].get(), m_chunks[k].get() + len, o.m_chunks[k].get())) return false;
    }
    return true;
  }
  bool operator!=(const ChunkedWordStack& o) const noexcept { return !(*this == o); }

 private:
  using Chunk = std::unique_ptr<std::uint32_t[]>;

  // Off the hot path: called once per chunk's worth of pushes or pops at most.
  void nextChunk() {
    const std::size_t k = m_used;
    if (k == m_chunks.size()) {
      // new[] without () leaves the words uninitialised: pages become resident when written.
      Chunk c(new std::uint32_t[capacity(k)]);
      m_chunks.push_back(std::move(c));  // strong guarantee: on failure c frees the chunk
    }
    m_used = k + 1;
    m_begin = m_top = m_chunks[k].get();
    m_end = m_begin + capacity(k);
  }

  // Moves down to the full chunk below; false when there is none (the stack is empty). The chunk
  // left becomes a spare (trim() frees spares).
  bool previousChunk() noexcept {
    if (m_used <= 1) return false;
    --m_used;
    m_begin = m_chunks[m_used - 1].get();
    m_top = m_end = m_begin + capacity(m_used - 1);
    return true;
  }

  std::uint32_t* m_top = nullptr;
  std::uint32_t* m_begin = nullptr;
  std::uint32_t* m_end = nullptr;
  std::vector<Chunk> m_chunks;
  std::size_t m_used = 0;
};

}  // namespace detail

/// The information buffer: one rANS state per element and one stack of spilled words per block
/// (see the file description for the coding scheme and its invariants).
/// \tparam MBits coder precision, log2 M; 9 ≤ MBits ≤ 31 (default 24). Must exceed the ratio
/// denominator's bits by at least 8 for the 1.00x-of-bound figure.
template <int MBits = 24>
class InformationBuffer {
  static_assert(MBits >= 9 && MBits <= 31, "hypergrad::InformationBuffer<MBits>: MBits must be in [9, 31]");

 public:
  static constexpr int precisionBits = MBits;  ///< log2 M
  static constexpr std::uint64_t lowerBound = std::uint64_t(1) << 32;  ///< L, the empty state
  static constexpr std::uint32_t precision = std::uint32_t(1) << MBits;  ///< M
  static constexpr Index defaultBlockSize = 4096;  ///< Elements per block unless told otherwise
  static constexpr int laneCount = 8;  ///< Stacks per block in the lane layout (one SIMD register of int64)

  InformationBuffer() = default;  ///< A buffer for zero elements.

  /// An empty buffer for `numElements` elements, grouped in blocks of `blockSize`, with `lanes`
  /// word stacks per block: 1 (one shared stack) or laneCount (element i spills into stack
  /// i mod 8 of its block; blockSize must then be a multiple of 8).
  explicit InformationBuffer(Index numElements, Index blockSize = defaultBlockSize, int lanes = 1)
      : m_blockSize(blockSize), m_blockShift(shiftOf(blockSize)), m_lanes(lanes), m_laneShift(lanes == laneCount ? 3 : 0) {
    checkShape(numElements, blockSize, lanes, [](const std::string& m) { return InvalidArgument("InformationBuffer: " + m); });
    m_states.assign(static_cast<std::size_t>(numElements), lowerBound);
    m_stacks.resize(static_cast<std::size_t>((numElements + blockSize - 1) / blockSize) * static_cast<std::size_t>(lanes));
  }

  Index size() const noexcept { return static_cast<Index>(m_states.size()); }  ///< Number of elements.
  Index blockSize() const noexcept { return m_blockSize; }  ///< Elements per block (the last may hold fewer).
  /// ⌈size / blockSize⌉.
  Index numBlocks() const noexcept { return static_cast<Index>(m_stacks.size()) >> m_laneShift; }
  /// Word stacks per block: 1, or laneCount in the lane layout.
  int lanes() const noexcept { return m_lanes; }
  /// numBlocks() · lanes().
  Index numStacks() const noexcept { return static_cast<Index>(m_stacks.size()); }
  /// The stack element i spills into: blockOf(i) · lanes() + i mod lanes().
  Index stackOf(Index i) const noexcept { return (blockOf(i) << m_laneShift) + (i & (m_lanes - 1)); }
  /// Block b covers elements [blockBegin(b), blockEnd(b)).
  Index blockBegin(Index b) const noexcept { return b * m_blockSize; }
  /// One past the last element of block b.
  Index blockEnd(Index b) const noexcept { return std::min(size(), (b + 1) * m_blockSize); }
  /// The block that holds element i (whose stack its state spills into).
  Index blockOf(Index i) const noexcept { return m_blockShift >= 0 ? i >> m_blockShift : i / m_blockSize; }

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

  /// Bytes actually allocated: the states, the stacks' chunks (spares included) and their
  /// directories. At most two 4 KiB chunks per block (and the directories) above storageBits() / 8
  /// once a block holds 960 words; see detail::ChunkedWordStack.
  std::size_t memoryBytes() const noexcept {
    std::size_t bytes = m_states.capacity() * sizeof(std::uint64_t) + m_stacks.capacity() * sizeof(Stack);
    for (const auto& s : m_stacks) bytes += s.memoryBytes();
    return bytes;
  }

  /// Makes sure that `wordsPerElement` more words per element can be spilled onto every block's
  /// stack without allocating (the worst case of a pass that multiplies or divides each element
  /// that many times). Strong guarantee: on bad_alloc the content is unchanged.
  void reserve(Index wordsPerElement) {
    if (wordsPerElement <= 0) return;
    for (Index k = 0; k < numStacks(); ++k)
      m_stacks[static_cast<std::size_t>(k)].reserve(static_cast<std::size_t>(wordsPerElement) * stackElements(k));
  }

  /// Frees what pops and reserve() left above each stack's top, keeping one spare chunk per
  /// stack, or room for `wordsPerElement` more words per element (a reservation a pass will ask
  /// for again: keeping it saves allocating and freeing those chunks at every step; it is address
  /// space, not resident memory). Never allocates.
  void trim(Index wordsPerElement = 0) noexcept {
    for (Index k = 0; k < numStacks(); ++k)
      m_stacks[static_cast<std::size_t>(k)].trim(static_cast<std::size_t>(std::max<Index>(wordsPerElement, 0)) *
                                                 stackElements(k));
  }

  /// Number of spilled 32-bit words in all blocks.
  std::size_t spilledWords() const noexcept {
    std::size_t n = 0;
    for (const auto& s : m_stacks) n += s.size();
    return n;
  }

  /// Returns the buffer to its empty state, discarding its content and freeing the stacks' chunks.
  void clear() noexcept {
    for (auto& x : m_states) x = lowerBound;
    for (auto& s : m_stacks) s.release();
  }

  /// Content equality: block size, lanes, states and spilled words (not the memory they occupy).
  bool operator==(const InformationBuffer& o) const {
    return m_blockSize == o.m_blockSize && m_lanes == o.m_lanes && m_states == o.m_states && m_stacks == o.m_stacks;
  }
  /// Content inequality.
  bool operator!=(const InformationBuffer& o) const { return !(*this == o); }

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

  /// The spilled words of stack k, bottom to top (with states(), the whole content). Stack k is
  /// lane k mod lanes() of block k / lanes(); with one lane, the block's stack.
  std::vector<std::uint32_t> stackWords(Index k) const {
    if (k < 0 || k >= numStacks()) {
      throw InvalidArgument(detail::message("InformationBuffer::stackWords: stack ", k, " is not in [0, ", numStacks(), ")"));
    }
    return m_stacks[static_cast<std::size_t>(k)].words();
  }

  /// The spilled words of block b, bottom to top: stackWords(b) for a one-lane buffer.
  /// \throws InvalidArgument in the lane layout, whose blocks hold several stacks (use stackWords).
  std::vector<std::uint32_t> blockWords(Index b) const {
    if (m_lanes != 1) {
      throw InvalidArgument(detail::message("InformationBuffer::blockWords: this buffer has ", m_lanes,
                                            " stacks per block; read them with stackWords(b * lanes() + lane)"));
    }
    if (b < 0 || b >= numBlocks()) {
      throw InvalidArgument(detail::message("InformationBuffer::blockWords: block ", b, " is not in [0, ", numBlocks(), ")"));
    }
    return m_stacks[static_cast<std::size_t>(b)].words();
  }

  /// A buffer with the given content, as states() and stackWords() of a buffer of `numElements`
  /// elements in blocks of `blockSize` with `lanes` stacks per block return it:
  /// fromContents(n, B, b.states(), {b.stackWords(0), ...}, b.lanes()) == b, and it pops the same
  /// digits. Everything is checked before anything is built: the shape, sizes, every state in
  /// [L, 2^64), and a non-zero bottom word in each non-empty stack (a zero is never spilled onto an
  /// empty stack, so no buffer has one there).
  /// \throws DataError naming the first thing that is wrong.
  static InformationBuffer fromContents(Index numElements, Index blockSize, std::vector<std::uint64_t> states,
                                        std::vector<std::vector<std::uint32_t>> stackWords, int lanes = 1) {
    const char* fn = "InformationBuffer::fromContents: ";
    checkShape(numElements, blockSize, lanes, [fn](const std::string& m) { return DataError(fn + m); });
    if (states.size() != static_cast<std::size_t>(numElements)) {
      throw DataError(detail::message(fn, states.size(), " states for ", numElements, " elements"));
    }
    const auto blocks = static_cast<std::size_t>((numElements + blockSize - 1) / blockSize);
    const std::size_t stacks = blocks * static_cast<std::size_t>(lanes);
    if (stackWords.size() != stacks) {
      throw DataError(detail::message(fn, stackWords.size(), " word stacks for ", blocks, " blocks of ", lanes,
                                      " stack(s) (", numElements, " elements in blocks of ", blockSize, ")"));
    }
    for (std::size_t i = 0; i < states.size(); ++i) {
      if (states[i] < lowerBound) {
        throw DataError(detail::message(fn, "state ", states[i], " of element ", i, " is below L = 2^32"));
      }
    }
    for (std::size_t k = 0; k < stacks; ++k) {
      if (!stackWords[k].empty() && stackWords[k].front() == 0) {
        const std::string which = lanes == 1 ? detail::message("block ", k)
                                              : detail::message("stack ", k, " (block ", k / lanes, ", lane ", k % lanes, ")");
        throw DataError(detail::message(fn, "the bottom word of ", which,
                                        " is zero (a zero is never spilled onto an empty stack)"));
      }
    }
    InformationBuffer buf;
    buf.m_blockSize = blockSize;
    buf.m_blockShift = shiftOf(blockSize);
    buf.m_lanes = lanes;
    buf.m_laneShift = lanes == laneCount ? 3 : 0;
    buf.m_states = std::move(states);
    buf.m_stacks.resize(stacks);
    for (std::size_t k = 0; k < stacks; ++k) buf.m_stacks[k].assign(stackWords[k]);
    return buf;
  }

  /// \cond INTERNAL
  // For the lane coder (exact/lanes.hpp): the raw states and the stacks, which it reads and
  // writes through ChunkedWordStack's cursor interface.
  std::uint64_t* stateData() noexcept { return m_states.data(); }
  detail::ChunkedWordStack& stack(Index k) noexcept { return m_stacks[static_cast<std::size_t>(k)]; }
  /// \endcond

 private:
  using Stack = detail::ChunkedWordStack;

  /// cum(s) = ceil(s·M/n), in integers (s·M < 2^(2·MBits) fits 64 bits).
  static std::uint64_t cumulative(std::uint64_t s, std::uint32_t n) noexcept { return ((s << MBits) + n - 1) / n; }

  // The shape rules shared by the constructor and fromContents (each throws its own type).
  template <class MakeError>
  static void checkShape(Index numElements, Index blockSize, int lanes, MakeError&& error) {
    if (numElements < 0 || blockSize <= 0) {
      throw error(detail::message("need numElements >= 0 and blockSize > 0, got ", numElements, " and ", blockSize));
    }
    if (lanes != 1 && lanes != laneCount) {
      throw error(detail::message("lanes must be 1 or ", laneCount, ", got ", lanes));
    }
    if (blockSize % lanes != 0) {
      throw error(detail::message("the block size ", blockSize, " must be a multiple of the ", lanes, " lanes"));
    }
  }

  // Elements that spill into stack k: those of its block in its lane.
  std::size_t stackElements(Index k) const noexcept {
    const Index b = k >> m_laneShift, lane = k & (m_lanes - 1), n = blockEnd(b) - blockBegin(b);
    return static_cast<std::size_t>(n > lane ? (n - lane + m_lanes - 1) / m_lanes : 0);
  }

  /// log2(blockSize) for a power of two, else −1. In training about half the element-steps spill
  /// and refill a word; a 64-bit division for the block index there made ×n/d ≈1.6× slower.
  static int shiftOf(Index blockSize) noexcept {
    if (blockSize <= 0 || (blockSize & (blockSize - 1)) != 0) return -1;
    int k = 0;
    while ((Index(1) << k) < blockSize) ++k;
    return k;
  }

  // The stack of a block is the top of an infinite stack of zero words: a refill from an empty
  // stack reads a zero, and a zero spilled onto an empty stack is dropped. The pair is still an
  // exact inverse, and it lets a run start with divisions (x d/n) from the empty state, as the
  // paper's arbitrary-precision buffer does, while "empty" keeps one representation.
  void spill(Index i, std::uint64_t& x) {
    Stack& stack = m_stacks[static_cast<std::size_t>(stackOf(i))];
    const auto word = static_cast<std::uint32_t>(x);
    if (word != 0 || !stack.empty()) stack.push(word);  // may throw bad_alloc: x is still intact
    x >>= 32;
  }

  void refill(Index i, std::uint64_t& x) {
    Stack& stack = m_stacks[static_cast<std::size_t>(stackOf(i))];
    x = (x << 32) | stack.popOrZero();
  }

  std::vector<std::uint64_t> m_states;
  std::vector<Stack> m_stacks;
  Index m_blockSize = defaultBlockSize;
  int m_blockShift = shiftOf(defaultBlockSize);  // blockOf(i) = i >> m_blockShift when >= 0
  int m_lanes = 1;                               // stacks per block: 1 or laneCount
  int m_laneShift = 0;                           // log2(m_lanes)
};

}  // namespace hypergrad
