#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <vector>

#include <hypergrad/exact.hpp>
#include <hypergrad/random.hpp>

using namespace hypergrad;

namespace {

using Buffer = InformationBuffer<24>;
constexpr std::uint32_t kD = Ratio<16>::maxDenominator;
constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();

// The definition the lane coder must match: element by element with the scalar primitives, in
// the order multiplyByRatio documents (increasing within each block; decreasing to divide).
void referenceMultiply(std::vector<std::int64_t>& c, const std::vector<RatioRun>& runs, Buffer& buf) {
  buf.reserve(1);
  for (const RatioRun& run : runs)
    if (run.numerator != kD)
      for (Index i = run.begin; i < run.end; ++i) BitsBackRounding::multiplyOne<16>(c[static_cast<std::size_t>(i)], run.numerator, i, buf);
}
void referenceDivide(std::vector<std::int64_t>& c, const std::vector<RatioRun>& runs, Buffer& buf) {
  for (auto r = runs.rbegin(); r != runs.rend(); ++r)
    if (r->numerator != kD)
      for (Index i = r->end; i-- > r->begin;) BitsBackRounding::divideOne<16>(c[static_cast<std::size_t>(i)], r->numerator, i, buf);
}

// Runs with edges off the groups of eight, γ = 1 and the smallest numerators among them.
std::vector<RatioRun> mixedRuns(Index n, CounterRng& rng) {
  std::vector<RatioRun> runs;
  for (Index at = 0; at < n;) {
    const Index len = std::min<Index>(n - at, 1 + static_cast<Index>(rng.below(53)));
    std::uint32_t num;
    switch (rng.below(6)) {
      case 0: num = kD; break;
      case 1: num = 1 + static_cast<std::uint32_t>(rng.below(2)); break;  // 1 and 2: the smallest
      case 2: num = Ratio<16>::nearestDyadic(0.9).numerator; break;
      case 3: num = Ratio<16>::nearestDyadic(0.999).numerator; break;
      default: num = 1 + static_cast<std::uint32_t>(rng.below(kD - 1));
    }
    runs.push_back(RatioRun{at, at + len, num});
    at += len;
  }
  return runs;
}

std::vector<std::int64_t> mixedIntegers(Index n, CounterRng& rng) {
  std::vector<std::int64_t> c(static_cast<std::size_t>(n));
  for (auto& v : c) {
    switch (rng.below(5)) {
      case 0: v = 0; break;
      case 1: v = kMax - static_cast<std::int64_t>(rng.below(1000)); break;        // the top of the range
      case 2: v = -kMax + static_cast<std::int64_t>(rng.below(1000)); break;       // the bottom
      case 3: v = static_cast<std::int64_t>(rng.below(1 << 20)) - (1 << 19); break;  // small
      default: v = static_cast<std::int64_t>(rng.next() >> 1) * (rng.below(2) ? 1 : -1);
    }
  }
  return c;
}

}  // namespace

TEST_CASE("the lane layout puts element i on stack i mod 8 of its block", "[exact][lanes]") {
  const Buffer buf(100, 32, 8);
  CHECK(buf.lanes() == 8);
  CHECK(buf.numBlocks() == 4);
  CHECK(buf.numStacks() == 32);
  CHECK(buf.stackOf(0) == 0);
  CHECK(buf.stackOf(13) == 5);
  CHECK(buf.stackOf(32 + 9) == 8 + 1);
  CHECK(buf.stackOf(99) == 3 * 8 + 3);
  CHECK(Buffer(100, 32).stackOf(41) == 1);  // one lane: the block's stack
  CHECK_THROWS_AS(Buffer(100, 32, 4), InvalidArgument);
  CHECK_THROWS_AS(Buffer(100, 36, 8), InvalidArgument);  // a block must hold whole groups of eight
  CHECK_THROWS_AS(buf.blockWords(0), InvalidArgument);
  CHECK_THROWS_AS(buf.stackWords(32), InvalidArgument);
}

