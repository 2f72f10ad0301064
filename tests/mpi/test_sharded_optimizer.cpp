// The sharded optimizer state (ZeRO-1): each process keeps its slice of the states and the
// information buffer, and the trajectory, the buffer and the hypergradients are the single-process
// optimizer's bit for bit at any number of processes — compared on every process with its own
// plain SgdMomentum / ReversibleAdam run on the undistributed objective (an independent path:
// no slicing, no exchange). Buffer blocks of 64 make 7 blocks of the 425 weights, so 2-4
// processes cut groups (and their schedule sums) in the middle.
#include <catch2/catch.hpp>

#include <mpi.h>

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <hypergrad/optimizers/adam.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/optimizers/snapshot.hpp>
#include <hypergrad/parallel/sharded_optimizer.hpp>
#include <hypergrad/reverse.hpp>

#include "mpi_fixture.hpp"

using namespace hypergrad;
using namespace mpitest;
using Eigen::MatrixXd;
using Eigen::VectorXd;

namespace {

constexpr Index kBlock = 64;

MatrixXd learningRates(Index T, Index G) {
  MatrixXd alpha(T, G);
  for (Index t = 0; t < T; ++t)
    for (Index k = 0; k < G; ++k) alpha(t, k) = 0.05 + 0.02 * double((t + k) % 5) / 5.0;
  return alpha;
}

// Sums a value over the processes (exact for the integer-valued storage bits).
double sumOverRanks(double x) {
  double total = 0.0;
  MPI_Allreduce(&x, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return total;
}

// An objective that forwards to the distributed MLP but, at one step on one process, makes its
// slice of the gradient huge: the exact update overflows there only.
struct OverflowOnOneRank {
  const MlpObjective& f;
  Index badStep;
  int badRank;
  mutable bool armed = true;
  Index numParameters() const { return f.numParameters(); }
  Index numHyperparameters() const { return f.numHyperparameters(); }
  void gradient(const VectorXd& w, Index t, VectorXd& g) const { f.gradient(w, t, g); }
  void hessianVectorProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& hu) const {
    f.hessianVectorProduct(w, t, u, hu);
  }
  void mixedProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& d) const { f.mixedProduct(w, t, u, d); }
  double gradientSlice(const VectorXd& w, Index t, const ParameterSlicing& s, VectorXd& g) const {
    const double loss = f.gradientSlice(w, t, s, g);
    if (armed && t == badStep && worldRank() == badRank) g *= 1e12;
    return loss;
  }
  void reverseStepSlice(const VectorXd& w, Index t, const ParameterSlicing& s, const VectorXd& u, VectorXd& g,
                        VectorXd& hu, VectorXd& d) const {
    f.reverseStepSlice(w, t, s, u, g, hu, d);
  }
};

}  // namespace

TEST_CASE("sharded momentum SGD: the trajectory, the buffer and the hypergradients have the single-process bits",
          "[mpi][sharded]") {
  Workload wl;
  const ParameterLayout layout = wl.arch.layout();
  const Index T = 100, G = layout.numGroups();
  const VectorXd w1 = initialWeights(wl.arch, 4);
  SgdMomentum<> one(layout, Schedule(learningRates(T, G)), Schedule::constant(T, G, 0.9), kBlock);
  ShardedOptimizer<SgdMomentum<>> many(world(), layout, Schedule(learningRates(T, G)), Schedule::constant(T, G, 0.9),
                                       kBlock);
  const Index begin = many.sliceBegin(), n = many.sliceSize();
  CHECK(begin % kBlock == 0);
  CHECK(n > 0);
  one.start(w1);
  many.start(w1);
  train(one, wl.single);
  train(many, wl.shared);
  // The weights are whole on every process; the states and the buffer are this process's slice.
  CHECK(sameBits(one.weights(), many.weights()));
  CHECK(sameBits(VectorXd(one.state(1).segment(begin, n)), many.local().state(1)));
  CHECK(many.local().size() == n);
  // Buffer blocks are the single process's blocks: the stored bits add up exactly.
  CHECK(sumOverRanks(many.buffer().storageBits()) == one.buffer().storageBits());
  CHECK(sumOverRanks(many.buffer().informationBits()) == Approx(one.buffer().informationBits()).epsilon(1e-12));
  CHECK(many.buffer().storageBits() < one.buffer().storageBits() + (worldSize() == 1 ? 1.0 : 0.0));

  const Hypergradients a = reverse(one, wl.single, wl.valid);
  const Hypergradients b = reverse(many, wl.shared, wl.valid);
  CHECK(sameBits(a.learningRates, b.learningRates));
  CHECK(sameBits(a.momenta, b.momenta));
  CHECK(sameBits(a.initialWeights, b.initialWeights));
  CHECK(sameBits(a.initialState(1), b.initialState(1)));
  CHECK(sameBits(a.finalWeights, b.finalWeights));
  CHECK(a.metaObjective == b.metaObjective);
  CHECK(a.learningRates.norm() > 0.0);
  // Every process is back at the start, its buffer empty (reverse() checked it on all of them).
  CHECK(many.iteration() == 0);
  CHECK(many.buffer().empty());
  CHECK(sameBits(many.weights(), one.weights()));
  CHECK(sameOnEveryRank(fingerprint(b.learningRates.data(), b.learningRates.size())));
}

