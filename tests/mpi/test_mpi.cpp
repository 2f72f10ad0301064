// The MPI component: an MLP whose batches are shared among MPI processes gives the bits of the
// single-process library — gradients, Hessian-vector products, mixed products, whole momentum and
// Adam hypergradients — at any number of processes (ctest runs this under mpiexec with 1 to 4
// processes, at 1 and 2 threads), and a failure on one process ends in the same typed error on
// all of them. Every process runs every test case (the calls are collective), and compares with
// its own single-process evaluation of the same objective: an independent path through run(),
// which never exchanges anything. (main() with MPI_Init is mpi_main.cpp.)
#include <catch2/catch.hpp>

#include <mpi.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <vector>

#include <hypergrad/exact/fingerprint.hpp>
#include <hypergrad/init.hpp>
#include <hypergrad/mpi.hpp>
#include <hypergrad/objective.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/adam.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/optimizers/snapshot.hpp>
#include <hypergrad/reverse.hpp>
#include "mpi_fixture.hpp"

using namespace hypergrad;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using namespace mpitest;

TEST_CASE("a distributed MLP's loss, gradient, Hessian-vector product and fused reverse step have the single-process bits",
          "[mpi][mlp]") {
  Workload wl;
  const VectorXd w = initialWeights(wl.arch, 4);
  VectorXd u(w.size());
  CounterRng rng(5);
  for (Index i = 0; i < u.size(); ++i) u(i) = rng.normal();
  for (Index t : {0, 1, 7}) {
    CAPTURE(t, worldSize());
    VectorXd g1, g2, h1, h2, m1, m2, gr, hr;
    CHECK(wl.shared.value(w, t) == wl.single.value(w, t));
    CHECK(wl.shared.valueAndGradient(w, t, g2) == wl.single.valueAndGradient(w, t, g1));
    CHECK(sameBits(g1, g2));
    wl.single.hessianVectorProduct(w, t, u, h1);
    wl.shared.hessianVectorProduct(w, t, u, h2);
    CHECK(sameBits(h1, h2));
    wl.shared.reverseStep(w, t, u, gr, hr, m2);
    CHECK(sameBits(gr, g1));
    CHECK(sameBits(hr, h1));
    CHECK(m2.size() == 0);
    CHECK(h1.norm() > 0.0);
    CHECK(sameOnEveryRank(fingerprint(g2.data(), g2.size()) ^ fingerprint(h2.data(), h2.size())));
  }
}

TEST_CASE("fewer shards than processes: the processes without a shard still get every result", "[mpi][mlp]") {
  const MlpArchitecture arch({16, 12, 5}, Activation::Tanh);
  const auto train = std::make_shared<const Dataset>(syntheticData(60, 16, 5, 1));
  MlpObjective single(arch, train, SeededBatches(3, 60, 15)), shared(arch, train, SeededBatches(3, 60, 15));
  single.setShardSize(10);  // 2 shards (10 + 5)
  shared.setShardSize(10);
  shared.setShardDistribution(world());
  const VectorXd w = initialWeights(arch, 4);
  VectorXd g1, g2;
  single.gradient(w, 2, g1);
  shared.gradient(w, 2, g2);
  CHECK(sameBits(g1, g2));
}

TEST_CASE("the float-computed MLP: its distributed gradient and reverse step have the single-process bits", "[mpi][mlp][float]") {
  const MlpArchitecture arch({16, 12, 5}, Activation::Tanh);
  const auto train = std::make_shared<const Dataset>(syntheticData(100, 16, 5, 1));
  MlpObjectiveFloat single(arch, train, SeededBatches(3, 100, 40)), shared(arch, train, SeededBatches(3, 100, 40));
  single.setShardSize(10);
  shared.setShardSize(10);
  shared.setShardDistribution(world());
  const VectorXd w = initialWeights(arch, 4);
  const VectorXd u = VectorXd::LinSpaced(w.size(), -0.5, 0.5);
  VectorXd g1, h1, m1, g2, h2, m2;
  CHECK(shared.valueAndGradient(w, 2, g2) == single.valueAndGradient(w, 2, g1));
  CHECK(sameBits(g1, g2));
  single.reverseStep(w, 2, u, g1, h1, m1);
  shared.reverseStep(w, 2, u, g2, h2, m2);
  CHECK(sameBits(g1, g2));
  CHECK(sameBits(h1, h2));
  CHECK(h1.norm() > 0.0);
}

