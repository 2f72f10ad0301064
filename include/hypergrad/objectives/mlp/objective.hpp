// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file objective.hpp
/// \brief MlpObjective: the training objective of a multilayer perceptron — mean softmax
/// cross-entropy over minibatch t, its gradient, Hessian-vector product (Pearlmutter's
/// R-operator) and, optionally with the training inputs as hyperparameters, mixed product.
///
/// **Shards and threads (DESIGN.md §3).** Every result is a pure function of (w, θ, t) and of
/// the shard size — never of the number of threads. A batch of b examples (the rows of the
/// batch in the order the batch schedule returns them) is cut by a ShardPlan
/// (parallel/shard_plan.hpp) into ⌈b / S⌉ consecutive shards of S = shardSize() examples
/// (default 50, set with setShardSize(); the last shard takes the remainder). Each shard runs its
/// own forward / R-forward / backward / R-backward sweep in its own workspace with
/// single-threaded GEMMs (objectives/mlp/network.hpp), and the shard results (loss, gradient,
/// Hessian-vector product, mixed product) are then added in shard order 0, 1, 2, ... — a fixed
/// summation order. Under OpenMP the shards run in parallel; without it one after the other,
/// with the same bits.
///
/// The shard size changes the rounding of the sums, hence the bits: it must be the same in the
/// forward and the reverse pass (SgdMomentum's gradient fingerprint reports a change). Results
/// for one shard size are identical at any thread count, but differ in the last bits from those
/// for another shard size. Small shards expose more parallelism, large ones make larger (more
/// efficient) GEMMs; 50 suits the paper's batch of 200 on up to 4 threads.
///
/// Each output (gradient, Hessian-vector product, mixed product) is computed by the same
/// sequence of operations whether it is requested alone or together with the others, so
/// `reverseStep` is bit-identical to the three separate calls.
///
/// **Processes (data parallelism).** With setShardDistribution() (e.g. an MPI one,
/// <hypergrad/mpi.hpp>) each process evaluates only its own shards of every batch, and the
/// shards' results are exchanged and added in the same shard order on every process: the results
/// are bit-identical to the single-process ones at any number of processes and threads
/// (parallel/shard_distribution.hpp). Every call is then collective.
///
/// **Thread safety.** MlpObjective keeps mutable per-shard workspaces so the hot path does not
/// allocate; one object must therefore not be called from several threads at once (use one copy
/// per thread). The object parallelises internally over shards.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../../batches.hpp"
#include "../../config.hpp"
#include "../../data/dataset.hpp"
#include "../../errors.hpp"
#include "../../layout.hpp"
#include "../../objective.hpp"
#include "../../exact/fingerprint.hpp"
#include "../../parallel/shard_distribution.hpp"
#include "../../parallel/shard_plan.hpp"
#include "../../random.hpp"
#include "architecture.hpp"
#include "network.hpp"

namespace hypergrad {

/// \brief Training objective: mean softmax cross-entropy of an MLP over minibatch t.
///
/// Satisfies the objective concept (objective.hpp). Hyperparameters θ: none by default; with
/// `inputsAreHyperparameters` θ is the training inputs, flattened **example-major** (row-major):
/// θ[k·numFeatures + j] = inputs(k, j), so example k's features are contiguous. The mixed
/// product then has numExamples·numFeatures entries, non-zero only in the rows of batch t —
/// meant for small learned training sets (e.g. 10 images), since the output is dense.
///
/// The batch is processed in shards of shardSize() examples, in parallel under OpenMP, with
/// results that do not depend on the number of threads (file comment). Not thread-safe: calls
/// share mutable workspaces (one object per thread). Output vectors must not alias w or u.
///
/// Use it as hypergrad::MlpObjective (= BasicMlpObjective<double>). It is a template so that
/// including this header compiles none of the network (network.hpp): only code that uses one
/// pays for it.
///
/// **float32 compute** (`MlpObjectiveFloat` = BasicMlpObjective<float>): the network's matrices,
/// products and activations are float — about twice the SIMD width, half the memory traffic —
/// while the interface stays double: w and u are rounded to float on entry, each shard's gradient,
/// Hessian-vector product and mixed product are converted to double and added in shard order, in
/// double. Everything stays a deterministic function of (w, θ, t) and the shard size, so the
/// optimizer's fixed-point state and its reversal are exactly as with double; the hypergradients
/// are then the exact derivatives of the recurrence with the float-computed gradient, which
/// differs from the double one by float rounding (about 1e-6 relative per gradient; see
/// tests/objectives/test_mlp.cpp and benchmarks/README.md for the agreement of whole hypergradients).
/// \tparam Scalar the compute type of the network: double or float. The interface (w, u,
///         gradients, losses, θ) is double either way.
template <class Scalar>
class BasicMlpObjective {
  static_assert(std::is_same_v<Scalar, double> || std::is_same_v<Scalar, float>,
                "BasicMlpObjective: Scalar must be double (MlpObjective) or float (MlpObjectiveFloat)");
  using Network = detail::MlpNetwork<Scalar>;
  using Workspace = detail::MlpWorkspace<Scalar>;
  using Shard = detail::MlpShard<Scalar>;
  using ComputeVector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

 public:
  /// \param architecture network shape; its input/output sizes must match the data
  /// \param train training data (validated: sizes, labels, finite inputs); moved in, not copied,
  ///        when passed as an rvalue
  /// \param batches t -> indices of the examples in batch t (pure function, e.g. SeededBatches)
  /// \param inputsAreHyperparameters treat the training inputs as θ
  BasicMlpObjective(MlpArchitecture architecture, Dataset train, BatchSchedule batches,
                    bool inputsAreHyperparameters = false)
      : BasicMlpObjective(std::move(architecture), std::make_shared<const Dataset>(std::move(train)),
                          std::move(batches), inputsAreHyperparameters) {}

