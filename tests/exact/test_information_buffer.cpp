#include <catch2/catch.hpp>

#include <vector>

#include <hypergrad/exact/information_buffer.hpp>
#include <hypergrad/random.hpp>

using Buffer = hypergrad::InformationBuffer<24>;

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