TEST_CASE("the training inputs as hyperparameters: the distributed mixed product has the single-process bits",
          "[mpi][mlp]") {
  const MlpArchitecture arch({10, 8, 4}, Activation::Tanh);
  const auto train = std::make_shared<const Dataset>(syntheticData(30, 10, 4, 7));
  MlpObjective single(arch, train, SeededBatches(3, 30, 24), true), shared(arch, train, SeededBatches(3, 30, 24), true);
  single.setShardSize(5);
  shared.setShardSize(5);
  shared.setShardDistribution(world());
  const VectorXd w = initialWeights(arch, 8);
  const VectorXd u = VectorXd::LinSpaced(w.size(), -1.0, 1.0);
  VectorXd g1, h1, m1, g2, h2, m2;
  single.reverseStep(w, 1, u, g1, h1, m1);
  shared.reverseStep(w, 1, u, g2, h2, m2);
  CHECK(sameBits(g1, g2));
  CHECK(sameBits(h1, h2));
  CHECK(sameBits(m1, m2));
  CHECK(m1.norm() > 0.0);
}

TEST_CASE("the mixed product alone and the two-exchange reverse step with a direction have the single-process bits, in double and float",
          "[mpi][mlp]") {
  const MlpArchitecture arch({10, 8, 4}, Activation::Tanh);
  const auto train = std::make_shared<const Dataset>(syntheticData(30, 10, 4, 7));
  // The direction of an Adam-like rule: u from g, the same on every process since g is.
  const DirectionFunction direction = [](const VectorXd& g, VectorXd& u) { u = g.array() * 3.0 + 0.25; };
  auto compare = [&](auto single, auto shared) {
    single.setShardSize(5);
    shared.setShardSize(5);
    shared.setShardDistribution(world());
    const VectorXd w = initialWeights(arch, 8);
    const VectorXd u = VectorXd::LinSpaced(w.size(), -1.0, 1.0);
    VectorXd m1, m2, u1, u2, g1, g2, h1, h2, d1, d2;
    single.mixedProduct(w, 2, u, m1);
    shared.mixedProduct(w, 2, u, m2);
    CHECK(sameBits(m1, m2));
    CHECK(m1.norm() > 0.0);
    single.reverseStepWithDirection(w, 3, direction, u1, g1, h1, d1);
    shared.reverseStepWithDirection(w, 3, direction, u2, g2, h2, d2);
    CHECK(sameBits(u1, u2));
    CHECK(sameBits(g1, g2));
    CHECK(sameBits(h1, h2));
    CHECK(sameBits(d1, d2));
    CHECK(d1.norm() > 0.0);
  };
  compare(MlpObjective(arch, train, SeededBatches(3, 30, 24), true), MlpObjective(arch, train, SeededBatches(3, 30, 24), true));
  compare(MlpObjectiveFloat(arch, train, SeededBatches(3, 30, 24), true),
          MlpObjectiveFloat(arch, train, SeededBatches(3, 30, 24), true));
}

TEST_CASE("momentum SGD hypergradients at T = 100 have the single-process bits on every process", "[mpi][reverse]") {
  Workload wl;
  const ParameterLayout layout = wl.arch.layout();
  const Index T = 100;
  MatrixXd alpha(T, layout.numGroups());
  for (Index t = 0; t < T; ++t)
    for (Index k = 0; k < layout.numGroups(); ++k) alpha(t, k) = 0.05 + 0.02 * double((t + k) % 5) / 5.0;
  const VectorXd w1 = initialWeights(wl.arch, 4);
  SgdMomentum<> a(layout, Schedule(alpha), Schedule::constant(T, layout.numGroups(), 0.9));
  SgdMomentum<> b(layout, Schedule(alpha), Schedule::constant(T, layout.numGroups(), 0.9));
  const Hypergradients one = computeHypergradients(a, wl.single, wl.valid, w1);
  const Hypergradients many = computeHypergradients(b, wl.shared, wl.valid, w1);
  CHECK(sameBits(one.learningRates, many.learningRates));
  CHECK(sameBits(one.momenta, many.momenta));
  CHECK(sameBits(one.initialWeights, many.initialWeights));
  CHECK(sameBits(one.finalWeights, many.finalWeights));
  CHECK(one.metaObjective == many.metaObjective);
  CHECK(one.learningRates.norm() > 0.0);
  // Both optimizers ended where they started, buffers empty (computeHypergradients checks it).
  CHECK(b.buffer().empty());
  CHECK(sameOnEveryRank(fingerprint(many.learningRates.data(), many.learningRates.size())));
}

