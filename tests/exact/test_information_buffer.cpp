#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include <hypergrad/errors.hpp>
#include <hypergrad/exact/information_buffer.hpp>
#include <hypergrad/random.hpp>

using Buffer = hypergrad::InformationBuffer<24>;
using Stack = hypergrad::detail::ChunkedWordStack;
using hypergrad::Index;

TEST_CASE("a new information buffer is empty and holds no information", "[exact][buffer]") {
  Buffer buf(1000, 64);
  CHECK(buf.empty());
  CHECK(buf.informationBits() == 0.0);
  CHECK(buf.numBlocks() == 16);
  CHECK(buf.blockEnd(15) == 1000);
  CHECK(buf.storageBits() == 64.0 * 1000);
}

TEST_CASE("pops return pushed digits in reverse order, spills included, and the buffer ends empty", "[exact][buffer]") {
  const hypergrad::Index n = 37;
  Buffer buf(n, 8);
  hypergrad::CounterRng rng(11);
  struct Op { hypergrad::Index i; std::uint32_t digit, radix; bool pow2; };
  std::vector<Op> ops;
  for (int k = 0; k < 200000; ++k) {
    Op op;
    op.i = static_cast<hypergrad::Index>(rng.below(n));
    op.pow2 = (rng.next() & 1) != 0;
    if (op.pow2) {
      const int bits = static_cast<int>(rng.below(25));  // 0..24
      op.radix = static_cast<std::uint32_t>(bits);
      op.digit = bits == 0 ? 0u : static_cast<std::uint32_t>(rng.below(std::uint64_t(1) << bits));
      buf.pushPow2(op.i, op.digit, bits);
    } else {
      op.radix = 1 + static_cast<std::uint32_t>(rng.below(Buffer::precision / 2));
      op.digit = static_cast<std::uint32_t>(rng.below(op.radix));
      buf.pushUniform(op.i, op.digit, op.radix);
    }
    ops.push_back(op);
  }
  CHECK(buf.spilledWords() > 0);
  CHECK(!buf.empty());
  for (auto it = ops.rbegin(); it != ops.rend(); ++it) {
    const std::uint32_t got = it->pow2 ? buf.popPow2(it->i, static_cast<int>(it->radix)) : buf.popUniform(it->i, it->radix);
    REQUIRE(got == it->digit);
  }
  CHECK(buf.empty());
}

TEST_CASE("popping from the empty buffer draws zero bits and the matching push restores empty", "[exact][buffer]") {
  Buffer buf(3, 2);
  std::vector<std::uint32_t> digits;
  for (int k = 0; k < 100; ++k) digits.push_back(buf.popUniform(1, 1000));  // draws from nothing
  for (int k = 0; k < 50; ++k) digits.push_back(buf.popPow2(2, 16));
  for (int k = 50; k-- > 0;) buf.pushPow2(2, digits[static_cast<std::size_t>(100 + k)], 16);
  for (int k = 100; k-- > 0;) buf.pushUniform(1, digits[static_cast<std::size_t>(k)], 1000);
  CHECK(buf.empty());
}

TEST_CASE("information content matches the entropy of uniform digits", "[exact][buffer]") {
  Buffer buf(100, 16);
  hypergrad::CounterRng rng(5);
  const std::uint32_t radix = 1000;
  const int perElement = 400;
  for (int k = 0; k < perElement; ++k)
    for (hypergrad::Index i = 0; i < 100; ++i) buf.pushUniform(i, static_cast<std::uint32_t>(rng.below(radix)), radix);
  const double expected = 100.0 * perElement * std::log2(static_cast<double>(radix));
  CHECK(buf.informationBits() == Approx(expected).epsilon(1e-3));
}

namespace {

/// Radix-2^16 digits pushed on one element, popped back in reverse order: the element's state
/// spills a word about every second push, so the stack's size can be steered word by word.
class DigitHistory {
 public:
  DigitHistory(Buffer& buf, Index element, std::uint64_t seed) : m_buf(buf), m_element(element), m_rng(seed) {}

