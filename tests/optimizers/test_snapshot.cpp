// Saving a run and loading it elsewhere (optimizers/snapshot.hpp): the round trip, resuming and
// reversing a loaded run, and every kind of bad file — each refused with a typed error naming the
// problem and the optimizer left exactly as it was.
#include <catch2/catch.hpp>

#include <cstdio>
#include <sstream>
#include <string>

#include <hypergrad/hypergradients.hpp>
#include <hypergrad/optimizers/momentum.hpp>
#include <hypergrad/optimizers/snapshot.hpp>

#include "../support/logistic_fixture.hpp"

using namespace hypergrad;
using fixture::Logistic;
using fixture::VectorXd;

namespace {

ParameterLayout layout3() {
  ParameterLayout layout;
  layout.addGroup("a", 5);
  layout.addGroup("b", 3);
  return layout;
}

SgdMomentum<> makeOptimizer(Index T = 20, double gamma = 0.9) {
  return SgdMomentum<>(layout3(), Schedule::constant(T, 2, 0.3), Schedule::perGroup(T, Eigen::Vector2d(gamma, 0.7)), 4);
}

std::string saved(const SgdMomentum<>& opt) {
  std::ostringstream out;
  saveRun(opt, out);
  return out.str();
}

template <class E>
std::string loadError(SgdMomentum<>& opt, const std::string& bytes) {
  std::istringstream in(bytes);
  try {
    loadRun(opt, in, "test file");
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("wrong exception type: " << e.what());
  }
  FAIL("no exception for a bad file");
  return {};
}

/// Everything loadRun could change, for before/after comparisons.
struct Everything {
  SgdMomentum<>::RunState run;
  std::vector<std::uint64_t> prints;
  explicit Everything(const SgdMomentum<>& opt) : run(opt.exportRun()), prints(opt.gradientFingerprints()) {}
  bool operator==(const Everything& o) const {
    return run.state[0] == o.run.state[0] && run.state[1] == o.run.state[1] && run.start[0] == o.run.start[0] &&
           run.start[1] == o.run.start[1] && run.buffer == o.run.buffer && run.iteration == o.run.iteration &&
           run.halfStep == o.run.halfStep && prints == o.prints;
  }
};

}  // namespace

TEST_CASE("a saved run loads into a fresh optimizer and reverses there bit for bit", "[snapshot]") {
  const Logistic f(50, 8, 10, 41);
  const fixture::Validation valid(f, 42);
  SgdMomentum<> opt = makeOptimizer();
  opt.start(VectorXd::LinSpaced(8, -1, 1), VectorXd::Constant(8, 0.05));
  train(opt, f);
  const std::string path = "test_snapshot_run.hgrun";
  saveRun(opt, path);

  SgdMomentum<> other = makeOptimizer();  // as a later process would build it
  loadRun(other, path);
  std::remove(path.c_str());
  CHECK(Everything(other) == Everything(opt));
  const Hypergradients a = reverse(opt, f, valid), b = reverse(other, f, valid);
  CHECK(a.learningRates == b.learningRates);  // bitwise
  CHECK(a.momenta == b.momenta);
  CHECK(a.initialVelocity == b.initialVelocity);
  CHECK(other.buffer().empty());
}

TEST_CASE("a run saved mid-way resumes training and gives the same bits as an uninterrupted run", "[snapshot]") {
  const Logistic f(50, 8, 10, 43);
  const fixture::Validation valid(f, 44);
  SgdMomentum<> whole = makeOptimizer(), first = makeOptimizer(), second = makeOptimizer();
  const VectorXd w1 = VectorXd::LinSpaced(8, 0.5, -0.5);
  whole.start(w1);
  train(whole, f);
  first.start(w1);
  for (int k = 0; k < 7; ++k) first.step(f);
  std::istringstream in(saved(first));
  loadRun(second, in);
  train(second, f);
  CHECK(second.fixedWeights() == whole.fixedWeights());
  CHECK(second.buffer() == whole.buffer());
  const Hypergradients a = reverse(whole, f, valid), b = reverse(second, f, valid);
  CHECK(a.learningRates == b.learningRates);
  // A run saved half-way through a reverse step keeps that state too.
  second.start(w1);
  train(second, f);
  second.unstepWeights();
  SgdMomentum<> third = makeOptimizer();
  std::istringstream in2(saved(second));
  loadRun(third, in2);
  CHECK(third.halfStep());
  third.restepWeights();
  CHECK_NOTHROW(reverse(third, f, valid));
}

