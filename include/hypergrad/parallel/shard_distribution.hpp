// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file shard_distribution.hpp
/// \brief ShardDistribution, the interface through which an objective shares the shards of its
/// batches among processes (data parallelism) with results bit-identical at any number of them.
///
/// **Why the results do not change with the number of processes.** A batch is cut by a ShardPlan
/// into shards that depend only on the batch and the shard size (shard_plan.hpp). Process p
/// evaluates the shards ownedShards(n) gives it — a contiguous range, by rank — and the
/// collective allGatherShards() then gives every process every shard's result row, so that each
/// process adds the shards in shard order 0, 1, 2, ..., exactly as one process does. Nothing is
/// pre-summed per process (a per-process partial sum would round differently for another
/// partition), so 1, 2, 3 or 64 processes give the bits of the single-process library, with no
/// change to its arithmetic. The price is communication: every process receives every shard's
/// row (numShards × width values), where a fixed-point integer reduction would move one row; for
/// a few shards per process (the paper's batch of 200 in shards of 50) the two are comparable.
///
/// **Failures.** A process whose shards throw still enters the collective, with its error: then
/// every process throws the same DistributedError, naming the lowest failing rank, the batch
/// and that rank's error (its type and message). So no process waits forever for a failed one,
/// and all of them leave the call together, their state unchanged. The collective also checks
/// that all processes evaluate the same batch with the same shards, row width and inputs (a
/// fingerprint of w, u, the batch's example indices and the data), and throws DistributedError
/// (rank −1) on every process if not (different schedules, seeds, data or shard sizes).
/// Argument errors (a w of the wrong size) are thrown before the collective, alike on every
/// process, since every process passes the same arguments.
///
/// The MPI implementation is hypergrad::mpi::MpiShardDistribution (<hypergrad/mpi.hpp>,
/// target hypergrad::mpi); this header does not depend on MPI.

#include <algorithm>
#include <cstdint>
#include <exception>
#include <string>
#include <typeinfo>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"

namespace hypergrad {

/// The shards [first, last) of a batch that one process evaluates.
struct ShardRange {
  Index first = 0;  ///< The first shard.
  Index last = 0;   ///< One past the last shard.
  /// Number of shards in the range.
  Index count() const noexcept { return last - first; }
};

/// What each process contributes to a shard exchange (allGatherShards): the batch it evaluated,
/// the shape of its result rows, and its failure, if any.
struct ShardExchangeHeader {
  Index batch = 0;      ///< The batch t (checked to agree, and named in errors).
  Index numShards = 0;  ///< Shards of the batch (checked to agree).
  Index width = 0;      ///< Values per shard row (checked to agree).
  /// A fingerprint of the evaluation's inputs (w, and u when given; fingerprint.hpp), checked to
  /// agree: processes whose weights have drifted apart (different schedules, seeds or initial
  /// weights) are stopped at their first exchange instead of combining unrelated results.
  std::uint64_t inputs = 0;
  /// What the processes were doing, for the error message "rank r failed <operation> t = <batch>".
  const char* operation = "evaluating its shards of batch";
};

/// \brief One contiguous slice of the parameter vector per process: the sharded optimizer state
/// (parallel/sharded_optimizer.hpp). The cuts are at multiples of an alignment — the information
/// buffer's block size, which is also the unit of the reverse pass's schedule sums — so that each
/// process's buffer blocks and sum blocks are the single process's own; process r
/// owns alignment units ⌊r·U/P⌋ to ⌊(r+1)·U/P⌋ of the U = ⌈N / alignment⌉ (some own none when
/// U < P).
class ParameterSlicing {
 public:
  ParameterSlicing() = default;
  /// \throws InvalidArgument unless numParameters ≥ 1, alignment ≥ 1 and numProcesses ≥ 1
  ParameterSlicing(Index numParameters, Index alignment, int numProcesses)
      : m_n(numParameters), m_alignment(alignment), m_processes(numProcesses) {
    if (numParameters < 1 || alignment < 1 || numProcesses < 1) {
      throw InvalidArgument(detail::message("ParameterSlicing: ", numParameters, " parameters, alignment ", alignment,
                                            ", ", numProcesses, " processes; each must be at least 1"));
    }
  }
  Index numParameters() const noexcept { return m_n; }  ///< N.
  Index alignment() const noexcept { return m_alignment; }  ///< Elements per unit; slices start at multiples of it.
  int numProcesses() const noexcept { return m_processes; }  ///< P.
  /// The first element of process r's slice.
  Index begin(int r) const noexcept { return std::min(m_n, unitsBefore(r) * m_alignment); }
  /// One past the last element of process r's slice.
  Index end(int r) const noexcept { return begin(r + 1); }
  /// The number of elements process r owns.
  Index size(int r) const noexcept { return end(r) - begin(r); }

 private:
  Index unitsBefore(int r) const noexcept {
    const Index units = (m_n + m_alignment - 1) / m_alignment;
    return static_cast<Index>(r) * units / m_processes;
  }
  Index m_n = 0, m_alignment = 1;
  int m_processes = 1;
};

/// \brief How the shards of a batch are shared among processes (see the file comment).
///
/// Implementations provide the process count, the rank, and the collective allGatherShards();
/// the partition of the shards (ownedShards) is fixed here, so that every implementation gives
/// the same shards to the same rank.
class ShardDistribution {
 public:
  virtual ~ShardDistribution() = default;

  /// This process's index, 0 ≤ rank() < numProcesses().
  virtual int rank() const noexcept = 0;
  /// The number of processes sharing the shards.
  virtual int numProcesses() const noexcept = 0;