  void push() {
    const auto d = static_cast<std::uint32_t>(m_rng.below(std::uint64_t(1) << 16));
    m_buf.pushPow2(m_element, d, 16);
    m_digits.push_back(d);
  }
  /// False on the first digit that does not come back.
  bool pop() {
    const std::uint32_t d = m_buf.popPow2(m_element, 16);
    const bool ok = d == m_digits.back();
    m_digits.pop_back();
    return ok;
  }
  bool popAll() {
    bool ok = true;
    while (!m_digits.empty()) ok = pop() && ok;
    return ok;
  }
  /// Pushes until the buffer holds at least `words` spilled words.
  void pushTo(std::size_t words) {
    while (m_buf.spilledWords() < words) push();
  }
  /// Pops until the buffer holds fewer than `words` spilled words.
  bool popBelow(std::size_t words) {
    bool ok = true;
    while (m_buf.spilledWords() >= words && !m_digits.empty()) ok = pop() && ok;
    return ok;
  }

 private:
  Buffer& m_buf;
  Index m_element;
  hypergrad::CounterRng m_rng;
  std::vector<std::uint32_t> m_digits;
};

/// Bytes of a buffer's allocation beyond its content, the stacks' chunks and directories only.
double slackBytes(const Buffer& buf) {
  const Buffer fresh(buf.size(), buf.blockSize());
  return static_cast<double>(buf.memoryBytes()) - static_cast<double>(fresh.memoryBytes()) -
         4.0 * static_cast<double>(buf.spilledWords());
}

}  // namespace

TEST_CASE("elements map to blocks of any size, powers of two or not", "[exact][buffer]") {
  for (const Index blockSize : {1, 2, 3, 4, 5, 7, 8, 100, 4096, 6000}) {
    const Buffer buf(10000, blockSize);
    bool same = true;
    for (Index i = 0; i < 10000; ++i) same = same && buf.blockOf(i) == i / blockSize;
    CHECK(same);
  }
  // Spills land in the element's block for a block size that is not a power of two.
  Buffer buf(10, 3);
  DigitHistory h(buf, 7, 9);
  h.pushTo(100);
  CHECK(buf.blockWords(2).size() == 100);
  CHECK(buf.blockWords(1).empty());
  CHECK(h.popAll());
  CHECK(buf.empty());
}

TEST_CASE("the chunk schedule doubles from 256 bytes to 4 KiB and prefix sums match", "[exact][buffer]") {
  CHECK(Stack::capacity(0) == 64);
  CHECK(Stack::capacity(3) == 512);
  CHECK(Stack::capacity(4) == 1024);
  CHECK(Stack::capacity(100) == 1024);
  std::size_t below = 0;
  for (std::size_t k = 0; k < 20; ++k) {
    REQUIRE(Stack::capacityBelow(k) == below);
    below += Stack::capacity(k);
  }
}

TEST_CASE("digits round-trip across many chunk boundaries and the buffer ends equal to a new one",
          "[exact][buffer]") {
  Buffer buf(5, 2);  // blocks {0, 1}, {2, 3}, {4}
  DigitHistory a(buf, 0, 1), b(buf, 3, 2), c(buf, 4, 3);
  // Interleave three stacks so each crosses many chunk boundaries (≈ 20 chunks each).
  const std::size_t target = Stack::capacityBelow(20) + 17;
  for (std::size_t k = 0; buf.spilledWords() < 3 * target; ++k) {
    a.push();
    b.push();
    if (k % 2 == 0) c.push();
  }
  CHECK(buf.blockWords(0).size() > Stack::capacityBelow(20));
  CHECK(buf.blockWords(2).size() > Stack::capacityBelow(10));
  const Buffer copy = buf;
  CHECK(copy == buf);
  CHECK(c.popAll());
  CHECK(a.popAll());
  CHECK(b.popAll());
  CHECK(buf.empty());
  CHECK(buf == Buffer(5, 2));
  CHECK(buf.spilledWords() == 0);
  CHECK(copy != buf);
}

TEST_CASE("push/pop at a chunk boundary reuses the spare chunk; trim() frees what lies above it",
          "[exact][buffer]") {
  Buffer buf(1, 1);
  DigitHistory h(buf, 0, 7);
  const std::size_t boundary = Stack::capacityBelow(7);  // chunks 0..6 full
  h.pushTo(boundary + 1);                                 // one word in chunk 7
  const std::size_t withChunk7 = buf.memoryBytes();
  for (int round = 0; round < 50; ++round) {  // hover across the boundary
    REQUIRE(h.popBelow(boundary));
    h.pushTo(boundary + 1);
    REQUIRE(buf.memoryBytes() == withChunk7);  // no allocation: the spare comes back
  }
  REQUIRE(h.popBelow(boundary));
  CHECK(buf.memoryBytes() == withChunk7);  // chunk 7 is the spare
  REQUIRE(h.popBelow(Stack::capacityBelow(6)));
  CHECK(buf.memoryBytes() == withChunk7);  // pops never free (they cannot fail, nor thrash)
  buf.trim();
  // Now in chunk 5: chunk 6 is the spare, chunk 7 freed.
  CHECK(static_cast<double>(buf.memoryBytes()) ==
        static_cast<double>(withChunk7) - 4.0 * static_cast<double>(Stack::capacity(7)));
  CHECK(h.popAll());
  CHECK(buf.empty());
  CHECK(buf == Buffer(1, 1));
}

