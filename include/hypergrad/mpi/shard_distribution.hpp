// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file mpi/shard_distribution.hpp
/// \brief MpiShardDistribution: the shards of every batch shared among the processes of an MPI
/// communicator, with results bit-identical to one process (parallel/shard_distribution.hpp).
///
/// Part of the optional MPI component (CMake target hypergrad::mpi, which links MPI::MPI_CXX; the
/// core library does not depend on MPI). Only MPI's C API is used.
///
/// **Use.** After MPI_Init_thread, every process builds the same objective and calls
/// `objective.setShardDistribution(std::make_shared<hypergrad::mpi::MpiShardDistribution>())`;
/// the rest of the program is the single-process one (each process runs the optimizer and the
/// reverse pass on the same gradients, so their states stay identical). Destroy the distribution
/// (and the objectives sharing it) before MPI_Finalize. MPI is called only from the thread that
/// calls the objective, never from its OpenMP threads: when that is the thread that initialised
/// MPI, `MPI_Init_thread(..., MPI_THREAD_FUNNELED, ...)` suffices (MPI_Init in a program without
/// threads).
///
/// **Errors outside the objective.** The objective's calls turn a failure on one process into
/// the same DistributedError everywhere. An exception thrown on one process only, outside those
/// calls (say, while reading its data before the first exchange), leaves the others waiting in
/// their next collective: catch it and call MPI_Abort, or agree first (requireSame).
///
/// **Messages per exchange.** agree(): one MPI_Allgather of a 5-integer header per process
/// (failure flag, batch, shard count, row width, input fingerprint); when a process failed, one
/// MPI_Bcast of the lowest failing rank's error text. Then the values: one MPI_Allgatherv
/// (allGatherValues, allGatherShards) or MPI_Alltoallv (allToAllValues) of doubles; counts
/// beyond int's range are refused (InvalidArgument).

#include <mpi.h>

#include <cstdint>
#include <exception>
#include <limits>
#include <string>
#include <vector>

#include "../errors.hpp"
#include "../parallel/shard_distribution.hpp"

