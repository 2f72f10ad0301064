// SPDX-License-Identifier: MIT
#pragma once

/// \file result.hpp
/// \brief The result of a reverse pass, for any update rule: the meta objective, ∂f/∂ every
/// schedule (T × G), ∂f/∂ every initial state vector and ∂f/∂θ — reachable by the rule's own
/// member names (`hg.learningRates`, `hg.initialVelocity` for momentum) and generically by index
/// or key (`hg.schedule("momenta")`, `hg.initialState(1)`).

#include <cstddef>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "../layout.hpp"
#include "../optimizers/concept.hpp"

namespace hypergrad {

/// What a run cost, filled in by reverse(). Fields an optimizer cannot report stay 0 (the
/// store-the-trajectory ReferenceOptimizer has no buffer and does not time its steps).
struct RunStatistics {
  Index iterations = 0;           ///< T, the steps of the run
  Index stepsDifferentiated = 0;  ///< the steps reversed: T, or K for reverseTruncated()
  /// The information buffer's content when reverse() began, in bits: what the forward run's
  /// decays destroyed (the run's peak, up to the fluctuation of one step).
  double informationBits = 0.0;
  std::size_t bufferBytes = 0;    ///< the buffer's allocated bytes then
  double forwardSeconds = 0.0;    ///< wall time of the forward steps since start() (gradients included)
  double reverseSeconds = 0.0;    ///< wall time of reverse()
  /// The schedules used, T × G each, in the rule's order (ratios as quantised: the values the
  /// hypergradients refer to).
  std::vector<Eigen::MatrixXd> schedulesUsed;
};

/// Hypergradients of a reverse pass through update rule `Rule`. The rule's HypergradientFields
/// (e.g. `learningRates`, `momenta`, `initialVelocity`) are members of this struct; the members
/// below are common to every rule. Gradients with respect to a ratio schedule refer to the
/// quantised values the optimizer actually used (its scheduleValues()).
template <class Rule>
struct HypergradientResult : Rule::HypergradientFields {
  using RuleType = Rule;  ///< The update rule these hypergradients belong to.

  double metaObjective = 0.0;       ///< f(w_{T+1})
  Eigen::VectorXd initialWeights;   ///< ∂f/∂w₁
  Eigen::VectorXd hyperparameters;  ///< ∂f/∂θ (size of the objective's θ; empty when it has none)
  /// θ's named blocks, from the objective (hyperparameterLayout(f) in objective.hpp): e.g.
  /// "l2.logLambda" of an L2Regularized objective; one block "theta" when the objective names none.
  ParameterLayout hyperparameterLayout;
  Eigen::VectorXd finalWeights;     ///< w_{T+1}, the trained weights
  RunStatistics statistics;         ///< what the run cost (buffer, times) and the schedules used

  static constexpr Index numSchedules = Rule::numSchedules;  ///< Schedules of the rule (α, γ, …).
  static constexpr Index numStates = Rule::numStates;  ///< States per parameter, the weights included.

  /// ∂f/∂ schedule j (T × G), by index in Rule::schedules or by key ("learningRates").
  Eigen::MatrixXd& schedule(Index j) { return this->*Rule::scheduleFields.at(static_cast<std::size_t>(j)); }
  /// ∂f/∂ schedule j (T × G), read-only.
  const Eigen::MatrixXd& schedule(Index j) const { return this->*Rule::scheduleFields.at(static_cast<std::size_t>(j)); }
  /// ∂f/∂ the schedule named `key`; throws InvalidArgument for an unknown key.
  const Eigen::MatrixXd& schedule(const std::string& key) const { return schedule(hypergrad::scheduleIndex<Rule>(key)); }
  /// ∂f/∂ the schedule named `key`, writable.
  Eigen::MatrixXd& schedule(const std::string& key) { return schedule(hypergrad::scheduleIndex<Rule>(key)); }

  /// \brief ∂f/∂ the θ block named `name` (a view into `hyperparameters`), e.g.
  /// `hg.hyperparameterBlock("l2.logLambda")`; InvalidArgument naming the blocks there are when
  /// there is no such block.
  Eigen::VectorBlock<const Eigen::VectorXd> hyperparameterBlock(const std::string& name) const {
    const ParameterGroup& block = findBlock(name);
    return Eigen::VectorBlock<const Eigen::VectorXd>(hyperparameters, block.offset, block.size);
  }
  /// ∂f/∂ the θ block named `name`, writable.
  Eigen::VectorBlock<Eigen::VectorXd> hyperparameterBlock(const std::string& name) {
    const ParameterGroup& block = findBlock(name);
    return Eigen::VectorBlock<Eigen::VectorXd>(hyperparameters, block.offset, block.size);
  }

  /// ∂f/∂ (state s at t = 1), s = 0 the weights, by index or by the rule's state name ("velocity").
  Eigen::VectorXd& initialState(Index s) {
    return s == 0 ? initialWeights : this->*Rule::stateFields.at(static_cast<std::size_t>(s - 1));
  }
  /// ∂f/∂ (state s at t = 1), read-only.
  const Eigen::VectorXd& initialState(Index s) const {
    return s == 0 ? initialWeights : this->*Rule::stateFields.at(static_cast<std::size_t>(s - 1));
  }
  /// ∂f/∂ (the state named `name` at t = 1); throws InvalidArgument for an unknown name.
  const Eigen::VectorXd& initialState(const std::string& name) const { return initialState(hypergrad::stateIndex<Rule>(name)); }

 private:
  const ParameterGroup& findBlock(const std::string& name) const {
    std::string names;
    for (const ParameterGroup& block : hyperparameterLayout.groups()) {
      if (block.name == name) {
        if (block.offset + block.size > hyperparameters.size()) {
          throw InvalidState(detail::message("hyperparameterBlock: block '", name, "' ends at ",
                                             block.offset + block.size, " but the result has ",
                                             hyperparameters.size(), " hyperparameter entries"));
        }
        return block;
      }
      names += (names.empty() ? "'" : ", '") + block.name + "'";
    }
    throw InvalidArgument(detail::message("hyperparameterBlock: no block named '", name, "'; ",
                                          names.empty() ? std::string("the objective has no hyperparameters")
                                                        : "the blocks are " + names));
  }
};

}  // namespace hypergrad