TEST_CASE("reserve() makes the next pushes allocation-free and trim() gives the reservation back", "[exact][buffer]") {
  Buffer buf(300, 100);
  DigitHistory h(buf, 150, 11);
  h.pushTo(70);
  const std::size_t before = buf.memoryBytes();
  buf.reserve(3);  // 3 words per element: 300 words for each block
  const std::size_t reserved = buf.memoryBytes();
  CHECK(reserved > before);
  h.pushTo(70 + 300);  // block 1 takes its whole reservation
  CHECK(buf.memoryBytes() == reserved);
  buf.reserve(3);  // block 1 needs more now; the others already have it
  CHECK(buf.memoryBytes() > reserved);
  CHECK(h.popAll());
  buf.trim();
  CHECK(buf.memoryBytes() <= before + 4 * Stack::capacity(0) * sizeof(std::uint32_t) * 3);
  CHECK(buf == Buffer(300, 100));
}

TEST_CASE("allocated memory stays within 1.05x of a large content and bounded for a small one", "[exact][buffer]") {
  SECTION("large: 2 blocks of 4096 elements, 2.4 MB of words") {
    const Index n = 8192;
    Buffer buf(n);
    hypergrad::CounterRng rng(3);
    for (int k = 0; k < 100; ++k)
      for (Index i = 0; i < n; ++i) buf.pushPow2(i, static_cast<std::uint32_t>(rng.below(std::uint64_t(1) << 24)), 24);
    const double content = buf.storageBits() / 8.0;
    CHECK(content > 2.0e6);
    CHECK(static_cast<double>(buf.memoryBytes()) <= 1.05 * content);
    // The stated worst case: fewer than two 4 KiB chunks per block, and the chunk directory.
    CHECK(slackBytes(buf) < 2.0 * (2.0 * 4096.0) + 16.0 * static_cast<double>(buf.spilledWords()) / 1024.0);
  }
  SECTION("small: 16 blocks holding a few words each") {
    Buffer buf(100, 16);
    hypergrad::CounterRng rng(4);
    for (int k = 0; k < 6; ++k)
      for (Index i = 0; i < 100; ++i) buf.pushPow2(i, static_cast<std::uint32_t>(rng.below(std::uint64_t(1) << 24)), 24);
    CHECK(buf.spilledWords() > 0);
    for (Index b = 0; b < buf.numBlocks(); ++b) CHECK(buf.blockWords(b).size() <= 64);
    // ≤ 64 words per stack: at most chunks 0-2 (448 words) and a directory of a few pointers.
    CHECK(slackBytes(buf) <= static_cast<double>(buf.numBlocks()) * (1792.0 + 64.0));
  }
}

TEST_CASE("clear() empties the buffer and frees its chunks; it keeps working", "[exact][buffer]") {
  Buffer buf(40, 8);
  hypergrad::CounterRng rng(6);
  for (int k = 0; k < 500; ++k)
    for (Index i = 0; i < 40; ++i) buf.pushUniform(i, static_cast<std::uint32_t>(rng.below(1000)), 1000);
  REQUIRE(buf.spilledWords() > 0);
  buf.clear();
  CHECK(buf.empty());
  CHECK(buf == Buffer(40, 8));
  CHECK(buf.memoryBytes() == Buffer(40, 8).memoryBytes());
  CHECK(buf.informationBits() == 0.0);
  DigitHistory h(buf, 13, 8);
  h.pushTo(Stack::capacityBelow(2) + 3);
  CHECK(h.popAll());
  CHECK(buf.empty());
}

