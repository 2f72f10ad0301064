// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file loss.hpp
/// \brief MlpLoss: the meta objective of a multilayer perceptron — full-batch mean softmax
/// cross-entropy on a data set (typically the validation set), its gradient, error rate and
/// predictions.
///
/// The examples are cut into shards by a ShardPlan and evaluated like MlpObjective's batches
/// (see "Shards and threads" in objectives/mlp/objective.hpp): the results depend on the shard
/// size, never on the number of threads. Like MlpObjective, an MlpLoss keeps mutable per-shard
/// workspaces: one object must not be called from several threads at once.

#include <algorithm>
#include <cstddef>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../../config.hpp"
#include "../../data/dataset.hpp"
#include "../../errors.hpp"
#include "../../layout.hpp"
#include "../../parallel/shard_plan.hpp"
#include "architecture.hpp"
#include "network.hpp"

namespace hypergrad {

/// \brief Meta objective: full-batch mean softmax cross-entropy of an MLP on a data set
/// (typically the validation set), plus error rate and predictions.
///
/// Satisfies the meta-objective concept. The examples are processed in shards of shardSize()
/// rows like MlpObjective's batches (same guarantees: parallel under OpenMP, independent of the
/// thread count). Not thread-safe (mutable workspaces).
///
/// Use it as hypergrad::MlpLoss (= BasicMlpLoss<double>). It is a template so that including
/// this header compiles none of the network (network.hpp): only code that uses one pays for it.
/// \tparam Scalar the compute type of the network (its matrices and products); the interface
///         (w, gradients, losses) is double. Only double is implemented.
template <class Scalar>
class BasicMlpLoss {
  static_assert(std::is_same_v<Scalar, double>,
                "BasicMlpLoss: only Scalar = double is implemented; use hypergrad::MlpLoss");
  using Network = detail::MlpNetwork<Scalar>;
  using Shard = detail::MlpShard<Scalar>;

 public:
  /// \param architecture network shape; input/output sizes must match the data
  /// \param data the examples the loss averages over (validated); moved in, not copied, when
  ///        passed as an rvalue
  BasicMlpLoss(MlpArchitecture architecture, Dataset data)
      : BasicMlpLoss(std::move(architecture), std::make_shared<const Dataset>(std::move(data))) {}

  /// \brief Shares the examples with their other users (e.g. an MlpObjective on the same data:
  /// `MlpLoss(arch, f.sharedData())`) instead of holding a copy.
  /// \param architecture network shape; input/output sizes must match the data
  /// \param data non-null; the data must not change while this loss uses it
  BasicMlpLoss(MlpArchitecture architecture, std::shared_ptr<const Dataset> data)
      : m_net(std::move(architecture)), m_data(std::move(data)) {
    if (!m_data) throw InvalidArgument("MlpLoss: the shared data set is null");
    detail::checkArchitectureFitsData(m_net.architecture(), *m_data, "MlpLoss");
  }

  Index numParameters() const noexcept { return m_net.architecture().numParameters(); }  ///< N.
  /// Parameter groups "layer1.weights", "layer1.biases", ...
  ParameterLayout layout() const { return m_net.architecture().layout(); }
  const MlpArchitecture& architecture() const noexcept { return m_net.architecture(); }  ///< The network.
  const Dataset& data() const noexcept { return *m_data; }  ///< The examples averaged over.
  /// The examples, shared (copies of this loss share them too).
  const std::shared_ptr<const Dataset>& sharedData() const noexcept { return m_data; }

  /// Examples per shard (default 50).
  Index shardSize() const noexcept { return m_shardSize; }
  /// \brief Sets the examples per shard (≥ 1).
  void setShardSize(Index shardSize) { m_shardSize = detail::checkShardSize(shardSize, "MlpLoss::setShardSize"); }

  /// \brief Mean cross-entropy over all examples.
  double value(const Eigen::VectorXd& w) const {
    detail::checkVectorSize(w, numParameters(), "MlpLoss::value", "w");
    return run(w, nullptr, nullptr);
  }

  /// \brief Returns the mean cross-entropy and sets g to its gradient.
  double valueAndGradient(const Eigen::VectorXd& w, Eigen::VectorXd& g) const {
    detail::checkVectorSize(w, numParameters(), "MlpLoss::valueAndGradient", "w");
    g.resize(numParameters());
    return run(w, &g, nullptr);
  }

  /// \brief Predicted class of every example (argmax of the logits; ties go to the lower class).
  Eigen::VectorXi predict(const Eigen::VectorXd& w) const {
    detail::checkVectorSize(w, numParameters(), "MlpLoss::predict", "w");
    Eigen::VectorXi out(m_data->numExamples());
    run(w, nullptr, &out);
    return out;
  }

  /// \brief Fraction of examples whose predicted class differs from the label.
  double errorRate(const Eigen::VectorXd& w) const {
    const Eigen::VectorXi pred = predict(w);
    Index wrong = 0;
    for (Index i = 0; i < pred.size(); ++i) wrong += (pred(i) != m_data->labels(i)) ? 1 : 0;
    return static_cast<double>(wrong) / static_cast<double>(pred.size());
  }

 private:
  double run(const Eigen::VectorXd& w, Eigen::VectorXd* g, Eigen::VectorXi* predictions) const {
    const Index n = m_data->numExamples();
    const ShardPlan plan(n, m_shardSize);
    const Index numShards = plan.numShards();
    const Index slots = std::min(numShards, detail::shardSlots());
    if (static_cast<Index>(m_shards.size()) < slots) m_shards.resize(static_cast<std::size_t>(slots));
    const double scale = 1.0 / static_cast<double>(n);
    double lossSum = 0.0;
    detail::runShardWaves(
        numShards, slots,
        [&](Index s, Index slot) {
          Shard& shard = m_shards[static_cast<std::size_t>(slot)];
          const Index begin = plan.begin(s);
          // The shard's examples are consecutive rows of the row-major inputs: read in place.
          const Index F = m_data->numFeatures();
          const typename Network::View input{m_data->inputs.data() + begin * F, plan.size(s), F, F, true};
          const int* labels = m_data->labels.data() + begin;
          shard.lossSum = m_net.forward(w.data(), input, labels, shard.ws);
          if (predictions != nullptr) Network::argmaxRows(shard.ws.z.back(), predictions->data() + begin);
          if (g == nullptr) return;
          typename Network::Outputs out;
          if (s == 0) {
            out.gradient = g->data();
          } else {
            shard.gradient.resize(numParameters());
            out.gradient = shard.gradient.data();
          }
          m_net.backward(w.data(), nullptr, input, labels, scale, shard.ws, out);
        },
        [&](Index s, Index slot) {
          const Shard& shard = m_shards[static_cast<std::size_t>(slot)];
          lossSum += shard.lossSum;
          if (s > 0 && g != nullptr) *g += shard.gradient;
        });
    return lossSum / static_cast<double>(n);
  }

  Network m_net;
  std::shared_ptr<const Dataset> m_data;  // never null; shared, read-only
  Index m_shardSize = defaultMlpShardSize;
  mutable std::vector<Shard> m_shards;
};

/// The meta objective of an MLP computed in double: see BasicMlpLoss.
using MlpLoss = BasicMlpLoss<double>;

}  // namespace hypergrad
