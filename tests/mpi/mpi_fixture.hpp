// Helpers of the MPI tests: the world's rank and size, bitwise comparisons, agreement across
// processes, and the scaled-down MLP workload every process builds alike.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <hypergrad/batches.hpp>
#include <hypergrad/mpi.hpp>
#include <hypergrad/objectives/mlp.hpp>

#include "../support/mlp_fixture.hpp"

namespace mpitest {

using namespace hypergrad;
using Eigen::MatrixXd;
using Eigen::VectorXd;

inline int worldRank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int worldSize() {
  int p = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  return p;
}

using fixture::initialWeights;
using fixture::syntheticData;

inline bool sameBits(const VectorXd& a, const VectorXd& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}
inline bool sameBits(const MatrixXd& a, const MatrixXd& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}

// True on every process when `print` is the same on every process.
inline bool sameOnEveryRank(std::uint64_t print) {
  std::vector<std::uint64_t> all(static_cast<std::size_t>(worldSize()));
  MPI_Allgather(&print, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
  for (std::uint64_t p : all)
    if (p != all[0]) return false;
  return true;
}

// Runs `operation`, which must throw a DistributedError naming process `rank` whose message
// contains every one of `parts` (the same error on every process: each checks its own).
template <class Operation>
void requireDistributedError(Operation&& operation, int rank, std::initializer_list<std::string> parts) {
  try {
    operation();
    FAIL("expected a DistributedError from process " << rank);
  } catch (const DistributedError& e) {
    CHECK(e.rank() == rank);
    for (const std::string& part : parts) CHECK_THAT(std::string(e.what()), Catch::Matchers::Contains(part));
  }
}

inline std::shared_ptr<const ShardDistribution> world() { return std::make_shared<mpi::MpiShardDistribution>(); }

// The paper's shape, scaled down: 4 shards of 10 per batch of 40, so 1-4 processes split the
// shards differently (3 processes: 1 + 1 + 2).
struct Workload {
  MlpArchitecture arch{{16, 12, 12, 5}, Activation::Tanh};
  std::shared_ptr<const Dataset> train = std::make_shared<const Dataset>(syntheticData(200, 16, 5, 1));
  MlpLoss valid{arch, syntheticData(80, 16, 5, 2)};
  MlpObjective single{arch, train, SeededBatches(3, 200, 40)};
  MlpObjective shared{arch, train, SeededBatches(3, 200, 40)};
  Workload() {
    single.setShardSize(10);
    shared.setShardSize(10);
    shared.setShardDistribution(world());
  }
};

}  // namespace mpitest
