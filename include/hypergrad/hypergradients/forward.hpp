// SPDX-License-Identifier: MIT
#pragma once

/// \file forward.hpp
/// \brief Forward-mode hypergradients (Franceschi et al.\ 2017, "Forward and reverse
/// gradient-based hyperparameter optimization"): alongside training, the tangents
/// Z_s = ∂(state s)/∂λ of every state vector for H scalar hyperparameters λ (directions.hpp)
/// are carried forward, and at the end ∂f/∂λ = ∇f(w)ᵀ Z_w + ∂f/∂θ · ∂θ/∂λ.
///
/// **How a step's tangent is computed.** The rule's own element code (optimizers/concept.hpp)
/// runs on dual numbers — a value and one tangent — for each hyperparameter: the pre-step state
/// values with their tangents, the schedule entries with theirs (and the tangents of the running
/// products and bias corrections Adam reads), and g_t with its tangent
///
///     ∂g_t/∂λ = H_t Z_w + (∂_θ ∇_w L) ∂θ/∂λ     (one Hessian-vector product per hyperparameter)
///
/// Rules declaring `laneCode` are generic in their value type, which is all this needs; derived
/// entries (AdamW's 1 − αλ) need the rule's derive() generic too. The values come from the
/// optimizer's exact trajectory each step, so the tangents are those of the same run the exact
/// reverse pass differentiates: the two agree to rounding (≈ 1e-12 relative; tested).
///
/// **Cost.** Memory S·N·H doubles for the tangents and no information buffer; time per step H
/// Hessian-vector products (skipped while a tangent of the weights is still zero) and H runs of
/// the element code — against one product per step for the reverse pass, whatever H. Forward mode
/// pays off for few hyperparameters, and it knows ∂w_t/∂λ *during* training (real-time
/// hyperparameter optimisation).
///
/// `ForwardTangents` is a train() callback (callbacks.hpp) that can ride along any run;
/// `forwardHypergradients()` trains with it and returns the result.

#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <exception>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "../objective.hpp"
#include "../optimizers/concept.hpp"
#include "directions.hpp"
#include "train.hpp"

namespace hypergrad {
namespace detail {

/// A value with one tangent: the number type forward mode runs the rules' element code on.
struct Dual {
  double v = 0.0;  ///< the value
  double d = 0.0;  ///< its derivative along one hyperparameter
};
inline Dual operator+(Dual a, Dual b) { return {a.v + b.v, a.d + b.d}; }
inline Dual operator-(Dual a, Dual b) { return {a.v - b.v, a.d - b.d}; }
inline Dual operator*(Dual a, Dual b) { return {a.v * b.v, a.d * b.v + a.v * b.d}; }
inline Dual operator/(Dual a, Dual b) {
  const double q = a.v / b.v;
  return {q, (a.d - q * b.d) / b.v};
}
inline Dual operator-(Dual a) { return {-a.v, -a.d}; }
inline Dual operator+(double a, Dual b) { return {a + b.v, b.d}; }
inline Dual operator+(Dual a, double b) { return {a.v + b, a.d}; }
inline Dual operator-(double a, Dual b) { return {a - b.v, -b.d}; }
inline Dual operator-(Dual a, double b) { return {a.v - b, a.d}; }
inline Dual operator*(double a, Dual b) { return {a * b.v, a * b.d}; }
inline Dual operator*(Dual a, double b) { return {a.v * b, a.d * b}; }
inline Dual operator/(Dual a, double b) { return {a.v / b, a.d / b}; }
inline Dual operator/(double a, Dual b) {
  const double q = a / b.v;
  return {q, -q * b.d / b.v};
}
/// √x; a zero tangent stays zero at x = 0 (a state that never moved), where the derivative of √
/// itself is infinite.
inline Dual sqrt(Dual a) {
  const double r = std::sqrt(a.v);
  return {r, a.d == 0.0 ? 0.0 : a.d / (2.0 * r)};
}

/// A schedule entry with tangents (the fields of ScheduleEntry the element code reads).
struct DualEntry {
  Dual value;
  Dual product{1.0, 0.0};
  Dual previousProduct{1.0, 0.0};
  Dual debias{1.0, 0.0};
};

/// The element arithmetic of forward mode: one element's S state values and their tangents along
/// one hyperparameter, updated by the rule's element code (optimizers/concept.hpp's table).
template <int S>
class DualElement {
 public:
  DualElement(double* values, double* tangents) noexcept : m_v(values), m_d(tangents) {}
  template <class Entry>
  void multiply(int s, const Entry& c) noexcept {
    m_d[s] = m_d[s] * c.value.v + m_v[s] * c.value.d;
    m_v[s] *= c.value.v;
  }
  void add(int s, Dual x, const char* /*what*/ = "") noexcept {
    m_v[s] += x.v;
    m_d[s] += x.d;
  }
  void subtract(int s, Dual x, const char* /*what*/ = "") noexcept {
    m_v[s] -= x.v;
    m_d[s] -= x.d;
  }
  Dual value(int s) const noexcept { return {m_v[s], m_d[s]}; }