TEST_CASE("sharded Adam (the direction from each process's slice of g): hypergradients have the single-process bits",
          "[mpi][sharded][adam]") {
  Workload wl;
  const ParameterLayout layout = wl.arch.layout();
  const Index T = 30, G = layout.numGroups();
  const std::array<Schedule, 4> s{Schedule::constant(T, G, 0.01), Schedule::constant(T, G, 0.9),
                                  Schedule::constant(T, G, 0.999), Schedule::constant(T, G, 1e-8)};
  const VectorXd w1 = initialWeights(wl.arch, 6);
  ReversibleAdam<> one(layout, s, kBlock);
  ShardedOptimizer<ReversibleAdam<>> many(world(), layout, s, kBlock);
  const AdamHypergradients a = computeHypergradients(one, wl.single, wl.valid, w1);
  const AdamHypergradients b = computeHypergradients(many, wl.shared, wl.valid, w1);
  for (Index j = 0; j < AdamRule::numSchedules; ++j) CHECK(sameBits(a.schedule(j), b.schedule(j)));
  for (int k = 0; k < AdamRule::numStates; ++k) CHECK(sameBits(a.initialState(k), b.initialState(k)));
  CHECK(a.schedule(0).norm() > 0.0);
  CHECK(sameOnEveryRank(fingerprint(b.schedule(0).data(), b.schedule(0).size())));
}

TEST_CASE("sharded state with the training inputs as hyperparameters: the whole mixed product on every process",
          "[mpi][sharded][theta]") {
  const MlpArchitecture arch({16, 12, 12, 5}, Activation::Tanh);
  const auto data = std::make_shared<const Dataset>(syntheticData(120, 16, 5, 1));
  const MlpLoss valid(arch, syntheticData(60, 16, 5, 2));
  MlpObjective single(arch, data, SeededBatches(3, 120, 30), true), shared(arch, data, SeededBatches(3, 120, 30), true);
  single.setShardSize(10);
  shared.setShardSize(10);
  shared.setShardDistribution(world());
  const ParameterLayout layout = arch.layout();
  const Index T = 20, G = layout.numGroups();
  SgdMomentum<> one(layout, Schedule::constant(T, G, 0.05), Schedule::constant(T, G, 0.9), kBlock);
  ShardedOptimizer<SgdMomentum<>> many(world(), layout, Schedule::constant(T, G, 0.05), Schedule::constant(T, G, 0.9),
                                       kBlock);
  const VectorXd w1 = initialWeights(arch, 3);
  const Hypergradients a = computeHypergradients(one, single, valid, w1);
  const Hypergradients b = computeHypergradients(many, shared, valid, w1);
  REQUIRE(a.hyperparameters.size() == 120 * 16);
  CHECK(sameBits(a.hyperparameters, b.hyperparameters));
  CHECK(sameBits(a.learningRates, b.learningRates));
  CHECK(a.hyperparameters.norm() > 0.0);
}

TEST_CASE("an update that overflows on one process's slice: every process throws, undoes its part, and goes on",
          "[mpi][sharded][errors]") {
  Workload wl;
  const int P = worldSize(), bad = P - 1;
  const ParameterLayout layout = wl.arch.layout();
  const Index T = 12, G = layout.numGroups();
  auto make = [&] {
    return ShardedOptimizer<SgdMomentum<>>(world(), layout, Schedule::constant(T, G, 0.05), Schedule::constant(T, G, 0.9),
                                           kBlock);
  };
  ShardedOptimizer<SgdMomentum<>> many = make();
  const OverflowOnOneRank f{wl.shared, 5, bad};
  const VectorXd w1 = initialWeights(wl.arch, 5);
  many.start(w1);
  for (Index t = 0; t < 5; ++t) many.step(f);
  const VectorXd w = many.weights();
  const auto v = many.local().fixedState(1);
  requireDistributedError([&] { many.step(f); }, bad,
                          {"taking its optimizer step at iteration t = 5", "FixedPointOverflow"});
  // Every process is as before the call: iteration, weights, its slice of the velocity.
  CHECK(many.iteration() == 5);
  CHECK(sameBits(many.weights(), w));
  CHECK(many.local().fixedState(1) == v);
  // Disarmed, the run goes on and its hypergradients are those of an undisturbed run.
  f.armed = false;
  train(many, f);
  const Hypergradients b = reverse(many, wl.shared, wl.valid);
  SgdMomentum<> one(layout, Schedule::constant(T, G, 0.05), Schedule::constant(T, G, 0.9), kBlock);
  const Hypergradients a = computeHypergradients(one, wl.single, wl.valid, w1);
  CHECK(sameBits(a.learningRates, b.learningRates));
  CHECK(sameBits(a.initialWeights, b.initialWeights));
}