TEST_CASE("a lane-layout buffer round-trips through its contents", "[exact][lanes]") {
  Buffer buf(77, 16, 8);
  std::vector<std::int64_t> c(77);
  CounterRng rng(5);
  for (auto& v : c) v = static_cast<std::int64_t>(rng.next() >> 4);
  for (int t = 0; t < 40; ++t) multiplyByRatio(c.data(), 77, ratioRuns(77, 4000), buf);  // γ ≈ 0.06: 4 bits each
  std::vector<std::vector<std::uint32_t>> words;
  for (Index k = 0; k < buf.numStacks(); ++k) words.push_back(buf.stackWords(k));
  CHECK(buf.spilledWords() > 0);
  const Buffer copy = Buffer::fromContents(77, 16, buf.states(), words, 8);
  CHECK(copy == buf);
  CHECK_THROWS_AS(Buffer::fromContents(77, 16, buf.states(), words, 1), DataError);  // 40 stacks are not 5
  CHECK_THROWS_AS(Buffer::fromContents(77, 12, buf.states(), words, 8), DataError);
}

TEST_CASE("the lane coder leaves the bits of the element-by-element coder, forward and back", "[exact][lanes]") {
  // 5 blocks of 64 elements and a partial one: chunk switches on every stack within the run, runs
  // that start and end inside groups of eight, numerators 1 and 2, extreme integers.
  WARN("lane coder active: " << laneCoderActive());
  const Index n = 5 * 64 + 21;
  CounterRng rng(2026);
  const std::vector<std::int64_t> start = mixedIntegers(n, rng);
  std::vector<std::int64_t> lanes = start, reference = start;
  Buffer laneBuf(n, 64, 8), referenceBuf(n, 64, 8);
  std::vector<std::vector<RatioRun>> steps;
  for (int t = 0; t < 500; ++t) {
    steps.push_back(mixedRuns(n, rng));
    multiplyByRatio(lanes.data(), n, steps.back(), laneBuf);
    referenceMultiply(reference, steps.back(), referenceBuf);
    if (lanes != reference || laneBuf != referenceBuf) FAIL("multiply step " << t << " differs from the scalar coder");
  }
  // The first chunk of a stack holds 64 words: every stack switched chunks during the run.
  Index fewest = n;
  for (Index k = 0; k < laneBuf.numStacks(); ++k) fewest = std::min<Index>(fewest, static_cast<Index>(laneBuf.stackWords(k).size()));
  CHECK(fewest > 64);
  for (int t = 499; t >= 0; --t) {
    divideByRatio(lanes.data(), n, steps[static_cast<std::size_t>(t)], laneBuf);
    referenceDivide(reference, steps[static_cast<std::size_t>(t)], referenceBuf);
    if (lanes != reference || laneBuf != referenceBuf) FAIL("divide step " << t << " differs from the scalar coder");
  }
  CHECK(lanes == start);
  CHECK(laneBuf.empty());
}

TEST_CASE("the lane coder and the scalar coder are interchangeable mid-run", "[exact][lanes]") {
  const Index n = 4096 + 8 * 3;  // two blocks
  CounterRng rng(7);
  const std::vector<std::int64_t> start = mixedIntegers(n, rng);
  std::vector<std::int64_t> c = start;
  Buffer buf(n, 4096, 8);
  const auto runs = ratioRuns(n, Ratio<16>::nearestDyadic(0.9).numerator);
  for (int t = 0; t < 20; ++t) {
    setLaneCoderEnabled(t % 2 == 0);
    multiplyByRatio(c.data(), n, runs, buf);
  }
  for (int t = 0; t < 20; ++t) {
    setLaneCoderEnabled(t % 3 != 0);
    divideByRatio(c.data(), n, runs, buf);
  }
  setLaneCoderEnabled(true);
  CHECK(c == start);
  CHECK(buf.empty());
}

TEST_CASE("the lane divide reports a state the multiply cannot have produced, like the scalar one", "[exact][lanes]") {
  const Index n = 16;
  std::vector<std::int64_t> c(16, 12345);
  c[11] = kMax;  // kMax / 2 > INT64_MAX >> 16: no multiply by 2/2^16 leaves it
  Buffer buf(n, 16, 8);
  const std::vector<std::int64_t> before = c;
  CHECK_THROWS_AS(divideByRatio(c.data(), n, ratioRuns(n, 2), buf), FixedPointOverflow);
  CHECK(c[11] == kMax);  // the failing element is as it was
}