  /// \brief Shares the training data with its other users instead of holding a copy: copies of
  /// this objective, an MlpLoss built from sharedData(), the caller. The objective reads the data
  /// only; setHyperparameters() (inputs as θ) gives this objective a fresh copy first, so the
  /// other users never see a change.
  /// \param architecture network shape; its input/output sizes must match the data
  /// \param train non-null; the data must not be changed through another pointer while in use
  /// \param batches t -> indices of the examples in batch t (pure function)
  /// \param inputsAreHyperparameters treat the training inputs as θ
  BasicMlpObjective(MlpArchitecture architecture, std::shared_ptr<const Dataset> train, BatchSchedule batches,
                    bool inputsAreHyperparameters = false)
      : m_net(std::move(architecture)),
        m_data(std::move(train)),
        m_batches(std::move(batches)),
        m_inputsAreHyperparameters(inputsAreHyperparameters) {
    if (!m_data) throw InvalidArgument("MlpObjective: the shared training data set is null");
    detail::checkArchitectureFitsData(m_net.architecture(), *m_data, "MlpObjective");
    if (!m_batches) throw InvalidArgument("MlpObjective: the batch schedule is empty (no callable)");
  }

  /// Number of parameters N.
  Index numParameters() const noexcept { return m_net.architecture().numParameters(); }
  /// numExamples·numFeatures when the inputs are hyperparameters, else 0.
  Index numHyperparameters() const noexcept {
    return m_inputsAreHyperparameters ? m_data->numExamples() * m_data->numFeatures() : 0;
  }
  /// Parameter groups "layer1.weights", "layer1.biases", ...
  ParameterLayout layout() const { return m_net.architecture().layout(); }
  const MlpArchitecture& architecture() const noexcept { return m_net.architecture(); }  ///< The network.
  const Dataset& data() const noexcept { return *m_data; }  ///< The training examples.
  /// The training examples, shared: pass it to MlpLoss to evaluate on the same data without a copy.
  const std::shared_ptr<const Dataset>& sharedData() const noexcept { return m_data; }
  const BatchSchedule& batches() const noexcept { return m_batches; }  ///< t → the examples of batch t.
  /// True when θ is the training inputs (numHyperparameters() = numExamples·numFeatures).
  bool inputsAreHyperparameters() const noexcept { return m_inputsAreHyperparameters; }

  /// Examples per shard (default 50). Results depend on it (rounding), never on the thread count.
  Index shardSize() const noexcept { return m_shardSize; }
  /// \brief Sets the examples per shard (≥ 1). Keep it fixed between a forward and its reverse pass.
  void setShardSize(Index shardSize) { m_shardSize = detail::checkShardSize(shardSize, "MlpObjective::setShardSize"); }

  /// \brief Shares the shards of every batch among processes (file comment, "Processes"); null
  /// (the default) evaluates every shard here. The results do not change (same bits), only who
  /// computes them: every process must hold an objective built from the same architecture, data,
  /// batch schedule and shard size, and call its functions in the same order with the same
  /// arguments — each call is collective. A failure on any process (a throwing batch schedule,
  /// drifting weights) makes every process throw the same DistributedError. Copies of the
  /// objective share the distribution; MlpLoss (the meta objective) is not distributed.
  void setShardDistribution(std::shared_ptr<const ShardDistribution> distribution) {
    m_distribution = std::move(distribution);
  }
  /// The shard distribution set by setShardDistribution(), or null (single process).
  const std::shared_ptr<const ShardDistribution>& shardDistribution() const noexcept { return m_distribution; }

  /// θ's named blocks: one block "inputs" when the inputs are hyperparameters, else none.
  ParameterLayout hyperparameterLayout() const {
    return m_inputsAreHyperparameters ? ParameterLayout::single(numHyperparameters(), "inputs") : ParameterLayout();
  }

  /// \brief θ: the training inputs flattened example-major (size 0 unless inputs are hyperparameters).
  Eigen::VectorXd hyperparameters() const {
    if (!m_inputsAreHyperparameters) return Eigen::VectorXd(numHyperparameters());
    // Built from the inputs directly: no resize of a sized vector (GCC 12 warned of a use after
    // free inside Eigen's resize there, a false positive).
    return Eigen::Map<const Eigen::VectorXd>(m_data->inputs.data(), m_data->numExamples() * m_data->numFeatures());
  }

  /// \brief Replaces the training inputs by θ (example-major, see the class comment).
  /// \param theta numExamples·numFeatures finite values
  void setHyperparameters(const Eigen::VectorXd& theta) {
    if (!m_inputsAreHyperparameters) {
      throw InvalidArgument(
          "MlpObjective::setHyperparameters: this objective has no hyperparameters; construct it with "
          "inputsAreHyperparameters = true to learn the training inputs");
    }
    if (theta.size() != numHyperparameters()) {
      throw InvalidArgument(detail::message("MlpObjective::setHyperparameters: theta has ", theta.size(),
                                            " entries, expected numExamples*numFeatures = ", numHyperparameters()));
    }
    const Index F = m_data->numFeatures();
    for (Index i = 0; i < theta.size(); ++i) {
      if (!std::isfinite(theta(i))) {
        throw InvalidArgument(detail::message("MlpObjective::setHyperparameters: theta[", i, "] (example ", i / F,
                                              ", feature ", i % F, ") is ", theta(i), "; inputs must be finite"));
      }
    }
    // Copy on write: the data may be shared with copies of this objective or an MlpLoss.
    auto fresh = std::make_shared<Dataset>(*m_data);
    fresh->inputs = Eigen::Map<const Dataset::InputMatrix>(theta.data(), fresh->numExamples(), F);
    m_data = std::move(fresh);
    ++m_dataVersion;
  }