 private:
  double* m_v;
  double* m_d;
};

template <class R, class = void>
struct HasDualDerive : std::false_type {};
template <class R>
struct HasDualDerive<R, std::void_t<decltype(Dual(R::derive(
                            0, std::declval<const std::array<Dual, static_cast<std::size_t>(R::numSchedules)>&>())))>>
    : std::true_type {};

template <class R, class = void>
struct DeclaresLaneCode : std::false_type {};
template <class R>
struct DeclaresLaneCode<R, std::void_t<decltype(static_cast<bool>(R::laneCode))>> : std::bool_constant<R::laneCode> {};

}  // namespace detail

/// \brief The forward-mode tangents of a run, as a train() callback (see the file comment):
/// `train(opt, f, tangents)` from iteration 0 carries Z_s = ∂(state s)/∂λ for the H
/// hyperparameters of `directions`; `hypergradients(meta, w)` then gives ∂f/∂λ at the weights w
/// reached. The objective is held by reference and must outlive the callback.
///
/// Requires a rule declaring `laneCode` (its element code generic in the value type; derived
/// entries with a generic derive()), and, for directions that move θ, an objective with
/// `mixedTangentProduct(w, t, dtheta, out)` = (∂_θ ∇_w L) dtheta (L2Regularized has it).
/// onTrainBegin() throws InvalidState unless the run is at iteration 0, InvalidArgument when the
/// directions do not fit the run or the objective; a failing step throws out of train(), which
/// then undoes its steps, and the tangents are reset by the next onTrainBegin().
template <class Rule, class Objective>
class ForwardTangents {
  static_assert(detail::DeclaresLaneCode<Rule>::value,
                "hypergrad::ForwardTangents: forward mode runs the rule's element code on dual numbers; declare "
                "`static constexpr bool laneCode = true` with forwardState/forwardWeights generic in their value type "
                "(optimizers/concept.hpp)");
  static_assert(detail::numDerived<Rule>() == 0 || detail::HasDualDerive<Rule>::value,
                "hypergrad::ForwardTangents: the rule's derived entries need derive() generic in its value type "
                "(template <class T> static T derive(int, const std::array<T, J>&), as AdamWRule's)");

 public:
  static constexpr int S = Rule::numStates;     ///< State vectors, the weights included.
  static constexpr int J = Rule::numSchedules;  ///< Schedules.
  static constexpr int D = detail::numDerived<Rule>();  ///< Derived entries.

  /// Tangents along `directions` of runs of objective `f` (kept by reference).
  ForwardTangents(const Objective& f, HyperparameterDirections<Rule> directions)
      : m_f(&f), m_directions(std::move(directions)) {
    checkObjective<Objective>();
  }