TEST_CASE("a sharded optimizer refuses a layout with fewer buffer blocks than processes", "[mpi][sharded][errors]") {
  Workload wl;
  const ParameterLayout layout = wl.arch.layout();  // 425 weights: one block of 4096
  const Index G = layout.numGroups();
  if (worldSize() == 1) {
    CHECK_NOTHROW(ShardedOptimizer<SgdMomentum<>>(world(), layout, Schedule::constant(4, G, 0.1), Schedule::constant(4, G, 0.9)));
  } else {
    CHECK_THROWS_WITH(
        ShardedOptimizer<SgdMomentum<>>(world(), layout, Schedule::constant(4, G, 0.1), Schedule::constant(4, G, 0.9)),
        Catch::Matchers::Contains("fewer than the " + std::to_string(worldSize()) + " processes") &&
            Catch::Matchers::Contains("smaller block size"));
  }
}

TEST_CASE("a batch that fails on one process during a sharded reverse pass: every process throws and is back at T",
          "[mpi][sharded][errors]") {
  Workload wl;
  const int P = worldSize(), me = worldRank(), bad = P - 1;
  const ParameterLayout layout = wl.arch.layout();
  const Index T = 10, G = layout.numGroups();
  bool armed = false;
  const SeededBatches batches(3, 200, 40);
  MlpObjective f(wl.arch, wl.train, [&](Index t) -> std::vector<Index> {
    if (armed && t == 4 && me == bad) throw DataError("the batch file for t = 4 is gone");
    return batches(t);
  });
  f.setShardSize(10);
  f.setShardDistribution(world());
  ShardedOptimizer<SgdMomentum<>> many(world(), layout, Schedule(learningRates(T, G)), Schedule::constant(T, G, 0.9),
                                       kBlock);
  const VectorXd w1 = initialWeights(wl.arch, 7);
  many.start(w1);
  train(many, f);
  const VectorXd wT = many.weights();
  armed = true;
  requireDistributedError([&] { reverse(many, f, wl.valid); }, bad, {"batch t = 4", "the batch file for t = 4 is gone"});
  // Every process re-took the steps it had reversed: back at T with the same weights.
  CHECK(many.iteration() == T);
  CHECK_FALSE(many.halfStep());
  CHECK(sameBits(many.weights(), wT));
  armed = false;
  const Hypergradients b = reverse(many, f, wl.valid);
  SgdMomentum<> one(layout, Schedule(learningRates(T, G)), Schedule::constant(T, G, 0.9), kBlock);
  const Hypergradients a = computeHypergradients(one, wl.single, wl.valid, w1);
  CHECK(sameBits(a.learningRates, b.learningRates));
  CHECK(sameBits(a.initialWeights, b.initialWeights));
  CHECK(many.buffer().empty());
}

TEST_CASE("processes whose sharded optimizers get other schedules are stopped at construction", "[mpi][sharded][errors]") {
  Workload wl;
  const ParameterLayout layout = wl.arch.layout();
  const Index T = 5, G = layout.numGroups();
  const double alpha = worldRank() == worldSize() - 1 && worldSize() > 1 ? 0.06 : 0.05;
  auto make = [&] {
    return ShardedOptimizer<SgdMomentum<>>(world(), layout, Schedule::constant(T, G, alpha), Schedule::constant(T, G, 0.9),
                                           kBlock);
  };
  if (worldSize() == 1) {
    CHECK_NOTHROW(make());
  } else {
    CHECK_THROWS_WITH(make(), Catch::Matchers::Contains("disagree on the sharded optimizer's schedules") &&
                                  Catch::Matchers::Contains("rank " + std::to_string(worldSize() - 1)));
  }
}

namespace {
// Throws from onForwardStep on one process at one step; or asks to stop there.
struct OneProcessCallback {
  Index at;
  int rank;
  bool stopInstead;
  template <class Opt>
  bool onForwardStep(const Opt& /*opt*/, Index t, const VectorXd& /*g*/) {
    if (t != at || worldRank() != rank) return false;
    if (stopInstead) return true;
    throw std::runtime_error("the callback's log file is full");
  }
};
}  // namespace