  /// The shards of an n-shard batch that process `rank` evaluates: ⌊rank·n/P⌋ to
  /// ⌊(rank+1)·n/P⌋ (contiguous; empty for some ranks when n < P).
  static ShardRange shardsOf(Index numShards, int rank, int numProcesses) noexcept {
    const Index p = numProcesses, r = rank;
    return {r * numShards / p, (r + 1) * numShards / p};
  }
  /// The shards of an n-shard batch that this process evaluates.
  ShardRange ownedShards(Index numShards) const noexcept { return shardsOf(numShards, rank(), numProcesses()); }

  /// \brief Collective (every process calls it): the agreement that precedes every exchange.
  /// Each process brings its header and its failure, if any.
  /// \throws DistributedError on every process when any process failed (naming the lowest
  ///         failing rank, header.operation, the batch and that rank's error with its type) or
  ///         when the headers' batch, shard count, width or inputs differ (rank −1)
  virtual void agree(const ShardExchangeHeader& header, const std::exception_ptr& localError) const = 0;

  /// \brief Collective, after agree(): process r contributes counts[r] values (`local`); every
  /// process receives all of them in rank order (`all`, Σ counts values). `counts` is the same
  /// on every process.
  virtual void allGatherValues(const double* local, const Index* counts, double* all) const = 0;

  /// The most values one process may send or receive in one exchange (MPI's int counts); an
  /// objective checks its counts against it before the agreement, so that an exchange too large
  /// for one process fails on every process.
  static constexpr Index maxValuesPerExchange = 2147483647;

  /// \brief Collective, after agree(): process p sends sendCounts[q] values to each process q
  /// (`send`: q's values after those of processes before q) and receives recvCounts[p] values
  /// from each process p (`recv`, in rank order). sendCounts[q] on p equals recvCounts[p] on q.
  virtual void allToAllValues(const double* send, const Index* sendCounts, double* recv,
                              const Index* recvCounts) const = 0;

  /// \brief Collective: every process's slice of a vector (`slice`, slicing.size(rank()) values)
  /// gathered into the whole (`whole`, resized to N) on every process — agree(), then
  /// allGatherValues(). `localError` is this process's failure (then `slice` is unread).
  void allGatherSlices(const ShardExchangeHeader& header, const ParameterSlicing& slicing, const Eigen::VectorXd& slice,
                       Eigen::VectorXd& whole, std::exception_ptr localError) const {
    std::vector<Index> counts(static_cast<std::size_t>(numProcesses()));
    try {  // a failed allocation is this process's failure, told to the others
      for (int r = 0; r < numProcesses(); ++r) counts[static_cast<std::size_t>(r)] = slicing.size(r);
      whole.resize(slicing.numParameters());
    } catch (...) {
      if (!localError) localError = std::current_exception();
    }
    agree(header, localError);
    allGatherValues(slice.data(), counts.data(), whole.data());
  }

  /// \brief Collective (every process calls it, with the same header): gives every process every
  /// shard's row — agree(), then allGatherValues() of the rows.
  /// \param header the batch, its number of shards and the row width (the same on every process)
  /// \param local this process's rows, ownedShards(numShards).count() × width values, row by row
  /// \param all receives numShards × width values: shard s's row at s·width
  /// \param localError this process's failure (null if its shards succeeded; `local` is then unread)
  /// \throws DistributedError on every process when any process failed (the lowest failing rank's
  ///         error) or the headers differ; nothing is written to `all` then
  void allGatherShards(const ShardExchangeHeader& header, const double* local, double* all,
                       const std::exception_ptr& localError) const {
    agree(header, localError);
    std::vector<Index> counts(static_cast<std::size_t>(numProcesses()));
    for (int r = 0; r < numProcesses(); ++r)
      counts[static_cast<std::size_t>(r)] = shardsOf(header.numShards, r, numProcesses()).count() * header.width;
    allGatherValues(local, counts.data(), all);
  }

  /// \brief Collective: checks that every process passes the same `value` — a fingerprint of
  /// something that must agree, e.g. `opt.schedules().fingerprint()`, `fingerprint(w1.data(),
  /// w1.size())` or a data set's — so that a mismatch is reported before training starts rather
  /// than at the first exchange that sees its effect.
  /// \param what names the value in the error ("the schedules")
  /// \param value this process's fingerprint of it
  /// \throws DistributedError (rank −1) on every process when the values differ, naming the first
  ///         process whose value differs from rank 0's
  virtual void requireSame(const std::string& what, std::uint64_t value) const = 0;
};

namespace detail {

/// "Type: message" of an exception, for an error to be reported by another process.
inline std::string describeError(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const InvalidArgument& x) {
    return message("InvalidArgument: ", x.what());
  } catch (const NonFiniteValue& x) {
    return message("NonFiniteValue: ", x.what());
  } catch (const FixedPointOverflow& x) {
    return message("FixedPointOverflow: ", x.what());
  } catch (const ExactnessViolation& x) {
    return message("ExactnessViolation: ", x.what());
  } catch (const InvalidState& x) {
    return message("InvalidState: ", x.what());
  } catch (const DataError& x) {
    return message("DataError: ", x.what());
  } catch (const DistributedError& x) {
    return message("DistributedError: ", x.what());
  } catch (const Error& x) {
    return message("Error: ", x.what());
  } catch (const std::exception& x) {
    return message(typeid(x).name(), ": ", x.what());
  } catch (...) {
    return "an exception not derived from std::exception";
  }
}

}  // namespace detail
}  // namespace hypergrad
