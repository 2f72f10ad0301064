// SPDX-License-Identifier: MIT
#pragma once

/// \file batches.hpp
/// \brief Minibatch schedules: a pure function t -> example indices. The reverse pass recomputes
/// g_t and must see exactly the batch the forward pass saw, so no schedule may keep hidden state.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <numeric>
#include <vector>

#include "config.hpp"
#include "errors.hpp"
#include "random.hpp"

namespace hypergrad {

/// Any callable t -> indices of the examples in batch t (0-based t). Must be a pure function.
using BatchSchedule = std::function<std::vector<Index>(Index t)>;

/// The default schedule: batch t is `batchSize` distinct examples drawn from `numExamples`
/// with a counter-based generator keyed on (seed, t), returned in increasing order.
/// batchSize == numExamples gives the full batch every step.
class SeededBatches {
 public:
  /// Throws InvalidArgument unless 1 <= batchSize <= numExamples.
  SeededBatches(std::uint64_t seed, Index numExamples, Index batchSize)
      : m_seed(seed), m_numExamples(numExamples), m_batchSize(batchSize) {
    if (numExamples <= 0 || batchSize <= 0 || batchSize > numExamples) {
      throw InvalidArgument(detail::message("SeededBatches: batch size ", batchSize,
                                            " must be in [1, numExamples = ", numExamples, "]"));
    }
  }

  /// The sorted indices of batch t; the same (seed, t) gives the same batch in every pass.
  std::vector<Index> operator()(Index t) const {
    std::vector<Index> idx(static_cast<std::size_t>(m_numExamples));
    std::iota(idx.begin(), idx.end(), Index(0));
    if (m_batchSize == m_numExamples) return idx;
    CounterRng rng(m_seed, static_cast<std::uint64_t>(t));
    // Partial Fisher–Yates: the first batchSize slots become a uniform sample.
    for (Index i = 0; i < m_batchSize; ++i) {
      const Index j = i + static_cast<Index>(rng.below(static_cast<std::uint64_t>(m_numExamples - i)));
      std::swap(idx[static_cast<std::size_t>(i)], idx[static_cast<std::size_t>(j)]);
    }
    idx.resize(static_cast<std::size_t>(m_batchSize));
    std::sort(idx.begin(), idx.end());
    return idx;
  }

  std::uint64_t seed() const noexcept { return m_seed; }          ///< The generator key.
  Index numExamples() const noexcept { return m_numExamples; }  ///< Examples drawn from.
  Index batchSize() const noexcept { return m_batchSize; }      ///< Examples per batch.

 private:
  std::uint64_t m_seed;
  Index m_numExamples;
  Index m_batchSize;
};

}  // namespace hypergrad