  /// Starts the tangents at the directions' initial-state tangents (train() calls it).
  template <class Optimizer>
  void onTrainBegin(const Optimizer& opt) {
    static_assert(!detail::IsSharded<Optimizer>::value,
                  "hypergrad::ForwardTangents: forward mode does not run on a ShardedOptimizer yet");
    if (!opt.started()) throw InvalidState("forward mode: start() the optimizer first");
    if (opt.iteration() != 0) {
      throw InvalidState(detail::message("forward mode: the run is at iteration ", opt.iteration(),
                                         "; the tangents start at iteration 0 (start() the optimizer, then train)"));
    }
    const Index N = opt.size(), H = m_directions.size();
    if (m_directions.numIterations() != opt.numIterations() || m_directions.layout().size() != N ||
        m_directions.layout().numGroups() != opt.layout().numGroups()) {
      throw InvalidArgument(detail::message("forward mode: the directions are for ", m_directions.numIterations(),
                                            " iterations of ", m_directions.layout().size(), " parameters in ",
                                            m_directions.layout().numGroups(), " groups; the optimizer has ",
                                            opt.numIterations(), ", ", N, ", ", opt.layout().numGroups()));
    }
    if (m_f->numParameters() != N || m_f->numHyperparameters() != m_directions.numHyperparameters()) {
      throw InvalidArgument(detail::message("forward mode: the objective has ", m_f->numParameters(), " parameters and ",
                                            m_f->numHyperparameters(), " hyperparameters; the directions expect ", N,
                                            " and ", m_directions.numHyperparameters()));
    }
    m_movesTheta.assign(static_cast<std::size_t>(H), 0);
    for (Index h = 0; h < H; ++h) {
      if (m_directions.direction(h).theta.empty()) continue;
      if constexpr (!detail::HasMixedTangentProduct<Objective>::value) {
        throw InvalidArgument(detail::message("forward mode: hyperparameter '", m_directions.name(h),
                                              "' moves the objective's theta, but the objective has no "
                                              "mixedTangentProduct(w, t, dtheta, out) to propagate it"));
      }
      m_movesTheta[static_cast<std::size_t>(h)] = 1;
    }
    for (int s = 0; s < S; ++s) m_tangents[static_cast<std::size_t>(s)] = Eigen::MatrixXd::Zero(H, N);
    for (Index h = 0; h < H; ++h)
      for (const auto& e : m_directions.direction(h).initial)
        m_tangents[static_cast<std::size_t>(e.first)](h, e.second.first) = e.second.second;
    m_gradientTangents.resize(H, N);
    const auto G = static_cast<std::size_t>(opt.layout().numGroups());
    m_productTangents.assign(static_cast<std::size_t>(H) * static_cast<std::size_t>(J) * G, 0.0);
    m_scheduleTangents.assign(m_productTangents.size(), 0.0);
    m_cursors.assign(static_cast<std::size_t>(H), 0);
    readState(opt);
    m_t = 0;
    m_hessianProducts = 0;
    m_began = true;
  }

  /// Carries the tangents over step t (train() calls it after the step, with g = g_t).
  template <class Optimizer>
  void onForwardStep(const Optimizer& opt, Index t, const Eigen::VectorXd& g) {
    if (!m_began || t != m_t) {
      throw InvalidState(detail::message("forward mode: step ", t, " seen after ", m_t,
                                         " steps; the tangents follow one run from iteration 0 (train() from the start)"));
    }
    const Index H = m_directions.size(), N = opt.size(), G = opt.layout().numGroups();
    const Eigen::VectorXd& w = m_state[0];  // w_t
    takeScheduleTangents(t, G);
    // ∂g_t/∂λ_h = H_t Z_w,h + (∂_θ ∇_w L) ∂θ/∂λ_h.
    Eigen::VectorXd z(N), hz(N), jt(N), dtheta;
    for (Index h = 0; h < H; ++h) {
      z = m_tangents[0].row(h).transpose();
      const bool moved = !z.isZero(0.0);
      if (moved) {
        m_f->hessianVectorProduct(w, t, z, hz);
        ++m_hessianProducts;
        checkProduct(hz, N, "Hessian-vector product", t, h);
      } else {
        hz.setZero(N);
      }
      if constexpr (detail::HasMixedTangentProduct<Objective>::value) {
        if (m_movesTheta[static_cast<std::size_t>(h)] != 0) {
          dtheta.setZero(m_directions.numHyperparameters());
          for (const auto& p : m_directions.direction(h).theta) dtheta(p.first) += p.second;
          m_f->mixedTangentProduct(w, t, dtheta, jt);
          checkProduct(jt, N, "mixed tangent product", t, h);
          hz += jt;
        }
      }
      m_gradientTangents.row(h) = hz.transpose();
    }
    // The rule's element code on dual numbers, hyperparameter by hyperparameter.
    std::vector<typename Optimizer::Coefficients> coefficients;
    opt.coefficients(t, coefficients);
    std::vector<std::array<detail::DualEntry, static_cast<std::size_t>(J + D)>> entries(static_cast<std::size_t>(H));
    for (Index k = 0; k < G; ++k) {
      dualEntries(coefficients[static_cast<std::size_t>(k)], k, G, entries);
      const ParameterGroup& grp = opt.layout().group(k);
      for (Index i = grp.offset; i < grp.offset + grp.size; ++i) {
        for (Index h = 0; h < H; ++h) {
          std::array<double, static_cast<std::size_t>(S)> v, d;
          for (int s = 0; s < S; ++s) {
            v[static_cast<std::size_t>(s)] = m_state[static_cast<std::size_t>(s)](i);
            d[static_cast<std::size_t>(s)] = m_tangents[static_cast<std::size_t>(s)](h, i);
          }
          detail::DualElement<S> e(v.data(), d.data());
          const auto& c = entries[static_cast<std::size_t>(h)];
          const detail::Dual gi{g(i), m_gradientTangents(h, i)};
          Rule::forwardState(e, c, gi);
          if constexpr (detail::weightsReadGradient<Rule>()) Rule::forwardWeights(e, c, gi);
          else Rule::forwardWeights(e, c);
          for (int s = 0; s < S; ++s) m_tangents[static_cast<std::size_t>(s)](h, i) = d[static_cast<std::size_t>(s)];
        }
      }
    }
    readState(opt);
    m_t = t + 1;
  }