namespace hypergrad {
namespace mpi {

/// \brief The shards of every batch shared among the processes of an MPI communicator (see the
/// file comment and ShardDistribution).
///
/// Holds its own duplicate of the communicator, so that its collectives never match messages of
/// the caller's. Not copyable; share it through a std::shared_ptr (objectives copy the pointer).
class MpiShardDistribution final : public ShardDistribution {
 public:
  /// \param comm the processes that share the shards (collective over comm: MPI_Comm_dup)
  /// \throws InvalidState when MPI is not initialised, or already finalised; InvalidArgument for
  ///         MPI_COMM_NULL
  explicit MpiShardDistribution(MPI_Comm comm = MPI_COMM_WORLD) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized == 0 || finalized != 0) {
      throw InvalidState("MpiShardDistribution: MPI is not initialised (or already finalised); call MPI_Init "
                         "first and keep MPI running while the distribution is in use");
    }
    if (comm == MPI_COMM_NULL) {
      throw InvalidArgument("MpiShardDistribution: the communicator is MPI_COMM_NULL; pass the communicator of the "
                            "processes that share the shards (e.g. MPI_COMM_WORLD)");
    }
    check(MPI_Comm_dup(comm, &m_comm), "MPI_Comm_dup");
    // Errors come back as codes (typed exceptions here) instead of aborting every process.
    MPI_Comm_set_errhandler(m_comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(m_comm, &m_rank);
    MPI_Comm_size(m_comm, &m_size);
  }
  ~MpiShardDistribution() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized == 0) MPI_Comm_free(&m_comm);
  }
  MpiShardDistribution(const MpiShardDistribution&) = delete;
  MpiShardDistribution& operator=(const MpiShardDistribution&) = delete;

  int rank() const noexcept override { return m_rank; }
  int numProcesses() const noexcept override { return m_size; }
  /// The distribution's own communicator (a duplicate of the one it was built with).
  MPI_Comm communicator() const noexcept { return m_comm; }
  /// Bytes of shard rows this process has received (its own rows not counted) since construction.
  std::uint64_t bytesReceived() const noexcept { return m_bytesReceived; }
  /// Exchanges (agree() calls: one per exchange of values) since construction.
  std::uint64_t numExchanges() const noexcept { return m_exchanges; }

  void agree(const ShardExchangeHeader& header, const std::exception_ptr& localError) const override {
    ++m_exchanges;
    // 1. Every process's header and failure flag.
    const std::int64_t mine[5] = {localError ? 1 : 0, header.batch, header.numShards, header.width,
                                  static_cast<std::int64_t>(header.inputs)};
    std::vector<std::int64_t> every(5 * static_cast<std::size_t>(m_size));
    check(MPI_Allgather(mine, 5, MPI_INT64_T, every.data(), 5, MPI_INT64_T, m_comm), "MPI_Allgather");
    auto field = [&](int r, int k) { return every[5 * static_cast<std::size_t>(r) + static_cast<std::size_t>(k)]; };

    // 2. A failure anywhere: the lowest failing rank's error, on every process.
    for (int r = 0; r < m_size; ++r) {
      if (field(r, 0) == 0) continue;
      std::string text = r == m_rank ? detail::describeError(localError) : std::string();
      long long length = static_cast<long long>(text.size());
      check(MPI_Bcast(&length, 1, MPI_LONG_LONG, r, m_comm), "MPI_Bcast");
      text.resize(static_cast<std::size_t>(length));
      check(MPI_Bcast(text.data(), static_cast<int>(length), MPI_CHAR, r, m_comm), "MPI_Bcast");
      throw DistributedError(detail::message("MPI rank ", r, " of ", m_size, " failed ", header.operation, " t = ",
                                             field(r, 1), ": ", text),
                             r);
    }

    // 3. The same batch, shards, width and inputs everywhere.
    for (int r = 1; r < m_size; ++r) {
      for (int k = 1; k < 5; ++k) {
        if (field(r, k) == field(0, k)) continue;
        static const char* const names[5] = {"", "batch", "number of shards", "row width",
                                             "input fingerprint (of w, u, the batch's examples and the data)"};
        throw DistributedError(
            detail::message("MPI ranks disagree on a shard exchange: the ", names[k], " is ", field(0, k),
                            " on rank 0 but ", field(r, k), " on rank ", r, " (batch t = ", field(0, 1),
                            "). Every process must build its objective from the same data, batch schedule and shard "
                            "size, and run the same schedules, seeds and initial weights, so that their weights stay "
                            "identical"),
            -1);
      }
    }
  }

  void allGatherValues(const double* local, const Index* counts, double* all) const override {
    std::vector<int> c(static_cast<std::size_t>(m_size)), displs(static_cast<std::size_t>(m_size));
    offsets(counts, c, displs, "MPI_Allgatherv");
    check(MPI_Allgatherv(local, c[static_cast<std::size_t>(m_rank)], MPI_DOUBLE, all, c.data(), displs.data(),
                         MPI_DOUBLE, m_comm),
          "MPI_Allgatherv");
    m_bytesReceived += static_cast<std::uint64_t>(displs.back() + c.back() - c[static_cast<std::size_t>(m_rank)]) *
                       sizeof(double);
  }

  void allToAllValues(const double* send, const Index* sendCounts, double* recv,
                      const Index* recvCounts) const override {
    std::vector<int> sc(static_cast<std::size_t>(m_size)), sd(sc.size()), rc(sc.size()), rd(sc.size());
    offsets(sendCounts, sc, sd, "MPI_Alltoallv");
    offsets(recvCounts, rc, rd, "MPI_Alltoallv");
    check(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_DOUBLE, recv, rc.data(), rd.data(), MPI_DOUBLE, m_comm),
          "MPI_Alltoallv");
    m_bytesReceived += static_cast<std::uint64_t>(rd.back() + rc.back() - rc[static_cast<std::size_t>(m_rank)]) *
                       sizeof(double);
  }

  void requireSame(const std::string& what, std::uint64_t value) const override {
    std::vector<std::uint64_t> every(static_cast<std::size_t>(m_size));
    check(MPI_Allgather(&value, 1, MPI_UINT64_T, every.data(), 1, MPI_UINT64_T, m_comm), "MPI_Allgather");
    for (int r = 1; r < m_size; ++r) {
      if (every[static_cast<std::size_t>(r)] == every[0]) continue;
      throw DistributedError(detail::message("MPI ranks disagree on ", what, ": rank ", r, " differs from rank 0 (",
                                             "fingerprints ", every[static_cast<std::size_t>(r)], " and ", every[0],
                                             "). Every process must run the same configuration"),
                             -1);
    }
  }

 private:
  // MPI's int counts and displacements from Index counts; InvalidArgument beyond int's range.
  void offsets(const Index* counts, std::vector<int>& c, std::vector<int>& displs, const char* what) const {
    std::int64_t total = 0;
    for (int r = 0; r < m_size; ++r) {
      const auto k = static_cast<std::size_t>(r);
      if (counts[k] < 0 || total + counts[k] > std::numeric_limits<int>::max()) {
        throw InvalidArgument(detail::message("MpiShardDistribution: ", what, " of ", total + counts[k],
                                              " values exceeds MPI's int counts; use smaller shards or more processes"));
      }
      c[k] = static_cast<int>(counts[k]);
      displs[k] = static_cast<int>(total);
      total += counts[k];
    }
  }

  void check(int code, const char* what) const {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(code, text, &length);
    throw DistributedError(detail::message("MpiShardDistribution: ", what, " failed on rank ", m_rank, ": ",
                                           std::string(text, static_cast<std::size_t>(length))),
                           m_rank);
  }

  MPI_Comm m_comm = MPI_COMM_NULL;
  int m_rank = 0;
  int m_size = 1;
  mutable std::uint64_t m_bytesReceived = 0;
  mutable std::uint64_t m_exchanges = 0;
};

}  // namespace mpi
}  // namespace hypergrad
