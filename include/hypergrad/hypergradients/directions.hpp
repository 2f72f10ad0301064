// SPDX-License-Identifier: MIT
#pragma once

/// \file directions.hpp
/// \brief What the hypergradient toolbox's methods differentiate with respect to when they cannot
/// return every entry: H scalar hyperparameters λ_1 … λ_H, each a direction in the space of (the
/// rule's schedules, the training objective's θ, the initial states), and the result of a method
/// as H numbers ∂f/∂λ_h.
///
/// The reverse pass returns ∂f/∂ every schedule entry, θ entry and initial-state entry at once;
/// forward mode (forward.hpp) costs one tangent per hyperparameter, so it needs them named. A
/// per-group constant learning rate is the direction "1 at every iteration of group k of the α
/// schedule"; log λ of an L2 penalty is θ's entry; a log init scale of layer k is "w₁ on the
/// layer's entries" (∂(σ_k z)/∂ log σ_k = σ_k z). `project()` maps the reverse pass's result onto
/// the same directions — the exact value every other method is measured against.
///
/// Tangents are stored sparsely (schedule entries as (t, group, value) triples, θ and initial
/// states as (index, value) pairs): one direction per schedule entry (H = T·G) costs H entries,
/// not H·T·G.

#include <algorithm>
#include <array>
#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "../layout.hpp"
#include "../objective.hpp"
#include "../optimizers/concept.hpp"
#include "result.hpp"

namespace hypergrad {

/// One scalar hyperparameter as a direction (see the file comment).
struct HyperparameterDirection {
  /// One entry of a schedule tangent: ∂(schedule `schedule` at (iteration, group))/∂λ = value.
  struct ScheduleEntry {
    int schedule = 0;     ///< j, in the rule's order (Rule::schedules)
    Index iteration = 0;  ///< t
    Index group = 0;      ///< k
    double value = 0.0;   ///< the tangent
  };
  std::string name;                                 ///< e.g. "learningRates[layer 1 weights]"
  std::vector<ScheduleEntry> schedules;             ///< sorted by iteration
  std::vector<std::pair<Index, double>> theta;      ///< ∂θ_p/∂λ, by p
  /// ∂(state s at iteration 0)/∂λ as (s, element, value), e.g. the weights w₁ on one layer.
  std::vector<std::pair<int, std::pair<Index, double>>> initial;
};

/// H hyperparameters of a run of update rule `Rule` (see the file comment). Built for the run's
/// shape (T iterations, the parameter layout, θ's size); each add…() appends directions and
/// returns the index of the first one it added.
template <class Rule>
class HyperparameterDirections {
 public:
  static constexpr int numSchedules = Rule::numSchedules;  ///< J, the rule's schedules.
  static constexpr int numStates = Rule::numStates;        ///< S, its state vectors.

  /// For runs of `numIterations` steps over `layout`, with an objective of `numHyperparameters`
  /// θ entries named by `hyperparameterLayout` (may be empty).
  HyperparameterDirections(Index numIterations, ParameterLayout layout, Index numHyperparameters = 0,
                           ParameterLayout hyperparameterLayout = ParameterLayout())
      : m_numIterations(numIterations), m_layout(std::move(layout)), m_numTheta(numHyperparameters),
        m_thetaLayout(std::move(hyperparameterLayout)) {
    if (m_numIterations <= 0 || m_numTheta < 0) {
      throw InvalidArgument(detail::message("HyperparameterDirections: ", m_numIterations, " iterations and ", m_numTheta,
                                            " hyperparameters; give at least one iteration and P >= 0"));
    }
  }

  /// The directions for `opt`'s run on objective `f` (its T, layout and θ).
  template <class Optimizer, class Objective>
  static HyperparameterDirections of(const Optimizer& opt, const Objective& f) {
    static_assert(std::is_same<typename Optimizer::RuleType, Rule>::value,
                  "hypergrad::HyperparameterDirections::of: the optimizer runs another update rule");
    return HyperparameterDirections(opt.numIterations(), opt.layout(), f.numHyperparameters(), hyperparameterLayout(f));
  }

  // ---- Schedules ----------------------------------------------------------------------------------