  /// \brief The minibatch loss L(w, θ, t).
  double value(const Eigen::VectorXd& w, Index t) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::value", "w");
    return run(w, t, nullptr, nullptr, nullptr, nullptr, "value");
  }

  /// \brief g = ∇_w L(w, θ, t); deterministic (bit-identical for identical inputs, at any
  /// number of threads).
  void gradient(const Eigen::VectorXd& w, Index t, Eigen::VectorXd& g) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::gradient", "w");
    run(w, t, nullptr, &g, nullptr, nullptr, "gradient");
  }

  /// \brief Returns L(w, θ, t) and sets g = ∇_w L(w, θ, t) from one pass: g bit-identical to
  /// gradient(), the loss to value().
  double valueAndGradient(const Eigen::VectorXd& w, Index t, Eigen::VectorXd& g) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::valueAndGradient", "w");
    return run(w, t, nullptr, &g, nullptr, nullptr, "valueAndGradient");
  }

  /// \brief hu = ∇²_w L(w, θ, t) u by Pearlmutter's R-operator.
  void hessianVectorProduct(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& hu) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::hessianVectorProduct", "w");
    detail::checkVectorSize(u, numParameters(), "MlpObjective::hessianVectorProduct", "u");
    run(w, t, &u, nullptr, &hu, nullptr, "hessianVectorProduct");
  }

  /// \brief dtheta = (∂_θ ∇_w L(w, θ, t))ᵀ u: with inputs as hyperparameters, the gradient of
  /// uᵀ∇_w L with respect to the inputs (zero outside batch t); size 0 otherwise.
  void mixedProduct(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& dtheta) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::mixedProduct", "w");
    detail::checkVectorSize(u, numParameters(), "MlpObjective::mixedProduct", "u");
    if (!m_inputsAreHyperparameters) {
      dtheta.resize(0);
      return;
    }
    run(w, t, &u, nullptr, nullptr, &dtheta, "mixedProduct");
  }

  /// \brief Gradient, Hessian-vector product and mixed product from one forward + R-forward and
  /// one backward + R-backward pass per shard; bit-identical to the three separate calls.
  void reverseStep(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& g,
                   Eigen::VectorXd& hu, Eigen::VectorXd& dtheta) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::reverseStep", "w");
    detail::checkVectorSize(u, numParameters(), "MlpObjective::reverseStep", "u");
    if (!m_inputsAreHyperparameters) dtheta.resize(0);
    run(w, t, &u, &g, &hu, m_inputsAreHyperparameters ? &dtheta : nullptr, "reverseStep");
  }

  /// \brief The reverse step of a rule whose Hessian direction needs g (Adam, RMSprop): g, then
  /// `direction(g, u)` fills u, then H u and the mixed product along it. One forward and one
  /// backward pass per shard serve both (the R-passes reuse the activations and the backward
  /// chain, which stay in the shards' workspaces: every shard of the batch is alive at once); the
  /// results are bit-identical to gradient(), then hessianVectorProduct() and mixedProduct().
  void reverseStepWithDirection(const Eigen::VectorXd& w, Index t, const DirectionFunction& direction,
                                Eigen::VectorXd& u, Eigen::VectorXd& g, Eigen::VectorXd& hu,
                                Eigen::VectorXd& dtheta) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::reverseStepWithDirection", "w");
    const char* fn = "reverseStepWithDirection";
    if (m_distribution) {
      reverseStepWithDirectionDistributed(w, t, direction, u, g, hu, dtheta);
      return;
    }
    gatherIndices(t, fn);
    const Index N = numParameters();
    const auto b = static_cast<Index>(m_batchIndex.size());
    const ShardPlan plan(b, m_shardSize);
    const Index numShards = plan.numShards();
    if (static_cast<Index>(m_shards.size()) < numShards) m_shards.resize(static_cast<std::size_t>(numShards));
    const Scalar scale = Scalar(1) / static_cast<Scalar>(b);
    const Scalar* wc = computeCopy(w, m_wCompute);
    g.resize(N);
    detail::runShardWaves(
        numShards, numShards,
        [&](Index s, Index slot) {
          Shard& shard = m_shards[static_cast<std::size_t>(slot)];
          typename Network::Outputs out;
          out.gradient = shardOutput(s, g, shard.gradient);
          sweepShard(plan, s, shard, wc, nullptr, scale, out);
        },
        [&](Index s, Index slot) { accumulate(s, g, m_shards[static_cast<std::size_t>(slot)].gradient); });
    direction(g, u);
    detail::checkVectorSize(u, N, "MlpObjective::reverseStepWithDirection", "the direction u");
    const Scalar* uc = computeCopy(u, m_uCompute);
    hu.resize(N);
    if (m_inputsAreHyperparameters) {
      dtheta.resize(numHyperparameters());
      dtheta.setZero();
    } else {
      dtheta.resize(0);
    }
    detail::runShardWaves(
        numShards, numShards,
        [&](Index s, Index slot) {
          Shard& shard = m_shards[static_cast<std::size_t>(slot)];
          resweepShard(shard, wc, uc, scale, shardOutput(s, hu, shard.hvp));
        },
        [&](Index s, Index slot) {
          const Shard& shard = m_shards[static_cast<std::size_t>(slot)];
          accumulate(s, hu, shard.hvp);
          if (m_inputsAreHyperparameters) scatterInputMixed(plan, s, shard, dtheta);
        });
  }

  // ---- Sharded optimizer state (parallel/sharded_optimizer.hpp) ------------------------------------
  // The entry points a ShardedOptimizer calls: as gradient(), reverseStep() and
  // reverseStepWithDirection() with a distribution, but each process receives only its slice
  // [slicing.begin(rank), slicing.end(rank)) of g and H u — the bits of the same entries of the
  // full vectors — and the other processes' slices never travel (an MPI_Alltoallv of slices). They
  // are collective and need setShardDistribution(); InvalidState without one.

  /// \brief Loss and this process's slice of g at the full weights w (collective).
  double gradientSlice(const Eigen::VectorXd& w, Index t, const ParameterSlicing& slicing, Eigen::VectorXd& g) const {
    requireDistribution("gradientSlice");
    detail::checkVectorSize(w, numParameters(), "MlpObjective::gradientSlice", "w");
    return runDistributed(w, t, nullptr, &g, nullptr, nullptr, "gradientSlice", &slicing);
  }

  /// \brief The reverse step with sliced outputs (collective): the processes' slices of u are
  /// gathered, then this process's slices of g and H u and the whole mixed product are returned.
  void reverseStepSlice(const Eigen::VectorXd& w, Index t, const ParameterSlicing& slicing, const Eigen::VectorXd& u,
                        Eigen::VectorXd& g, Eigen::VectorXd& hu, Eigen::VectorXd& dtheta) const {
    requireDistribution("reverseStepSlice");
    detail::checkVectorSize(w, numParameters(), "MlpObjective::reverseStepSlice", "w");
    detail::checkVectorSize(u, outputLength(&slicing), "MlpObjective::reverseStepSlice", "this process's slice of u");
    const ShardExchangeHeader gather{t, -1, numParameters(), inputsPrint(w, nullptr), "gathering the Hessian direction u of batch"};
    m_distribution->allGatherSlices(gather, slicing, u, m_uFull, nullptr);
    if (!m_inputsAreHyperparameters) dtheta.resize(0);
    runDistributed(w, t, &m_uFull, &g, &hu, m_inputsAreHyperparameters ? &dtheta : nullptr, "reverseStepSlice", &slicing);
  }

  /// \brief reverseStepWithDirection() with sliced outputs (collective): `direction(g, u)` maps
  /// this process's slice of g to its slice of u; the slices of u are gathered for H u.
  void reverseStepWithDirectionSlice(const Eigen::VectorXd& w, Index t, const ParameterSlicing& slicing,
                                     const DirectionFunction& direction, Eigen::VectorXd& u, Eigen::VectorXd& g,
                                     Eigen::VectorXd& hu, Eigen::VectorXd& dtheta) const {
    requireDistribution("reverseStepWithDirectionSlice");
    detail::checkVectorSize(w, numParameters(), "MlpObjective::reverseStepWithDirectionSlice", "w");
    reverseStepWithDirectionDistributed(w, t, direction, u, g, hu, dtheta, &slicing);
  }

 private:
  void requireDistribution(const char* fn) const {
    if (!m_distribution) {
      throw InvalidState(detail::message("MlpObjective::", fn, ": no shard distribution is set; the sliced entry points "
                                         "of a sharded optimizer need setShardDistribution()"));
    }
  }

  /// One shard's sweep, the same in every path: its rows of the batch, the forward pass, the
  /// R-forward pass along u when `uc` is given, and the backward pass into `out` when it asks for
  /// any output. The activations and the backward chain stay in the shard's workspace.
  void sweepShard(const ShardPlan& plan, Index s, Shard& shard, const Scalar* wc, const Scalar* uc, Scalar scale,
                  const typename Network::Outputs& out) const {
    Workspace& ws = shard.ws;
    gatherRows(plan.begin(s), plan.size(s), ws);
    const typename Network::View input = detail::viewOf(ws.input);
    shard.lossSum = m_net.forward(wc, input, ws.labels.data(), ws);
    if (out.gradient == nullptr && out.hvp == nullptr && !out.inputMixed) return;
    if (uc != nullptr) m_net.rForward(wc, uc, input, ws);
    m_net.backward(wc, uc, input, ws.labels.data(), scale, ws, out);
  }

  /// reverseStepWithDirection's second sweep of a shard that sweepShard() ran without u: the
  /// R-forward pass along u and the R-backward into `hvp` (and the mixed product when the inputs
  /// are θ), reusing the first sweep's activations and backward chain.
  void resweepShard(Shard& shard, const Scalar* wc, const Scalar* uc, Scalar scale, Scalar* hvp) const {
    Workspace& ws = shard.ws;
    const typename Network::View input = detail::viewOf(ws.input);
    m_net.rForward(wc, uc, input, ws);
    typename Network::Outputs out;
    out.hvp = hvp;
    out.inputMixed = m_inputsAreHyperparameters;
    out.deltasReady = true;
    m_net.backward(wc, uc, input, ws.labels.data(), scale, ws, out);
  }

  /// Every entry point: shards of batch t, each swept (forward; R-forward when u; backward when
  /// an output is wanted), then the shard results added in shard order. Returns the mean loss.
  double run(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd* u, Eigen::VectorXd* g, Eigen::VectorXd* hu,
             Eigen::VectorXd* dtheta, const char* fn) const {
    if (m_distribution) return runDistributed(w, t, u, g, hu, dtheta, fn);
    gatherIndices(t, fn);
    const Index N = numParameters();
    const auto b = static_cast<Index>(m_batchIndex.size());
    const ShardPlan plan(b, m_shardSize);
    const Index numShards = plan.numShards();
    const Index slots = std::min(numShards, detail::shardSlots());
    if (static_cast<Index>(m_shards.size()) < slots) m_shards.resize(static_cast<std::size_t>(slots));
    if (g != nullptr) g->resize(N);
    if (hu != nullptr) hu->resize(N);
    const Scalar scale = Scalar(1) / static_cast<Scalar>(b);
    const Scalar* wc = computeCopy(w, m_wCompute);
    const Scalar* uc = u != nullptr ? computeCopy(*u, m_uCompute) : nullptr;
    if (dtheta != nullptr) {
      dtheta->resize(numHyperparameters());
      dtheta->setZero();
    }
    double lossSum = 0.0;

    detail::runShardWaves(
        numShards, slots,
        [&](Index s, Index slot) {
          Shard& shard = m_shards[static_cast<std::size_t>(slot)];
          typename Network::Outputs out;
          if (g != nullptr) out.gradient = shardOutput(s, *g, shard.gradient);
          if (hu != nullptr) out.hvp = shardOutput(s, *hu, shard.hvp);
          out.inputMixed = dtheta != nullptr;
          sweepShard(plan, s, shard, wc, uc, scale, out);
        },
        [&](Index s, Index slot) {
          // Fixed order: output = ((shard 0 + shard 1) + shard 2) + ...
          const Shard& shard = m_shards[static_cast<std::size_t>(slot)];
          lossSum += static_cast<double>(shard.lossSum);
          if (g != nullptr) accumulate(s, *g, shard.gradient);
          if (hu != nullptr) accumulate(s, *hu, shard.hvp);
          if (dtheta != nullptr) scatterInputMixed(plan, s, shard, *dtheta);
        });
    return lossSum / static_cast<double>(b);
  }

  // ---- Distributed evaluation (setShardDistribution) -------------------------------------------
  // Each process evaluates its own shards into rows [loss sum | g | H u | mixed rows], the rows of
  // all shards are exchanged, and every process adds them in shard order with the operations of
  // run(): shard 0's row is assigned, the others added (accumulate), the loss sums added from 0,
  // the mixed rows scattered in batch order. So the bits are the single-process ones.

  /// Where each output sits in a shard's row; absent outputs take no room.
  struct RowLayout {
    Index gradient = -1, hvp = -1, mixed = -1, width = 1;  // offset 0: the loss sum
    RowLayout(bool g, bool hu, bool dtheta, Index N, Index mixedSize) {
      if (g) gradient = std::exchange(width, width + N);
      if (hu) hvp = std::exchange(width, width + N);
      if (dtheta) mixed = std::exchange(width, width + mixedSize);
    }
  };

  /// Writes shard s's results (slot `slot`) into its row; the network wrote double outputs there
  /// already (shardRowOutput), float ones are converted (exactly).
  void packRow(const RowLayout& rows, Index s, Index slot, Index count, double* row) const {
    const Shard& shard = m_shards[static_cast<std::size_t>(slot)];
    const Index N = numParameters();
    row[0] = static_cast<double>(shard.lossSum);
    if constexpr (!std::is_same_v<Scalar, double>) {
      if (rows.gradient >= 0) Eigen::Map<Eigen::VectorXd>(row + rows.gradient, N) = shard.gradient.template cast<double>();
      if (rows.hvp >= 0) Eigen::Map<Eigen::VectorXd>(row + rows.hvp, N) = shard.hvp.template cast<double>();
    }
    if (rows.mixed >= 0) {
      const Index F = m_data->numFeatures();
      for (Index k = 0; k < count; ++k)
        Eigen::Map<Eigen::VectorXd>(row + rows.mixed + k * F, F) = shard.ws.rInputGrad.row(k).transpose().template cast<double>();
    }
    static_cast<void>(s);
  }

  /// The network's output pointer for shard s in the distributed path: the row itself in double,
  /// the shard's own vector in float (converted by packRow).
  Scalar* shardRowOutput(double* rowOutput, ComputeVector& own) const {
    if constexpr (std::is_same_v<Scalar, double>) {
      static_cast<void>(own);
      return rowOutput;
    } else {
      static_cast<void>(rowOutput);
      own.resize(numParameters());
      return own.data();
    }
  }

  /// Adds every shard's row (m_rowsAll, `rows` with outputs of `N` values: all parameters, or
  /// this process's slice) in shard order into the outputs, as run()'s combine step does; returns
  /// the sum of the shards' loss sums.
  double combineRows(const RowLayout& rows, Index N, const ShardPlan& plan, Eigen::VectorXd* g, Eigen::VectorXd* hu,
                     Eigen::VectorXd* dtheta) const {
    double lossSum = 0.0;
    for (Index s = 0; s < plan.numShards(); ++s) {
      const double* row = m_rowsAll.data() + s * rows.width;
      lossSum += row[0];
      auto add = [&](Eigen::VectorXd& out, Index offset) {
        const Eigen::Map<const Eigen::VectorXd> part(row + offset, N);
        if (s == 0) out = part;
        else out += part;
      };
      if (g != nullptr) add(*g, rows.gradient);
      if (hu != nullptr) add(*hu, rows.hvp);
      if (dtheta != nullptr) {
        const Index F = m_data->numFeatures();
        for (Index k = 0; k < plan.size(s); ++k) {
          const Index e = m_batchIndex[static_cast<std::size_t>(plan.begin(s) + k)];
          dtheta->segment(e * F, F) += Eigen::Map<const Eigen::VectorXd>(row + rows.mixed + k * F, F);
        }
      }
    }
    return lossSum;
  }

  /// The fingerprint of an evaluation's inputs that the processes check to agree: w (and u).
  static std::uint64_t inputsPrint(const Eigen::VectorXd& w, const Eigen::VectorXd* u) noexcept {
    std::uint64_t h = fingerprint(w.data(), w.size());
    if (u != nullptr) h = (h * 0x9E3779B97F4A7C15ull) ^ fingerprint(u->data(), u->size());
    return h;
  }
  /// Adds the batch's example indices and the data set (its fingerprint, computed once per data
  /// version) to an inputs fingerprint: processes with other data or another batch schedule would
  /// compute other shards, while the exchange keeps their weights equal — only this shows it.
  std::uint64_t withBatchAndData(std::uint64_t h) const {
    if (m_dataPrintVersion != m_dataVersion) {
      const Dataset& d = *m_data;
      std::uint64_t p = fingerprint(d.inputs.data(), d.inputs.size());
      for (Index i = 0; i < d.labels.size(); ++i) p = mix64(p ^ static_cast<std::uint64_t>(d.labels(i)));
      m_dataPrint = mix64(p ^ static_cast<std::uint64_t>(d.numClasses));
      m_dataPrintVersion = m_dataVersion;
    }
    h = mix64(h ^ m_dataPrint);
    for (const Index e : m_batchIndex) h = mix64(h ^ static_cast<std::uint64_t>(e));
    return h;
  }

  /// Evaluates this process's shards of the current batch (m_batchIndex) into m_rowsLocal:
  /// `sweep(s, slot, row)` runs shard s in workspace `slot`. All the owned shards stay alive
  /// (their workspaces serve a second sweep in reverseStepWithDirection).
  template <class Sweep>
  void evaluateOwned(const ShardPlan& plan, ShardRange mine, const RowLayout& rows, Sweep&& sweep) const {
    const Index count = mine.count();
    if (static_cast<Index>(m_shards.size()) < count) m_shards.resize(static_cast<std::size_t>(count));
    m_rowsLocal.resize(static_cast<std::size_t>(count * rows.width));
    detail::forEachShard(count, [&](Index slot) {
      const Index s = mine.first + slot;
      double* row = m_rowsLocal.data() + slot * rows.width;
      sweep(s, slot, row);
      packRow(rows, s, slot, plan.size(s), row);
    });
  }

  /// Exchanges the rows (collective) after the local evaluation, whose failure `error` carries;
  /// with a slicing, each process receives only its slice of every row (exchangeSlices). Returns
  /// the layout of the rows received.
  RowLayout exchangeRows(const ShardExchangeHeader& header, std::exception_ptr error, const RowLayout& rows,
                         const ParameterSlicing* slicing) const {
    if (slicing != nullptr) return exchangeSlices(header, error, rows, *slicing);
    if (!error) {
      try {  // a failed allocation is this process's failure, told to the others
        m_rowsAll.resize(static_cast<std::size_t>(header.numShards * header.width));
      } catch (...) {
        error = std::current_exception();
      }
    }
    m_distribution->allGatherShards(header, m_rowsLocal.data(), m_rowsAll.data(), error);
    return rows;
  }

  /// The sliced exchange: process q receives, for every shard in shard order, the row [loss sum |
  /// the slice of each N-long output | the mixed rows]; the other processes' slices never travel.
  RowLayout exchangeSlices(const ShardExchangeHeader& header, std::exception_ptr error, const RowLayout& rows,
                           const ParameterSlicing& slicing) const {
    const int P = m_distribution->numProcesses(), me = m_distribution->rank();
    const Index mixedSize = m_shardSize * m_data->numFeatures();
    auto sliceRows = [&](int q) {
      return RowLayout(rows.gradient >= 0, rows.hvp >= 0, rows.mixed >= 0, slicing.size(q), mixedSize);
    };
    const RowLayout mine = sliceRows(me);
    std::vector<Index> sendCounts(static_cast<std::size_t>(P)), recvCounts(static_cast<std::size_t>(P));
    if (!error) {
      try {
        const ShardRange owned = m_distribution->ownedShards(header.numShards);
        Index total = 0;
        for (int q = 0; q < P; ++q) total += owned.count() * sliceRows(q).width;
        m_sliceSend.resize(static_cast<std::size_t>(total));
        m_rowsAll.resize(static_cast<std::size_t>(header.numShards * mine.width));
        double* out = m_sliceSend.data();
        for (int q = 0; q < P; ++q) {
          const RowLayout to = sliceRows(q);
          const Index begin = slicing.begin(q), n = slicing.size(q);
          sendCounts[static_cast<std::size_t>(q)] = owned.count() * to.width;
          for (Index slot = 0; slot < owned.count(); ++slot, out += to.width) {
            const double* row = m_rowsLocal.data() + slot * rows.width;
            out[0] = row[0];
            if (rows.gradient >= 0) std::copy_n(row + rows.gradient + begin, n, out + to.gradient);
            if (rows.hvp >= 0) std::copy_n(row + rows.hvp + begin, n, out + to.hvp);
            if (rows.mixed >= 0) std::copy_n(row + rows.mixed, mixedSize, out + to.mixed);
          }
        }
        for (int p = 0; p < P; ++p)
          recvCounts[static_cast<std::size_t>(p)] = ShardDistribution::shardsOf(header.numShards, p, P).count() * mine.width;
        if (total > ShardDistribution::maxValuesPerExchange ||
            header.numShards * mine.width > ShardDistribution::maxValuesPerExchange) {
          throw InvalidArgument(detail::message("MlpObjective: a sliced exchange of ", std::max(total, header.numShards * mine.width),
                                                " values on this process exceeds the ", ShardDistribution::maxValuesPerExchange,
                                                " an exchange allows; use more processes or fewer, larger shards"));
        }
      } catch (...) {
        error = std::current_exception();
      }
    }
    m_distribution->agree(header, error);
    m_distribution->allToAllValues(m_sliceSend.data(), sendCounts.data(), m_rowsAll.data(), recvCounts.data());
    return mine;
  }

  /// The distributed run(): this process's shards, the exchange, the combination in shard order.
  /// With a slicing, g and hu are this process's slices (sharded optimizer state).
  double runDistributed(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd* u, Eigen::VectorXd* g,
                        Eigen::VectorXd* hu, Eigen::VectorXd* dtheta, const char* fn,
                        const ParameterSlicing* slicing = nullptr) const {
    const Index N = numParameters();
    const Index n = outputLength(slicing);
    const RowLayout rows(g != nullptr, hu != nullptr, dtheta != nullptr, N, m_shardSize * m_data->numFeatures());
    ShardExchangeHeader header{t, -1, rows.width, inputsPrint(w, u)};
    std::exception_ptr error;
    try {
      gatherIndices(t, fn);
      header.inputs = withBatchAndData(header.inputs);
      const ShardPlan plan(static_cast<Index>(m_batchIndex.size()), m_shardSize);
      header.numShards = plan.numShards();
      const Scalar scale = Scalar(1) / static_cast<Scalar>(plan.numItems());
      const Scalar* wc = computeCopy(w, m_wCompute);
      const Scalar* uc = u != nullptr ? computeCopy(*u, m_uCompute) : nullptr;
      if (g != nullptr) g->resize(n);
      if (hu != nullptr) hu->resize(n);
      if (dtheta != nullptr) dtheta->setZero(numHyperparameters());
      evaluateOwned(plan, m_distribution->ownedShards(plan.numShards()), rows, [&](Index s, Index slot, double* row) {
        Shard& shard = m_shards[static_cast<std::size_t>(slot)];
        typename Network::Outputs out;
        if (g != nullptr) out.gradient = shardRowOutput(row + rows.gradient, shard.gradient);
        if (hu != nullptr) out.hvp = shardRowOutput(row + rows.hvp, shard.hvp);
        out.inputMixed = dtheta != nullptr;
        sweepShard(plan, s, shard, wc, uc, scale, out);
      });
    } catch (...) {
      error = std::current_exception();
    }
    const RowLayout received = exchangeRows(header, error, rows, slicing);
    const ShardPlan plan(static_cast<Index>(m_batchIndex.size()), m_shardSize);
    return combineRows(received, n, plan, g, hu, dtheta) / static_cast<double>(plan.numItems());
  }

  /// The distributed reverseStepWithDirection(): g exchanged, u from it, H u and the mixed product
  /// exchanged. With a slicing, g, u and hu are this process's slices, and the processes' slices
  /// of u are gathered before the R-sweeps.
  void reverseStepWithDirectionDistributed(const Eigen::VectorXd& w, Index t, const DirectionFunction& direction,
                                           Eigen::VectorXd& u, Eigen::VectorXd& g, Eigen::VectorXd& hu,
                                           Eigen::VectorXd& dtheta, const ParameterSlicing* slicing = nullptr) const {
    const char* fn = "reverseStepWithDirection";
    const Index N = numParameters();
    const Index n = outputLength(slicing);
    const Index mixedSize = m_shardSize * m_data->numFeatures();
    // First exchange: the gradient, from one forward and backward sweep per owned shard.
    const RowLayout first(true, false, false, N, mixedSize);
    ShardExchangeHeader header{t, -1, first.width, inputsPrint(w, nullptr)};
    std::exception_ptr error;
    const Scalar* wc = nullptr;
    try {
      gatherIndices(t, fn);
      header.inputs = withBatchAndData(header.inputs);
      const ShardPlan plan(static_cast<Index>(m_batchIndex.size()), m_shardSize);
      header.numShards = plan.numShards();
      const Scalar scale = Scalar(1) / static_cast<Scalar>(plan.numItems());
      wc = computeCopy(w, m_wCompute);
      g.resize(n);
      hu.resize(n);
      if (m_inputsAreHyperparameters) dtheta.setZero(numHyperparameters());
      else dtheta.resize(0);
      evaluateOwned(plan, m_distribution->ownedShards(plan.numShards()), first, [&](Index s, Index slot, double* row) {
        Shard& shard = m_shards[static_cast<std::size_t>(slot)];
        typename Network::Outputs out;
        out.gradient = shardRowOutput(row + first.gradient, shard.gradient);
        sweepShard(plan, s, shard, wc, nullptr, scale, out);
      });
    } catch (...) {
      error = std::current_exception();
    }
    const RowLayout firstReceived = exchangeRows(header, error, first, slicing);
    const ShardPlan plan(static_cast<Index>(m_batchIndex.size()), m_shardSize);
    combineRows(firstReceived, n, plan, &g, nullptr, nullptr);
    const Eigen::VectorXd* uFull = &u;
    if (slicing == nullptr) {
      direction(g, u);  // the same g on every process: the same u
      detail::checkVectorSize(u, n, "MlpObjective::reverseStepWithDirection", "the direction u");
    } else {
      error = nullptr;
      try {  // u from this process's slice of g; a failure here is told to the others
        direction(g, u);
        detail::checkVectorSize(u, n, "MlpObjective::reverseStepWithDirection", "the direction u");
      } catch (...) {
        error = std::current_exception();
      }
      const ShardExchangeHeader gather{t, plan.numShards(), N, inputsPrint(w, nullptr),
                                       "computing the Hessian direction u of batch"};
      m_distribution->allGatherSlices(gather, *slicing, u, m_uFull, error);
      uFull = &m_uFull;
    }
    // Second exchange: H u and the mixed product from the R-sweeps of the same shards.
    const RowLayout second(false, true, m_inputsAreHyperparameters, N, mixedSize);
    header.width = second.width;
    header.inputs = withBatchAndData(inputsPrint(w, uFull));
    error = nullptr;
    try {
      const Scalar scale = Scalar(1) / static_cast<Scalar>(plan.numItems());
      const Scalar* uc = computeCopy(*uFull, m_uCompute);
      evaluateOwned(plan, m_distribution->ownedShards(plan.numShards()), second, [&](Index, Index slot, double* row) {
        Shard& shard = m_shards[static_cast<std::size_t>(slot)];
        resweepShard(shard, wc, uc, scale, shardRowOutput(row + second.hvp, shard.hvp));
      });
    } catch (...) {
      error = std::current_exception();
    }
    const RowLayout secondReceived = exchangeRows(header, error, second, slicing);
    combineRows(secondReceived, n, plan, nullptr, &hu, m_inputsAreHyperparameters ? &dtheta : nullptr);
  }

  /// The length of g and H u: all parameters, or with a slicing this process's slice (after
  /// checking that the slicing fits).
  Index outputLength(const ParameterSlicing* slicing) const {
    if (slicing == nullptr) return numParameters();
    if (slicing->numParameters() != numParameters() || slicing->numProcesses() != m_distribution->numProcesses()) {
      throw InvalidArgument(detail::message("MlpObjective: the parameter slicing is for ", slicing->numParameters(),
                                            " parameters and ", slicing->numProcesses(), " processes; the objective has ",
                                            numParameters(), " parameters and its distribution ",
                                            m_distribution->numProcesses(), " processes"));
    }
    return slicing->size(m_distribution->rank());
  }

  /// Adds shard s's mixed product (its rows of ∂θ) into example-major θ, in batch order; += so
  /// repeated examples accumulate.
  void scatterInputMixed(const ShardPlan& plan, Index s, const Shard& shard, Eigen::VectorXd& dtheta) const {
    const Index F = m_data->numFeatures();
    for (Index k = 0; k < plan.size(s); ++k) {
      const Index e = m_batchIndex[static_cast<std::size_t>(plan.begin(s) + k)];
      dtheta.segment(e * F, F) += shard.ws.rInputGrad.row(k).transpose().template cast<double>();
    }
  }

  /// In double, shard 0 writes into the caller's vector and the others into their own buffer; in
  /// float every shard writes into its own (converted and added by accumulate()).
  Scalar* shardOutput(Index s, Eigen::VectorXd& output, ComputeVector& own) const {
    if constexpr (std::is_same_v<Scalar, double>) {
      if (s == 0) return output.data();
    } else {
      static_cast<void>(output);
    }
    own.resize(numParameters());
    return own.data();
  }

  /// Adds shard s's share into the output, in shard order: ((shard 0 + shard 1) + shard 2) + ...,
  /// in double.
  static void accumulate(Index s, Eigen::VectorXd& output, const ComputeVector& own) {
    if constexpr (std::is_same_v<Scalar, double>) {
      if (s > 0) output += own;
    } else {
      if (s == 0) output = own.template cast<double>();
      else output += own.template cast<double>();
    }
  }

  /// x in the compute type: x itself in double, else rounded into `buffer`.
  static const Scalar* computeCopy(const Eigen::VectorXd& x, ComputeVector& buffer) {
    if constexpr (std::is_same_v<Scalar, double>) {
      static_cast<void>(buffer);
      return x.data();
    } else {
      buffer = x.template cast<Scalar>();
      return buffer.data();
    }
  }

  /// Fetches and validates the example indices of batch t.
  void gatherIndices(Index t, const char* fn) const {
    m_batchIndex = m_batches(t);
    const Index n = m_data->numExamples();
    if (m_batchIndex.empty()) {
      throw InvalidArgument(detail::message("MlpObjective::", fn, ": batch t = ", t,
                                            " is empty; the batch schedule must return at least one index"));
    }
    for (std::size_t k = 0; k < m_batchIndex.size(); ++k) {
      const Index e = m_batchIndex[k];
      if (e < 0 || e >= n) {
        throw InvalidArgument(detail::message("MlpObjective::", fn, ": batch t = ", t, " contains example index ",
                                              e, " (position ", k, "), outside [0, numExamples = ", n, ")"));
      }
    }
  }

  /// Copies the rows and labels of batch positions [begin, begin + count) into a shard workspace.
  void gatherRows(Index begin, Index count, Workspace& ws) const {
    ws.input.resize(count, m_data->numFeatures());
    ws.labels.resize(count);
    for (Index k = 0; k < count; ++k) {
      const Index e = m_batchIndex[static_cast<std::size_t>(begin + k)];
      ws.input.row(k) = m_data->inputs.row(e).template cast<Scalar>();  // contiguous read (row-major)
      ws.labels(k) = m_data->labels(e);
    }
  }

  Network m_net;
  // Never null; read-only and possibly shared. The inputs are row-major, so gathering a
  // minibatch reads contiguous rows (from column-major inputs it cost a cache miss per value:
  // 21% of a training step at 10k examples) without a second copy in another order.
  std::shared_ptr<const Dataset> m_data;
  BatchSchedule m_batches;
  bool m_inputsAreHyperparameters;
  Index m_shardSize = defaultMlpShardSize;
  mutable std::vector<Shard> m_shards;
  mutable ComputeVector m_wCompute, m_uCompute;  // w, u in float (unused in double)
  mutable std::vector<Index> m_batchIndex;
  std::shared_ptr<const ShardDistribution> m_distribution;  // null: every shard here
  mutable std::vector<double> m_rowsLocal, m_rowsAll;       // the distributed path's shard rows
  mutable std::vector<double> m_sliceSend;                   // the sliced exchange's outgoing rows
  mutable Eigen::VectorXd m_uFull;                           // u gathered from the processes' slices
  std::uint64_t m_dataVersion = 0;                           // +1 whenever m_data is replaced
  mutable std::uint64_t m_dataPrintVersion = ~std::uint64_t(0), m_dataPrint = 0;  // withBatchAndData's cache
};

/// The training objective of an MLP computed in double: see BasicMlpObjective.
using MlpObjective = BasicMlpObjective<double>;
/// The training objective of an MLP computed in float, with a double interface (see
/// BasicMlpObjective, "float32 compute").
using MlpObjectiveFloat = BasicMlpObjective<float>;

}  // namespace hypergrad