TEST_CASE("Adam hypergradients (the two-exchange reverse step) have the single-process bits", "[mpi][reverse][adam]") {
  Workload wl;
  const ParameterLayout layout = wl.arch.layout();
  const Index T = 30;
  const std::array<Schedule, 4> s{Schedule::constant(T, layout.numGroups(), 0.01),
                                  Schedule::constant(T, layout.numGroups(), 0.9),
                                  Schedule::constant(T, layout.numGroups(), 0.999),
                                  Schedule::constant(T, layout.numGroups(), 1e-8)};
  const VectorXd w1 = initialWeights(wl.arch, 6);
  ReversibleAdam<> a(layout, s), b(layout, s);
  const AdamHypergradients one = computeHypergradients(a, wl.single, wl.valid, w1);
  const AdamHypergradients many = computeHypergradients(b, wl.shared, wl.valid, w1);
  for (Index j = 0; j < AdamRule::numSchedules; ++j) CHECK(sameBits(one.schedule(j), many.schedule(j)));
  CHECK(sameBits(one.initialState(0), many.initialState(0)));
  CHECK(one.schedule(0).norm() > 0.0);
  CHECK(sameOnEveryRank(fingerprint(many.schedule(0).data(), many.schedule(0).size())));
}

TEST_CASE("a distributed run saved on every process is reversed later by fresh optimizers, with the single-process bits",
          "[mpi][reverse][snapshot]") {
  Workload wl;
  const ParameterLayout layout = wl.arch.layout();
  const Index T = 40;
  auto make = [&] {
    return SgdMomentum<>(layout, Schedule::constant(T, layout.numGroups(), 0.05), Schedule::constant(T, layout.numGroups(), 0.9));
  };
  const VectorXd w1 = initialWeights(wl.arch, 9);
  // Each process trains its (identical) copy of the state and saves it: here to memory, in a
  // program to a file per rank.
  SgdMomentum<> forward = make();
  forward.start(w1);
  for (Index t = 0; t < 25; ++t) forward.step(wl.shared);
  std::stringstream saved;
  saveRun(forward, saved);
  CHECK(sameOnEveryRank(std::hash<std::string>{}(saved.str())));
  // A fresh optimizer on every process loads it, finishes training and reverses, distributed.
  SgdMomentum<> resumed = make();
  loadRun(resumed, saved);
  train(resumed, wl.shared);
  const Hypergradients many = reverse(resumed, wl.shared, wl.valid);
  SgdMomentum<> one = make();
  const Hypergradients single = computeHypergradients(one, wl.single, wl.valid, w1);
  CHECK(sameBits(single.learningRates, many.learningRates));
  CHECK(sameBits(single.initialWeights, many.initialWeights));
  CHECK(resumed.weightsEqual(w1));
  CHECK(resumed.buffer().empty());
}

TEST_CASE("a batch schedule that throws on one process ends in the same DistributedError on every process, state unchanged",
          "[mpi][errors]") {
  const int P = worldSize(), me = worldRank();
  const int bad = P - 1;  // the last process fails (the only one when P = 1)
  const MlpArchitecture arch({16, 12, 5}, Activation::Tanh);
  const auto train = std::make_shared<const Dataset>(syntheticData(100, 16, 5, 1));
  const SeededBatches batches(3, 100, 40);
  MlpObjective f(arch, train, [&](Index t) -> std::vector<Index> {
    if (t == 3 && me == bad) throw DataError("the batch file for t = 3 is truncated");
    return batches(t);
  });
  f.setShardSize(10);
  f.setShardDistribution(world());
  const ParameterLayout layout = arch.layout();
  const Index T = 6;
  SgdMomentum<> opt(layout, Schedule::constant(T, layout.numGroups(), 0.05), Schedule::constant(T, layout.numGroups(), 0.9));
  opt.start(initialWeights(arch, 4));
  for (Index t = 0; t < 3; ++t) opt.step(f);
  const auto w = opt.fixedWeights();
  requireDistributedError([&] { opt.step(f); }, bad,
                          {"MPI rank " + std::to_string(bad) + " of " + std::to_string(P), "batch t = 3",
                           "DataError: the batch file for t = 3 is truncated"});
  CHECK(opt.iteration() == 3);
  CHECK(opt.fixedWeights() == w);
  // Every process is still in step: the reverse pass runs and recovers the start exactly.
  for (Index t = 0; t < 3; ++t) opt.unstep(f);
  CHECK(opt.iteration() == 0);
  CHECK(opt.buffer().empty());
}