  /// One hyperparameter moving schedule `key` by `tangent` (T × G): ∂(entry t, k)/∂λ = tangent(t, k).
  Index addSchedule(const std::string& key, const Eigen::MatrixXd& tangent, std::string name) {
    const int j = scheduleIndex<Rule>(key);
    if (tangent.rows() != m_numIterations || tangent.cols() != m_layout.numGroups() || !tangent.allFinite()) {
      throw InvalidArgument(detail::message("HyperparameterDirections::addSchedule: the tangent of '", key, "' is ",
                                            tangent.rows(), " x ", tangent.cols(), (tangent.allFinite() ? "" : " with a non-finite entry"),
                                            "; it must be finite and T x G = ", m_numIterations, " x ", m_layout.numGroups()));
    }
    HyperparameterDirection d;
    d.name = std::move(name);
    for (Index t = 0; t < m_numIterations; ++t)
      for (Index k = 0; k < m_layout.numGroups(); ++k)
        if (tangent(t, k) != 0.0) d.schedules.push_back({j, t, k, tangent(t, k)});
    return append(std::move(d));
  }

  /// One hyperparameter per group k: schedule `key` held constant over the run in group k (its
  /// T entries move together), named "key[group name]". Returns the first (group 0's) index.
  Index addScheduleGroups(const std::string& key) {
    const int j = scheduleIndex<Rule>(key);
    const Index first = size();
    for (Index k = 0; k < m_layout.numGroups(); ++k) {
      HyperparameterDirection d;
      d.name = key + "[" + m_layout.group(k).name + "]";
      for (Index t = 0; t < m_numIterations; ++t) d.schedules.push_back({j, t, k, 1.0});
      append(std::move(d));
    }
    return first;
  }

  /// One hyperparameter for every entry (t, k) of schedule `key` — T·G of them, entry (t, k) at
  /// index first + t·G + k, named "key[t, group name]": the whole schedule, as the reverse pass
  /// returns it.
  Index addScheduleEntries(const std::string& key) {
    const int j = scheduleIndex<Rule>(key);
    const Index first = size();
    for (Index t = 0; t < m_numIterations; ++t)
      for (Index k = 0; k < m_layout.numGroups(); ++k) {
        HyperparameterDirection d;
        d.name = detail::message(key, "[", t, ", ", m_layout.group(k).name, "]");
        d.schedules.push_back({j, t, k, 1.0});
        append(std::move(d));
      }
    return first;
  }

  // ---- The objective's θ --------------------------------------------------------------------------

  /// One hyperparameter moving θ by `tangent` (θ's size), e.g. one log λ shared by a group of
  /// per-weight penalties.
  Index addHyperparameterDirection(const Eigen::VectorXd& tangent, std::string name) {
    if (tangent.size() != m_numTheta || !tangent.allFinite()) {
      throw InvalidArgument(detail::message("HyperparameterDirections::addHyperparameterDirection: the tangent has ",
                                            tangent.size(), " entries (finite: ", tangent.allFinite() ? "yes" : "no",
                                            "); the objective has ", m_numTheta, " hyperparameters"));
    }
    HyperparameterDirection d;
    d.name = std::move(name);
    for (Index p = 0; p < m_numTheta; ++p)
      if (tangent(p) != 0.0) d.theta.emplace_back(p, tangent(p));
    return append(std::move(d));
  }

  /// One hyperparameter per θ entry p in [first, first + count) (count −1: to the end), named by
  /// the objective's hyperparameter layout ("l2.logLambda[2]") or "theta[p]".
  Index addHyperparameters(Index first = 0, Index count = -1) {
    if (count < 0) count = m_numTheta - first;
    if (first < 0 || count < 0 || first + count > m_numTheta) {
      throw InvalidArgument(detail::message("HyperparameterDirections::addHyperparameters: entries [", first, ", ",
                                            first + count, ") of an objective with ", m_numTheta, " hyperparameters"));
    }
    const Index firstIndex = size();
    for (Index p = first; p < first + count; ++p) {
      HyperparameterDirection d;
      d.name = thetaName(p);
      d.theta.emplace_back(p, 1.0);
      append(std::move(d));
    }
    return firstIndex;
  }