TEST_CASE("a buffer rebuilt with fromContents from its states and block words is equal and pops the same digits",
          "[exact][buffer]") {
  const Index n = 37, blockSize = 8;
  Buffer buf(n, blockSize);
  hypergrad::CounterRng rng(12);
  for (int k = 0; k < 60000; ++k) {
    const auto i = static_cast<Index>(rng.below(n));
    if (rng.next() & 1) buf.pushPow2(i, static_cast<std::uint32_t>(rng.below(std::uint64_t(1) << 20)), 20);
    else buf.pushUniform(i, static_cast<std::uint32_t>(rng.below(70000)), 70000);
  }
  // Some pops, so that stacks have spares and empty top chunks: content, not layout, must matter.
  for (int k = 0; k < 20000; ++k) (void)buf.popPow2(static_cast<Index>(rng.below(n)), 16);
  std::vector<std::vector<std::uint32_t>> words;
  for (Index b = 0; b < buf.numBlocks(); ++b) words.push_back(buf.blockWords(b));
  CHECK(words[0].size() > Stack::capacityBelow(3));
  Buffer rebuilt = Buffer::fromContents(n, blockSize, buf.states(), words);
  CHECK(rebuilt == buf);
  CHECK(rebuilt.spilledWords() == buf.spilledWords());
  CHECK(rebuilt.informationBits() == buf.informationBits());
  for (Index b = 0; b < buf.numBlocks(); ++b) CHECK(rebuilt.blockWords(b) == words[static_cast<std::size_t>(b)]);
  // Both pop the same digits, far past their content (into the implicit zeros).
  bool same = true;
  for (int k = 0; k < 100000; ++k) {
    const auto i = static_cast<Index>(rng.below(n));
    same = same && buf.popUniform(i, 50000) == rebuilt.popUniform(i, 50000);
  }
  CHECK(same);
  CHECK(rebuilt == buf);
  // The empty buffer round-trips too.
  const Buffer empty(10, 4);
  CHECK(Buffer::fromContents(10, 4, empty.states(), {{}, {}, {}}) == empty);
  CHECK(Buffer::fromContents(0, 4, {}, {}) == Buffer(0, 4));
}

TEST_CASE("fromContents rejects malformed contents with a DataError naming the problem", "[exact][buffer]") {
  using Catch::Matchers::Contains;
  const std::uint64_t L = Buffer::lowerBound;
  const std::vector<std::uint64_t> states(10, L);
  const std::vector<std::vector<std::uint32_t>> words{{5, 0, 7}, {}, {1}};
  REQUIRE_NOTHROW(Buffer::fromContents(10, 4, states, words));

  CHECK_THROWS_AS(Buffer::fromContents(10, 0, states, words), hypergrad::DataError);
  CHECK_THROWS_WITH(Buffer::fromContents(10, 0, states, words), Contains("blockSize > 0"));
  CHECK_THROWS_WITH(Buffer::fromContents(-1, 4, states, words), Contains("numElements >= 0"));

  CHECK_THROWS_AS(Buffer::fromContents(11, 4, states, words), hypergrad::DataError);
  CHECK_THROWS_WITH(Buffer::fromContents(11, 4, states, words), Contains("10 states for 11 elements"));

  CHECK_THROWS_AS(Buffer::fromContents(10, 5, states, words), hypergrad::DataError);
  CHECK_THROWS_WITH(Buffer::fromContents(10, 5, states, words), Contains("3 word stacks for 2 blocks"));
  CHECK_THROWS_WITH(Buffer::fromContents(10, 4, states, {{1}, {}}), Contains("2 word stacks for 3 blocks"));

  std::vector<std::uint64_t> low = states;
  low[7] = L - 1;
  CHECK_THROWS_AS(Buffer::fromContents(10, 4, low, words), hypergrad::DataError);
  CHECK_THROWS_WITH(Buffer::fromContents(10, 4, low, words), Contains("state 4294967295 of element 7 is below L = 2^32"));
  low[7] = 0;
  CHECK_THROWS_WITH(Buffer::fromContents(10, 4, low, words), Contains("of element 7 is below"));

  std::vector<std::vector<std::uint32_t>> zeroBottom = words;
  zeroBottom[2] = {0, 9};
  CHECK_THROWS_AS(Buffer::fromContents(10, 4, states, zeroBottom), hypergrad::DataError);
  CHECK_THROWS_WITH(Buffer::fromContents(10, 4, states, zeroBottom), Contains("bottom word of block 2 is zero"));

  CHECK_THROWS_AS(Buffer(10, 4).blockWords(3), hypergrad::InvalidArgument);
}