TEST_CASE("processes whose objectives disagree (shard size, initial weights) are stopped at the first exchange",
          "[mpi][errors]") {
  const int P = worldSize(), me = worldRank();
  if (P < 2) return;  // nothing to disagree with
  const MlpArchitecture arch({16, 12, 5}, Activation::Tanh);
  const auto train = std::make_shared<const Dataset>(syntheticData(100, 16, 5, 1));
  MlpObjective f(arch, train, SeededBatches(3, 100, 40));
  f.setShardDistribution(world());
  VectorXd g;
  f.setShardSize(me == 1 ? 20 : 10);
  CHECK_THROWS_MATCHES(f.gradient(initialWeights(arch, 4), 0, g), DistributedError,
                       Catch::Matchers::Predicate<DistributedError>(
                           [](const DistributedError& e) {
                             return e.rank() == -1 && std::string(e.what()).find("number of shards is 4 on rank 0 but 2 on rank 1") !=
                                                          std::string::npos;
                           },
                           "names the disagreeing shard counts"));
  f.setShardSize(10);
  CHECK_THROWS_WITH(f.gradient(initialWeights(arch, me == 1 ? 5 : 4), 0, g),
                    Catch::Matchers::Contains("input fingerprint") && Catch::Matchers::Contains("on rank 1"));
  f.gradient(initialWeights(arch, 4), 0, g);  // agreeing again: back in step
  CHECK(g.allFinite());
  // Another batch schedule, or other data, on one process: the weights stay equal (the exchange
  // shares the rows), so only the fingerprint of the batch and the data can tell.
  MlpObjective otherBatches(arch, train, SeededBatches(me == 1 ? 4 : 3, 100, 40));
  otherBatches.setShardDistribution(world());
  CHECK_THROWS_WITH(otherBatches.gradient(initialWeights(arch, 4), 0, g),
                    Catch::Matchers::Contains("input fingerprint") && Catch::Matchers::Contains("on rank 1"));
  Dataset changed = *train;
  if (me == 1) changed.labels(7) = (changed.labels(7) + 1) % 5;
  MlpObjective otherData(arch, std::move(changed), SeededBatches(3, 100, 40));
  otherData.setShardDistribution(world());
  CHECK_THROWS_WITH(otherData.value(initialWeights(arch, 4), 1),
                    Catch::Matchers::Contains("input fingerprint") && Catch::Matchers::Contains("on rank 1"));
}

TEST_CASE("requireSame stops processes whose schedules differ before training starts", "[mpi][errors]") {
  const int P = worldSize(), me = worldRank();
  const auto d = std::make_shared<mpi::MpiShardDistribution>();
  const ParameterLayout layout = MlpArchitecture({16, 12, 5}, Activation::Tanh).layout();
  const Index T = 5;
  const SgdMomentum<> same(layout, Schedule::constant(T, layout.numGroups(), 0.05), Schedule::constant(T, layout.numGroups(), 0.9));
  CHECK_NOTHROW(d->requireSame("the schedules", same.schedules().fingerprint()));
  const SgdMomentum<> mine(layout, Schedule::constant(T, layout.numGroups(), me == P - 1 ? 0.06 : 0.05),
                           Schedule::constant(T, layout.numGroups(), 0.9));
  if (P == 1) {
    CHECK_NOTHROW(d->requireSame("the schedules", mine.schedules().fingerprint()));
  } else {
    CHECK_THROWS_WITH(d->requireSame("the schedules", mine.schedules().fingerprint()),
                      Catch::Matchers::Contains("MPI ranks disagree on the schedules: rank " + std::to_string(P - 1)));
  }
}

TEST_CASE("MpiShardDistribution shares the shards by rank and counts what it receives", "[mpi]") {
  CHECK_THROWS_AS(mpi::MpiShardDistribution(MPI_COMM_NULL), InvalidArgument);
  const auto d = std::make_shared<mpi::MpiShardDistribution>();
  CHECK(d->rank() == worldRank());
  CHECK(d->numProcesses() == worldSize());
  // Every shard is owned by exactly one process, in rank order.
  for (Index n : {0, 1, 3, 4, 7, 64}) {
    Index next = 0;
    for (int r = 0; r < worldSize(); ++r) {
      const ShardRange range = ShardDistribution::shardsOf(n, r, worldSize());
      CHECK(range.first == next);
      next = range.last;
    }
    CHECK(next == n);
  }
  const MlpArchitecture arch({16, 12, 5}, Activation::Tanh);
  MlpObjective f(arch, syntheticData(100, 16, 5, 1), SeededBatches(3, 100, 40));
  f.setShardSize(10);
  f.setShardDistribution(d);
  VectorXd g;
  f.gradient(initialWeights(arch, 4), 0, g);
  CHECK(d->numExchanges() == 1);
  const std::uint64_t rows = 4 - static_cast<std::uint64_t>(d->ownedShards(4).count());
  CHECK(d->bytesReceived() == rows * static_cast<std::uint64_t>(1 + arch.numParameters()) * sizeof(double));
}