  /// One hyperparameter per entry of the θ block named `block` (e.g. "l2.logLambda").
  Index addHyperparameterBlock(const std::string& block) {
    for (const ParameterGroup& b : m_thetaLayout.groups())
      if (b.name == block) return addHyperparameters(b.offset, b.size);
    throw InvalidArgument(detail::message("HyperparameterDirections::addHyperparameterBlock: the objective has no "
                                          "hyperparameter block named '", block, "'"));
  }

  // ---- Initial states -----------------------------------------------------------------------------

  /// One hyperparameter moving the initial state `s` (0: the weights) by `tangent` (N entries).
  Index addInitialState(Index s, const Eigen::VectorXd& tangent, std::string name) {
    if (s < 0 || s >= numStates || tangent.size() != m_layout.size() || !tangent.allFinite()) {
      throw InvalidArgument(detail::message("HyperparameterDirections::addInitialState: state ", s, " of ", numStates,
                                            " with a tangent of ", tangent.size(), " entries (",
                                            m_layout.size(), " parameters; finite values)"));
    }
    HyperparameterDirection d;
    d.name = std::move(name);
    for (Index i = 0; i < tangent.size(); ++i)
      if (tangent(i) != 0.0) d.initial.push_back({static_cast<int>(s), {i, tangent(i)}});
    return append(std::move(d));
  }

  /// One hyperparameter per group k: the log scale of the initial weights w₁ on group k (their
  /// tangent is w₁ there, since ∂(σ_k z)/∂ log σ_k = σ_k z), named "logInitScale[group name]".
  Index addInitialScales(const Eigen::VectorXd& w1) {
    if (w1.size() != m_layout.size()) {
      throw InvalidArgument(detail::message("HyperparameterDirections::addInitialScales: w1 has ", w1.size(),
                                            " entries, the layout ", m_layout.size()));
    }
    const Index first = size();
    for (Index k = 0; k < m_layout.numGroups(); ++k) {
      const ParameterGroup& g = m_layout.group(k);
      Eigen::VectorXd tangent = Eigen::VectorXd::Zero(w1.size());
      tangent.segment(g.offset, g.size) = w1.segment(g.offset, g.size);
      addInitialState(0, tangent, "logInitScale[" + g.name + "]");
    }
    return first;
  }

  // ---- Access -------------------------------------------------------------------------------------

  Index size() const noexcept { return static_cast<Index>(m_directions.size()); }  ///< H.
  /// Hyperparameter h's tangents (std::out_of_range for h outside 0 … H − 1).
  const HyperparameterDirection& direction(Index h) const { return m_directions.at(static_cast<std::size_t>(h)); }
  const std::string& name(Index h) const { return direction(h).name; }  ///< λ_h's name.
  Index numIterations() const noexcept { return m_numIterations; }                   ///< T.
  const ParameterLayout& layout() const noexcept { return m_layout; }    ///< The parameter groups.
  Index numHyperparameters() const noexcept { return m_numTheta; }              ///< θ's size.
  /// The names of all H directions, in order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(m_directions.size());
    for (const HyperparameterDirection& d : m_directions) out.push_back(d.name);
    return out;
  }

  /// A gradient with respect to θ alone (∂f/∂θ, e.g. an implicit hypergradient) on these
  /// directions: Σ_p ∂θ_p/∂λ_h ∂f/∂θ_p (their schedule and initial-state parts contribute 0).
  /// InvalidArgument when `dtheta` is not of θ's size.
  Eigen::VectorXd projectTheta(const Eigen::VectorXd& dtheta) const {
    if (dtheta.size() != m_numTheta)
      throw InvalidArgument(detail::message("HyperparameterDirections::projectTheta: ", dtheta.size(),
                                            " entries, expected ", m_numTheta));
    Eigen::VectorXd out(size());
    for (Index h = 0; h < size(); ++h) {
      double sum = 0.0;
      for (const auto& p : direction(h).theta) sum += p.second * dtheta(p.first);
      out(h) = sum;
    }
    return out;
  }

