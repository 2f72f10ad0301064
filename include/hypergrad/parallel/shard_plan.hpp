// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file shard_plan.hpp
/// \brief ShardPlan, the fixed partition of a batch into shards, and the runners that evaluate
/// the shards in parallel and combine their results in a fixed order.
///
/// **Why shards (DESIGN.md §3).** Every result must be a pure function of the inputs, never of
/// the number of threads: the exactness of the reverse pass compares gradients bit for bit. A
/// sum split by thread (or a GEMM blocked by thread) rounds differently at another thread count.
/// So work over a batch of b items is cut into ⌈b / S⌉ consecutive shards of S items (the last
/// shard takes the remainder) — a partition that depends only on b and S. Each shard is
/// evaluated on its own, and the shard results are then added in shard order 0, 1, 2, ...: a
/// fixed summation order. The bits then depend on S (which changes the rounding of the sums)
/// and on nothing else.
///
/// **Runners** (in `detail`). When the code is compiled with OpenMP (`-fopenmp`, `_OPENMP`
/// defined) the shards run in a `#pragma omp parallel for`; without it they run one after the
/// other, with the same bits. Exceptions do not cross the parallel region: each shard's is kept
/// and the lowest shard's is rethrown, so the error reported is the same at any thread count.

#include <algorithm>
#include <cstddef>
#include <exception>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "../config.hpp"
#include "../errors.hpp"

namespace hypergrad {

namespace detail {

/// Throws InvalidArgument unless the shard size is at least 1; returns it.
inline Index checkShardSize(Index shardSize, const char* fn) {
  if (shardSize < 1) {
    throw InvalidArgument(detail::message(fn, ": shard size ", shardSize,
                                          " must be at least 1 (items per shard)"));
  }
  return shardSize;
}

}  // namespace detail

/// \brief The fixed partition of a batch of b items into ⌈b / S⌉ consecutive shards of S items;
/// the last shard takes the remainder.
///
/// Shard s holds the items [begin(s), begin(s) + size(s)) of the batch, in batch order. The
/// partition is a function of (b, S) only — never of the number of threads or processes — so
/// any evaluation that computes each shard on its own and adds the shard results in shard order
/// 0, 1, 2, ... gives the same bits however the shards are distributed. MlpObjective and MlpLoss
/// share their batches out this way among OpenMP threads; a distributed (MPI) evaluation can give
/// each rank some of the shards and combine the results in the same order, for results that are
/// bit-identical at any number of ranks.
class ShardPlan {
 public:
  /// \param numItems b ≥ 0, the items in the batch (0 gives no shard)
  /// \param shardSize S ≥ 1, the items per shard
  /// \throws InvalidArgument when b < 0 or S < 1
  ShardPlan(Index numItems, Index shardSize)
      : m_numItems(numItems), m_shardSize(detail::checkShardSize(shardSize, "ShardPlan")) {
    if (numItems < 0) {
      throw InvalidArgument(detail::message("ShardPlan: ", numItems, " items; the batch size must be >= 0"));
    }
  }

  /// Items in the batch, b.
  Index numItems() const noexcept { return m_numItems; }
  /// Items per shard, S (the last shard may hold fewer).
  Index shardSize() const noexcept { return m_shardSize; }
  /// Number of shards, ⌈b / S⌉.
  Index numShards() const noexcept { return (m_numItems + m_shardSize - 1) / m_shardSize; }
  /// Position in the batch of the first item of shard s, s·S.
  Index begin(Index s) const noexcept {
    HYPERGRAD_ASSERT(s >= 0 && s < numShards());
    return s * m_shardSize;
  }
  /// Items in shard s: S, or the remainder for the last shard.
  Index size(Index s) const noexcept {
    HYPERGRAD_ASSERT(s >= 0 && s < numShards());
    return std::min(m_shardSize, m_numItems - s * m_shardSize);
  }

 private:
  Index m_numItems;
  Index m_shardSize;
};

namespace detail {

/// Runs f(s) for s = 0 .. numShards−1, in parallel over OpenMP threads when compiled with
/// OpenMP. Exceptions do not cross the parallel region: each shard's is kept, and the one of the
/// lowest shard is rethrown afterwards (the same error whatever the thread count).
template <class F>
void forEachShard(Index numShards, F&& f) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(numShards));
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (numShards > 1)
#endif
  for (Index s = 0; s < numShards; ++s) {
    try {
      f(s);
    } catch (...) {
      errors[static_cast<std::size_t>(s)] = std::current_exception();
    }
  }
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

/// \brief Runs compute(s, slot) for every shard s in waves of at most maxSlots shards (slot =
/// s − first shard of the wave, in parallel within a wave), and after each wave combine(s, slot)
/// for its shards in increasing s. Only maxSlots shard workspaces and partial results are alive
/// at once, and since combine() always sees the shards in order 0, 1, 2, ..., the wave size (and
/// the thread count) does not change any bit of the result.
template <class Compute, class Combine>
void runShardWaves(Index numShards, Index maxSlots, Compute&& compute, Combine&& combine) {
  for (Index first = 0; first < numShards; first += maxSlots) {
    const Index count = std::min(maxSlots, numShards - first);
    forEachShard(count, [&](Index slot) { compute(first + slot, slot); });
    for (Index slot = 0; slot < count; ++slot) combine(first + slot, slot);
  }
}

/// Shards alive at once (workspaces and partial results): 16, or the OpenMP thread count if
/// larger. Memory, not results, depends on it.
inline Index shardSlots() noexcept {
#if defined(_OPENMP)
  return std::max<Index>(16, omp_get_max_threads());
#else
  return 16;
#endif
}

}  // namespace detail
}  // namespace hypergrad