  /// ∂f/∂λ for meta objective `meta` at weights `w` (the run's current weights): ∇f(w)ᵀ Z_w, plus
  /// ∂f/∂θ · ∂θ/∂λ when the meta objective has hyperGradient().
  template <class Meta>
  DirectionalHypergradients hypergradients(const Meta& meta, const Eigen::VectorXd& w) const {
    checkMetaObjective<Meta>();
    if (!m_began) throw InvalidState("forward mode: no run seen yet (train() with the tangents first)");
    DirectionalHypergradients r;
    r.method = "forward";
    r.names = m_directions.names();
    r.finalWeights = w;
    Eigen::VectorXd gf(w.size());
    r.metaObjective = meta.valueAndGradient(w, gf);
    if (gf.size() != w.size() || !gf.allFinite() || !std::isfinite(r.metaObjective))
      throw NonFiniteValue("forward mode: the meta objective or its gradient at the final weights is not finite (or sized wrongly)");
    r.values = m_tangents[0] * gf;
    if constexpr (detail::HasHyperGradient<Meta>::value) {
      Eigen::VectorXd dtheta;
      meta.hyperGradient(w, dtheta);
      r.values += m_directions.projectTheta(dtheta);
    }
    r.iterations = m_t;
    r.hessianProducts = m_hessianProducts;
    r.memoryBytes = memoryBytes();
    return r;
  }

  /// Z_s = ∂(state s after the steps seen)/∂λ, H × N (row h: hyperparameter h).
  const Eigen::MatrixXd& tangents(Index s) const { return m_tangents.at(static_cast<std::size_t>(s)); }
  /// The hyperparameters.
  const HyperparameterDirections<Rule>& directions() const noexcept { return m_directions; }
  /// Steps carried since onTrainBegin().
  Index iteration() const noexcept { return m_t; }
  /// Hessian-vector products evaluated so far.
  Index hessianProducts() const noexcept { return m_hessianProducts; }
  /// Bytes of the tangents and the per-step copies of the state (O(N·H)).
  std::size_t memoryBytes() const noexcept {
    std::size_t doubles = static_cast<std::size_t>(m_gradientTangents.size());
    for (int s = 0; s < S; ++s)
      doubles += static_cast<std::size_t>(m_tangents[static_cast<std::size_t>(s)].size() +
                                          m_state[static_cast<std::size_t>(s)].size());
    return sizeof(double) * (doubles + m_productTangents.size() + m_scheduleTangents.size());
  }

 private:
  std::size_t at(Index h, int j, Index k, Index G) const {
    return (static_cast<std::size_t>(h) * static_cast<std::size_t>(J) + static_cast<std::size_t>(j)) *
               static_cast<std::size_t>(G) + static_cast<std::size_t>(k);
  }

  template <class Optimizer>
  void readState(const Optimizer& opt) {
    const auto reader = opt.stateReader();
    for (int s = 0; s < S; ++s) {
      Eigen::VectorXd& x = m_state[static_cast<std::size_t>(s)];
      x.resize(opt.size());
      for (Index i = 0; i < x.size(); ++i) x(i) = reader.value(s, i);
    }
  }

  // The schedules' tangents at iteration t, H × J × G, from each direction's sorted entries.
  void takeScheduleTangents(Index t, Index G) {
    std::fill(m_scheduleTangents.begin(), m_scheduleTangents.end(), 0.0);
    for (Index h = 0; h < m_directions.size(); ++h) {
      const auto& entries = m_directions.direction(h).schedules;
      std::size_t& c = m_cursors[static_cast<std::size_t>(h)];
      for (; c < entries.size() && entries[c].iteration == t; ++c)
        m_scheduleTangents[at(h, entries[c].schedule, entries[c].group, G)] += entries[c].value;
    }
  }

