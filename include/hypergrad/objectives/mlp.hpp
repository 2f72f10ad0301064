// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file mlp.hpp
/// \brief A multilayer perceptron with softmax cross-entropy: the training objective
/// (MlpObjective, minibatch loss, optionally with the training inputs as hyperparameters) and
/// the meta objective (MlpLoss, full-batch loss on a validation set).
///
/// The area header of objectives/mlp/; each part also works on its own:
///
/// - `objectives/mlp/architecture.hpp`: Activation and MlpArchitecture, the network's shape and
///   the layout of its parameter vector;
/// - `objectives/mlp/network.hpp`: the hand-written backprop and R-operator over single-threaded
///   GEMMs, shared by the two objectives (detail);
/// - `objectives/mlp/objective.hpp`: MlpObjective, the training objective, and how a batch is
///   cut into shards for threads;
/// - `objectives/mlp/loss.hpp`: MlpLoss, the meta objective.
///
/// With them come Dataset (`data/dataset.hpp`) and ShardPlan (`parallel/shard_plan.hpp`).
/// Including this header is cheap: the network and the two objectives are templates on the
/// compute type, so Eigen's GEMM kernels are compiled only in the translation units that
/// construct an MlpObjective or an MlpLoss.

#include "../data/dataset.hpp"
#include "../parallel/shard_plan.hpp"
#include "mlp/architecture.hpp"
#include "mlp/loss.hpp"
#include "mlp/network.hpp"
#include "mlp/objective.hpp"