  /// The reverse pass's hypergradients on these directions: ∂f/∂λ_h = Σ tangent · ∂f/∂(schedule
  /// entry) + Σ ∂θ_p/∂λ_h ∂f/∂θ_p + Σ tangent · ∂f/∂(initial state) — the exact values the toolbox's
  /// other methods are measured against. InvalidArgument when `r` is of another run's shape.
  Eigen::VectorXd project(const HypergradientResult<Rule>& r) const {
    for (int j = 0; j < numSchedules; ++j) {
      if (r.schedule(j).rows() != m_numIterations || r.schedule(j).cols() != m_layout.numGroups())
        throw InvalidArgument(detail::message("HyperparameterDirections::project: the result's '", Rule::schedules[j].key,
                                              "' is ", r.schedule(j).rows(), " x ", r.schedule(j).cols(), ", expected ",
                                              m_numIterations, " x ", m_layout.numGroups()));
    }
    for (int s = 0; s < numStates; ++s) {
      if (r.initialState(s).size() != m_layout.size())
        throw InvalidArgument(detail::message("HyperparameterDirections::project: the result's initial ",
                                              Rule::stateNames[static_cast<std::size_t>(s)], " has ",
                                              r.initialState(s).size(), " entries, expected ", m_layout.size()));
    }
    if (r.hyperparameters.size() != m_numTheta)
      throw InvalidArgument(detail::message("HyperparameterDirections::project: the result has ", r.hyperparameters.size(),
                                            " hyperparameter entries, expected ", m_numTheta));
    Eigen::VectorXd out(size());
    for (Index h = 0; h < size(); ++h) {
      const HyperparameterDirection& d = direction(h);
      double sum = 0.0;
      for (const auto& e : d.schedules) sum += e.value * r.schedule(e.schedule)(e.iteration, e.group);
      for (const auto& p : d.theta) sum += p.second * r.hyperparameters(p.first);
      for (const auto& e : d.initial) sum += e.second.second * r.initialState(e.first)(e.second.first);
      out(h) = sum;
    }
    return out;
  }

 private:
  Index append(HyperparameterDirection d) {
    std::stable_sort(d.schedules.begin(), d.schedules.end(),
                     [](const auto& a, const auto& b) { return a.iteration < b.iteration; });
    for (const auto& p : d.theta)
      if (p.first < 0 || p.first >= m_numTheta)
        throw InvalidArgument(detail::message("HyperparameterDirections: theta entry ", p.first, " of ", m_numTheta));
    m_directions.push_back(std::move(d));
    return size() - 1;
  }

  std::string thetaName(Index p) const {
    for (const ParameterGroup& b : m_thetaLayout.groups())
      if (p >= b.offset && p < b.offset + b.size) return detail::message(b.name, "[", p - b.offset, "]");
    return detail::message("theta[", p, "]");
  }

  Index m_numIterations;
  ParameterLayout m_layout;
  Index m_numTheta;
  ParameterLayout m_thetaLayout;
  std::vector<HyperparameterDirection> m_directions;
};

/// A toolbox method's result on H hyperparameters (HyperparameterDirections): ∂f/∂λ_h, what it
/// cost, and which method produced it — one type for every method, so that they compare directly.
struct DirectionalHypergradients {
  std::string method;               ///< "forward", "reverse", …
  Eigen::VectorXd values;           ///< ∂f/∂λ_h, h = 0 … H − 1
  std::vector<std::string> names;   ///< λ_h's names
  double metaObjective = 0.0;       ///< f at the final weights
  Eigen::VectorXd finalWeights;     ///< the weights f was evaluated at
  Index iterations = 0;             ///< training steps of the run
  Index hessianProducts = 0;        ///< Hessian-vector products the method evaluated
  std::size_t memoryBytes = 0;      ///< the method's own storage (tangents, buffer, checkpoints)
  double seconds = 0.0;             ///< wall time of the method (training included where it trains)
  std::string diagnostics;          ///< what the method wants said (the implicit method's CG report)

  /// ∂f/∂ the hyperparameter named `name`; InvalidArgument when there is none.
  double value(const std::string& name) const {
    for (std::size_t h = 0; h < names.size(); ++h)
      if (names[h] == name) return values(static_cast<Index>(h));
    throw InvalidArgument(detail::message("DirectionalHypergradients::value: no hyperparameter named '", name, "'"));
  }
};

}  // namespace hypergrad