TEST_CASE("truncated, corrupt and mismatched run files are refused and change nothing", "[snapshot][errors]") {
  const Logistic f(50, 8, 10, 45);
  SgdMomentum<> source = makeOptimizer();
  source.start(VectorXd::LinSpaced(8, -1, 1));
  train(source, f);
  const std::string good = saved(source);

  SgdMomentum<> target = makeOptimizer();
  target.start(VectorXd::Constant(8, 0.25));
  for (int k = 0; k < 3; ++k) target.step(f);
  const Everything before(target);
  auto unchanged = [&] { CHECK(Everything(target) == before); };

  SECTION("truncated anywhere") {
    for (std::size_t n : {std::size_t(0), std::size_t(5), std::size_t(12), good.size() / 3, good.size() / 2,
                          good.size() - 9, good.size() - 1}) {
      INFO("truncated to " << n << " of " << good.size() << " bytes");
      const std::string msg = loadError<DataError>(target, good.substr(0, n));
      CHECK_THAT(msg, Catch::Contains("test file"));
      unchanged();
    }
  }
  SECTION("every flipped byte is caught (checksum or a named field)") {
    for (std::size_t i = 0; i < good.size(); i += 7) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ 0x10);
      INFO("byte " << i);
      std::istringstream in(bad);
      CHECK_THROWS_AS(loadRun(target, in, "test file"), DataError);
      unchanged();
    }
  }
  SECTION("wrong magic, version or trailing bytes") {
    std::string bad = good;
    bad[0] = 'X';
    CHECK_THAT(loadError<DataError>(target, bad), Catch::Contains("not a hypergrad run file"));
    bad = good;
    bad[8] = 9;
    CHECK_THAT(loadError<DataError>(target, bad), Catch::Contains("format version 9"));
    CHECK_THAT(loadError<DataError>(target, good + "x"), Catch::Contains("checksum"));
    unchanged();
  }
  SECTION("a run of another configuration") {
    SgdMomentum<> longer = makeOptimizer(21);
    CHECK_THAT(loadError<InvalidArgument>(longer, good), Catch::Contains("number of iterations is 20"));
    SgdMomentum<> otherGamma = makeOptimizer(20, 0.8);
    CHECK_THAT(loadError<InvalidArgument>(otherGamma, good), Catch::Contains("other schedule values"));
    ParameterLayout renamed;
    renamed.addGroup("a", 5);
    renamed.addGroup("c", 3);
    SgdMomentum<> otherLayout(renamed, Schedule::constant(20, 2, 0.3), Schedule::perGroup(20, Eigen::Vector2d(0.9, 0.7)), 4);
    CHECK_THAT(loadError<InvalidArgument>(otherLayout, good), Catch::Contains("parameter group is 'b' (3)"));
    SgdMomentum<FixedFormat<52>, FloorRounding> floor(layout3(), Schedule::constant(20, 2, 0.3),
                                                      Schedule::perGroup(20, Eigen::Vector2d(0.9, 0.7)), 4);
    std::istringstream in(good);
    CHECK_THROWS_WITH(loadRun(floor, in), Catch::Contains("rounding policy is bits-back"));
    SgdMomentum<> otherBlocks(layout3(), Schedule::constant(20, 2, 0.3), Schedule::perGroup(20, Eigen::Vector2d(0.9, 0.7)), 8);
    CHECK_THAT(loadError<InvalidArgument>(otherBlocks, good), Catch::Contains("buffer block size is 4"));
  }
  SECTION("a file that cannot be opened") {
    CHECK_THROWS_WITH(loadRun(target, std::string("/nonexistent/dir/run.hgrun")), Catch::Contains("cannot open"));
    unchanged();
  }
}

TEST_CASE("a run in the lane layout saves as version 2, loads, resumes and reverses bit for bit", "[snapshot][lanes]") {
  const Logistic f(50, 8, 10, 45);
  const fixture::Validation valid(f, 46);
  auto make = [](int lanes) {
    return SgdMomentum<>(layout3(), Schedule::constant(20, 2, 0.3), Schedule::perGroup(20, Eigen::Vector2d(0.9, 0.7)),
                         OptimizerOptions(8).withLanes(lanes));
  };
  SgdMomentum<> whole = make(8), first = make(8), second = make(8);
  const VectorXd w1 = VectorXd::LinSpaced(8, 0.5, -0.5);
  whole.start(w1);
  train(whole, f);
  first.start(w1);
  for (int k = 0; k < 7; ++k) first.step(f);
  const std::string bytes = saved(first);
  CHECK(static_cast<unsigned char>(bytes[8]) == 2);  // the version, after the 8-byte magic
  std::istringstream in(bytes);
  loadRun(second, in);
  train(second, f);
  CHECK(second.fixedWeights() == whole.fixedWeights());
  CHECK(second.buffer() == whole.buffer());
  CHECK(second.buffer().lanes() == 8);
  const Hypergradients a = reverse(whole, f, valid), b = reverse(second, f, valid);
  CHECK(a.learningRates == b.learningRates);
  CHECK(second.buffer().empty());

  // A lane-layout run does not load into an optimizer set to one stack, nor the other way round.
  SgdMomentum<> oneStack = make(1);
  oneStack.start(w1);
  CHECK(static_cast<unsigned char>(saved(oneStack)[8]) == 1);  // one stack per block: still version 1
  const Everything before(oneStack);
  CHECK_THAT(loadError<InvalidArgument>(oneStack, bytes), Catch::Contains("stacks per block"));
  CHECK(Everything(oneStack) == before);
  SgdMomentum<> lanes = make(8);
  lanes.start(w1);
  CHECK_THAT(loadError<InvalidArgument>(lanes, saved(oneStack)), Catch::Contains("stacks per block"));

  // The default options (lanes = 0) start in the lane layout here (block size 8) and take a run of
  // either layout, which then resumes and reverses in its own layout.
  SgdMomentum<> automatic = make(0);
  automatic.start(w1);
  CHECK(automatic.buffer().lanes() == 8);
  std::istringstream oneStackRun(saved(oneStack));
  loadRun(automatic, oneStackRun);
  CHECK(automatic.buffer().lanes() == 1);
  CHECK(automatic.fixedWeights() == oneStack.fixedWeights());
  train(automatic, f);
  train(oneStack, f);
  CHECK(automatic.buffer() == oneStack.buffer());
  const Hypergradients c = reverse(automatic, f, valid), d = reverse(oneStack, f, valid);
  CHECK(c.learningRates == d.learningRates);
  CHECK(automatic.buffer().empty());
  std::istringstream laneRun(bytes);
  loadRun(automatic, laneRun);
  CHECK(automatic.buffer().lanes() == 8);
}