  // Group k's coefficients with their tangents for every hyperparameter; advances the running
  // products' tangents (∂P_t = ∂P_{t−1} β_t + P_{t−1} ∂β_t) and those of the bias corrections
  // (debias = 1/(1 − P): ∂debias = ∂P · debias²), as the schedules compute them (schedule_set.hpp).
  template <class Coefficients>
  void dualEntries(const Coefficients& c, Index k, Index G,
                   std::vector<std::array<detail::DualEntry, static_cast<std::size_t>(J + D)>>& entries) {
    for (Index h = 0; h < m_directions.size(); ++h) {
      auto& e = entries[static_cast<std::size_t>(h)];
      for (int j = 0; j < J; ++j) {
        const auto& cj = c[static_cast<std::size_t>(j)];
        detail::DualEntry& ej = e[static_cast<std::size_t>(j)];
        const double dc = m_scheduleTangents[at(h, j, k, G)];
        ej.value = {cj.value, dc};
        ej.product = {cj.product, 0.0};
        ej.previousProduct = {cj.previousProduct, 0.0};
        ej.debias = {cj.debias, 0.0};
        if (Rule::schedules[static_cast<std::size_t>(j)].domain == ScheduleDomain::Ratio) {
          double& dProduct = m_productTangents[at(h, j, k, G)];
          ej.previousProduct.d = dProduct;
          dProduct = dProduct * cj.value + cj.previousProduct * dc;
          ej.product.d = dProduct;
          if (cj.product != 1.0) ej.debias.d = dProduct * cj.debias * cj.debias;
        }
      }
      if constexpr (D > 0) {
        std::array<detail::Dual, static_cast<std::size_t>(J)> values;
        for (int j = 0; j < J; ++j) values[static_cast<std::size_t>(j)] = e[static_cast<std::size_t>(j)].value;
        for (int d = 0; d < D; ++d) {
          // The value used (a quantised ratio), with the tangent of the rule's expression.
          const detail::Dual derived = Rule::derive(d, values);
          e[static_cast<std::size_t>(J + d)].value = {c[static_cast<std::size_t>(J + d)].value, derived.d};
        }
      }
    }
  }

  void checkProduct(const Eigen::VectorXd& x, Index N, const char* what, Index t, Index h) const {
    if (x.size() != N || !x.allFinite()) {
      throw NonFiniteValue(detail::message("forward mode: the objective's ", what, " at iteration ", t,
                                           " along hyperparameter '", m_directions.name(h), "' has ", x.size(),
                                           " entries (expected ", N, ")", x.allFinite() ? "" : " and a non-finite one"));
    }
  }

  const Objective* m_f;
  HyperparameterDirections<Rule> m_directions;
  std::array<Eigen::MatrixXd, static_cast<std::size_t>(S)> m_tangents;  // Z_s, H × N
  std::array<Eigen::VectorXd, static_cast<std::size_t>(S)> m_state;     // the state at m_t
  Eigen::MatrixXd m_gradientTangents;                                   // ∂g_t/∂λ, H × N
  std::vector<double> m_productTangents, m_scheduleTangents;            // H × J × G
  std::vector<std::size_t> m_cursors;
  std::vector<unsigned char> m_movesTheta;
  Index m_t = 0;
  Index m_hessianProducts = 0;
  bool m_began = false;
};

/// \brief Forward-mode hypergradients of `meta` along `directions`: trains `opt` from iteration 0
/// (after start()) to the end of its schedules with ForwardTangents riding along (and any further
/// train() callbacks), then returns ∂f/∂λ_h at the final weights, method "forward". The run stays
/// at its end, so the exact reverse pass can differentiate the same run afterwards.
///
/// Failure: InvalidState unless `opt` is started and at iteration 0; InvalidArgument for directions
/// that do not fit; a failing step or callback makes train() undo the steps taken, so the
/// optimizer is at iteration 0 as before, and the exception is rethrown — as it is when the meta
/// objective fails at the end, after the steps were undone (opt.unstep(f)).
template <class Optimizer, class Objective, class Meta, class... Callbacks>
DirectionalHypergradients forwardHypergradients(Optimizer& opt, const Objective& f, const Meta& meta,
                                                const HyperparameterDirections<typename Optimizer::RuleType>& directions,
                                                Callbacks&&... callbacks) {
  checkMetaObjective<Meta>();
  const auto begin = std::chrono::steady_clock::now();
  ForwardTangents<typename Optimizer::RuleType, Objective> tangents(f, directions);
  train(opt, f, tangents, std::forward<Callbacks>(callbacks)...);
  DirectionalHypergradients r;
  try {
    r = tangents.hypergradients(meta, opt.weights());
  } catch (...) {
    const std::exception_ptr error = std::current_exception();
    try {
      while (opt.iteration() > 0) opt.unstep(f);
    } catch (...) {  // consistent at opt.iteration(); the first error matters more
    }
    std::rethrow_exception(error);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  return r;
}

}  // namespace hypergrad