TEST_CASE("a callback that throws or stops on one process: every process throws or stops with it (sharded)",
          "[mpi][sharded][errors]") {
  Workload wl;
  const int bad = worldSize() - 1;
  const ParameterLayout layout = wl.arch.layout();
  const Index T = 8, G = layout.numGroups();
  ShardedOptimizer<SgdMomentum<>> many(world(), layout, Schedule::constant(T, G, 0.05), Schedule::constant(T, G, 0.9),
                                       kBlock);
  const VectorXd w1 = initialWeights(wl.arch, 8);
  many.start(w1);
  requireDistributedError([&] { train(many, wl.shared, OneProcessCallback{3, bad, false}); }, bad,
                          {"onForwardStep", "the callback's log file is full"});
  // train() reversed the steps it took, on every process together.
  CHECK(many.iteration() == 0);
  CHECK(many.buffer().empty());
  CHECK(many.local().weightsEqual(VectorXd(w1.segment(many.sliceBegin(), many.sliceSize()))));
  // A stop on one process stops all of them after the same step.
  const TrainSummary s = train(many, wl.shared, OneProcessCallback{4, bad, true});
  CHECK(s.stoppedEarly);
  CHECK(many.iteration() == 5);
  CHECK(sameOnEveryRank(static_cast<std::uint64_t>(many.iteration())));
}

TEST_CASE("a sharded run saved per process is loaded by fresh sharded optimizers and reversed with the single-process bits",
          "[mpi][sharded][snapshot]") {
  Workload wl;
  const ParameterLayout layout = wl.arch.layout();
  const Index T = 30, G = layout.numGroups();
  auto make = [&] {
    return ShardedOptimizer<SgdMomentum<>>(world(), layout, Schedule(learningRates(T, G)), Schedule::constant(T, G, 0.9),
                                           kBlock);
  };
  const VectorXd w1 = initialWeights(wl.arch, 9);
  std::stringstream saved;  // a file per process in a program
  {
    ShardedOptimizer<SgdMomentum<>> forward = make();
    forward.start(w1);
    for (Index t = 0; t < 20; ++t) forward.step(wl.shared);
    saveRun(forward.local(), saved);
  }
  ShardedOptimizer<SgdMomentum<>> resumed = make();
  resumed.loadLocalRun([&](SgdMomentum<>& local) { loadRun(local, saved); });
  CHECK(resumed.iteration() == 20);
  train(resumed, wl.shared);
  const Hypergradients b = reverse(resumed, wl.shared, wl.valid);
  SgdMomentum<> one(layout, Schedule(learningRates(T, G)), Schedule::constant(T, G, 0.9), kBlock);
  const Hypergradients a = computeHypergradients(one, wl.single, wl.valid, w1);
  CHECK(sameBits(a.learningRates, b.learningRates));
  CHECK(sameBits(a.initialWeights, b.initialWeights));
  CHECK(resumed.buffer().empty());
  // A run of another iteration on one process is refused on all, each keeping its run.
  SgdMomentum<>::RunState mine = resumed.exportRun();
  if (worldRank() == worldSize() - 1 && worldSize() > 1) mine.iteration = 1;
  if (worldSize() > 1) {
    CHECK_THROWS_AS(resumed.importRun(mine), DistributedError);
    CHECK(resumed.iteration() == 0);
  }
}

TEST_CASE("a reverse step whose recomputed gradient differs on one process: every process is back where it was",
          "[mpi][sharded][errors]") {
  Workload wl;
  const int bad = worldSize() - 1;
  const ParameterLayout layout = wl.arch.layout();
  const Index T = 8, G = layout.numGroups();
  ShardedOptimizer<SgdMomentum<>> many(world(), layout, Schedule::constant(T, G, 0.05), Schedule::constant(T, G, 0.9),
                                       kBlock);
  many.start(initialWeights(wl.arch, 10));
  const OverflowOnOneRank f{wl.shared, T - 1, bad};
  f.armed = false;
  train(many, f);
  const VectorXd wT = many.weights();
  f.armed = true;  // the recomputed g_{T-1} is 1e12 times the forward one on one process
  CHECK_THROWS_AS(many.unstep(f), DistributedError);
  CHECK(many.iteration() == T);
  CHECK_FALSE(many.halfStep());
  CHECK(sameBits(many.weights(), wT));
  f.armed = false;
  for (Index t = 0; t < T; ++t) many.unstep(f);
  many.checkRecoveredStart();
  CHECK(many.buffer().empty());
}
