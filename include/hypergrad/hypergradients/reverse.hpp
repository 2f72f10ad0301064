// SPDX-License-Identifier: MIT
#pragma once

/// \file reverse.hpp
/// \brief The reverse pass, for any update rule: exact hypergradients of a meta objective
/// f(w_{T+1}) with respect to the rule's schedules, the initial state and the training
/// objective's hyperparameters θ, by running the optimizer backwards (Maclaurin et al.\ 2015,
/// Alg.\ 2; DESIGN.md §1). It stores no trajectory: memory is O(N) plus the information buffer.
///
/// Per step t, from the adjoints of the state after the step: the rule's adjointWeights at the
/// post-step state (and its Hessian direction u when that does not need g_t), the exact
/// unstepWeights(), one fused objective call for g_t, H_t u and (∂_θ g_t)ᵀ u at w_t, the exact
/// unstepOptimizerState(g_t), the rule's adjointState at the pre-step state, then
/// dw += H_t u and dθ += (∂_θ g_t)ᵀ u. Nothing here knows the rule: its element code does the
/// rule-specific part (optimizers/concept.hpp).
///
/// **What reverse() needs of an optimizer** (ReversibleOptimizer; ReferenceOptimizer with a
/// stored trajectory, the naive baseline): `RuleType`, `Coefficients`, `iteration()`,
/// `numIterations()`, `size()`, `layout()`, `halfStep()`, `weights()`, `weights(out)`,
/// `coefficients(t, out)`, `stateReader()` (`.value(s, i)`), `unstepWeights()`,
/// `restepWeights()`, `unstepOptimizerState(g)`, `step(f)` and `checkRecoveredStart()`; optionally
/// `prepareReverseStep(f)`, called before each reverse step (CheckpointedOptimizer recomputes the
/// step's segment there).

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../callbacks.hpp"
#include "../config.hpp"
#include "../errors.hpp"
#include "../layout.hpp"
#include "../objective.hpp"
#include "../optimizers/detail/arguments.hpp"
#include "result.hpp"
#include "train.hpp"

namespace hypergrad {
namespace detail {

// Throws NonFiniteValue naming the iteration, the entry and (for w-sized vectors) its group.
inline void checkFiniteProduct(const Eigen::VectorXd& x, const char* what, Index t, const ParameterLayout* layout,
                               Index offset = 0) {
  for (Index xi = 0; xi < x.size(); ++xi) {
    if (std::isfinite(x(xi))) continue;
    const Index i = xi + offset;
    std::string group;
    if (layout != nullptr)
      for (const ParameterGroup& grp : layout->groups())
        if (i >= grp.offset && i < grp.offset + grp.size) group = detail::message(", group '", grp.name, "'");
    throw NonFiniteValue(detail::message("reverse: the ", what, " at iteration ", t, group, ", entry ", i, " is ", x(xi),
                                         ". The optimizer is back where reverse() started (iteration unchanged); "
                                         "check the objective's second derivatives there"));
  }
}

/// The adjoint context the rule's adjoint code sees for element i (optimizers/concept.hpp).
template <class Reader, int S>
class AdjointElement {
 public:
  AdjointElement(const Reader& reader, Eigen::VectorXd* adjoints, Index i, double* u, const double* g,
                 double* scheduleSums, double* productSums) noexcept
      : m_reader(reader), m_adjoints(adjoints), m_i(i), m_u(u), m_g(g), m_sums(scheduleSums), m_products(productSums) {}

  double value(int s) const noexcept { return m_reader.value(s, m_i); }
  double& adjoint(int s) noexcept { return m_adjoints[s].data()[m_i]; }
  double gradient() const noexcept { return m_g[m_i]; }
  double& direction() noexcept { return m_u[m_i]; }
  double& scheduleGradient(int j) noexcept { return m_sums[j]; }
  double& productGradient(int j) noexcept { return m_products[j]; }

 private:
  const Reader& m_reader;
  Eigen::VectorXd* m_adjoints;
  Index m_i;
  double* m_u;
  const double* m_g;
  double* m_sums;
  double* m_products;
};

enum class AdjointPhase { Weights, Direction, State };

/// The elements whose schedule-gradient contributions are summed together: the per-group sums
/// (∂f/∂α_{t,k} = Σ_{i ∈ k} …) are added within each piece — a group cut at the multiples of the
/// information buffer's block size — and then piece by piece. The boundaries depend on the
/// layout and the block size only, never on threads or processes: a process that owns whole
/// blocks (ShardedOptimizer) computes its pieces' sums exactly as one process does, and the
/// pieces' sums combine into the same bits.
struct SumPiece {
  Index group = 0;  ///< The parameter group.
  Index begin = 0;  ///< The first element.
  Index end = 0;    ///< One past the last element.
};
/// Elements per summation block (see SumPiece) for optimizers without an information buffer
/// (the reference optimizer): the buffer's default block size.
constexpr Index kScheduleSumBlock = 4096;

template <class, class = void>
struct HasBlockSize : std::false_type {};
template <class O>
struct HasBlockSize<O, std::void_t<decltype(Index(std::declval<const O&>().blockSize()))>> : std::true_type {};

/// The summation block of `opt`'s reverse pass: its buffer's block size, else kScheduleSumBlock.
template <class Optimizer>
Index sumBlockSize(const Optimizer& opt) {
  if constexpr (HasBlockSize<Optimizer>::value) return opt.blockSize();
  else return kScheduleSumBlock;
}

/// The pieces of `layout`'s elements [first, last), in element order, for summation blocks of
/// `block` elements.
inline std::vector<SumPiece> sumPieces(const ParameterLayout& layout, Index first, Index last,
                                       Index block = kScheduleSumBlock) {
  std::vector<SumPiece> pieces;
  for (Index k = 0; k < layout.numGroups(); ++k) {
    const ParameterGroup& grp = layout.group(k);
    Index i = std::max(grp.offset, first);
    const Index end = std::min(grp.offset + grp.size, last);
    while (i < end) {
      const Index blockEnd = std::min(end, (i / block + 1) * block);
      pieces.push_back({k, i, blockEnd});
      i = blockEnd;
    }
  }
  return pieces;
}

/// Adds the pieces' sums (columns of `pieceSums`, J × pieces) into their groups' columns of
/// `sums` (J × G, which the caller zeroed), piece by piece in element order.
inline void addPieces(const std::vector<SumPiece>& pieces, const Eigen::MatrixXd& pieceSums, Eigen::MatrixXd& sums) {
  for (std::size_t p = 0; p < pieces.size(); ++p) sums.col(pieces[p].group) += pieceSums.col(static_cast<Index>(p));
}

/// One adjoint phase of step t over every element, piece by piece (SumPiece): the schedule sums
/// accumulate in element order into column p of `sums` (J × pieces), those of the running
/// products into column p of `productSums`: a fixed summation order. The state, the adjoints, u
/// and g hold elements from `offset` on (a sharded optimizer's slice; 0 otherwise).
template <class Rule, class Reader, class Coefficients>
void adjointPass(AdjointPhase phase, bool withDirection, const Reader& reader, const std::vector<SumPiece>& pieces,
                 Index offset, const std::vector<Coefficients>& coefficients, Eigen::VectorXd* adjoints,
                 double* u,  // NOLINT(readability-non-const-parameter): the rule's direction() writes it
                 const double* g,
                 Eigen::MatrixXd& sums, Eigen::MatrixXd& productSums) {
  constexpr std::size_t J = Rule::numSchedules > 0 ? static_cast<std::size_t>(Rule::numSchedules) : 1;
  for (std::size_t p = 0; p < pieces.size(); ++p) {
    const SumPiece& piece = pieces[p];
    const Index k = static_cast<Index>(p);
    const Coefficients& c = coefficients[static_cast<std::size_t>(piece.group)];
    // The group's running sums live in locals, which the compiler keeps in registers: through
    // the matrices' memory every element's add waited for the previous one's store (a third of
    // the adjoint passes' time). Same additions in the same order: the same bits.
    std::array<double, J> sum{}, productSum{};
    for (std::size_t j = 0; j < static_cast<std::size_t>(Rule::numSchedules); ++j) {
      sum[j] = sums(static_cast<Index>(j), k);
      productSum[j] = productSums(static_cast<Index>(j), k);
    }
    for (Index i = piece.begin - offset; i < piece.end - offset; ++i) {
      AdjointElement<Reader, Rule::numStates> b(reader, adjoints, i, u, g, sum.data(), productSum.data());
      if (phase == AdjointPhase::Weights) {
        Rule::adjointWeights(b, c);
        if (withDirection) Rule::direction(b, c);
      } else if (phase == AdjointPhase::Direction) {
        Rule::direction(b, c);
      } else {
        Rule::adjointState(b, c);
      }
    }
    for (std::size_t j = 0; j < static_cast<std::size_t>(Rule::numSchedules); ++j) {
      sums(static_cast<Index>(j), k) = sum[j];
      productSums(static_cast<Index>(j), k) = productSum[j];
    }
  }
}

/// The running products' share of step t's schedule sums. With P_t = β_0 ⋯ β_t and pg_t =
/// ∂f/∂P_t, ∂f/∂β_t gains Σ_{t' ≥ t} pg_{t'} ∂P_{t'}/∂β_t = P_{t−1} U_t, where
/// U_t = pg_t + β_{t+1} U_{t+1} (`tails`, carried down from t + 1 with `next` = β_{t+1}): no
/// division, so a β of 0 gets its derivative too. Entries whose U is zero are left alone, so
/// rules that read no product get bit-identical results.
template <class Coefficients>
void chainProducts(const std::vector<Coefficients>& coefficients, const Eigen::MatrixXd& productSums,
                   Eigen::MatrixXd& tails, Eigen::MatrixXd& next, Eigen::MatrixXd& sums) {
  for (Index k = 0; k < sums.cols(); ++k)
    for (Index j = 0; j < sums.rows(); ++j) {
      const auto& c = coefficients[static_cast<std::size_t>(k)][static_cast<std::size_t>(j)];
      tails(j, k) = productSums(j, k) + next(j, k) * tails(j, k);
      next(j, k) = c.value;
      if (tails(j, k) != 0.0) sums(j, k) += c.previousProduct * tails(j, k);
    }
}

template <class, class = void>
struct HasBuffer : std::false_type {};
template <class O>
struct HasBuffer<O, std::void_t<decltype(std::declval<const O&>().buffer().informationBits())>> : std::true_type {};

/// An optimizer that must get ready before each reverse step, with the objective at hand
/// (CheckpointedOptimizer recomputes a segment from its checkpoint).
template <class, class, class = void>
struct HasPrepareReverseStep : std::false_type {};
template <class O, class F>
struct HasPrepareReverseStep<O, F, std::void_t<decltype(std::declval<O&>().prepareReverseStep(std::declval<const F&>()))>>
    : std::true_type {};

template <class, class = void>
struct HasForwardSeconds : std::false_type {};
template <class O>
struct HasForwardSeconds<O, std::void_t<decltype(double(std::declval<const O&>().forwardSeconds()))>> : std::true_type {};

/// The statistics reverse() can take before it changes anything.
template <class Optimizer>
RunStatistics runStatistics(const Optimizer& opt, Index T) {
  RunStatistics s;
  s.iterations = T;
  if constexpr (HasBuffer<Optimizer>::value) {
    s.informationBits = opt.buffer().informationBits();
    s.bufferBytes = opt.buffer().memoryBytes();
  }
  if constexpr (HasForwardSeconds<Optimizer>::value) s.forwardSeconds = opt.forwardSeconds();
  for (Index j = 0; j < Optimizer::RuleType::numSchedules; ++j) s.schedulesUsed.push_back(opt.scheduleValues(j));
  return s;
}

/// After a failed reverse step: back to iteration T, exactly (the steps already reversed are
/// taken again; the objective recomputes their gradients, which the run record checks).
template <class Optimizer, class Objective>
void restoreAfterFailedReverse(Optimizer& opt, const Objective& f, Index T) noexcept {
  try {
    if (opt.halfStep()) opt.restepWeights();
    while (opt.iteration() < T) opt.step(f);
  } catch (...) {  // consistent at opt.iteration(); the caller rethrows the first error
  }
}

}  // namespace detail

namespace detail {
template <class Optimizer, class Objective, class Meta, class... Callbacks>
HypergradientResult<typename Optimizer::RuleType> reverseLastSteps(Optimizer& opt, const Objective& f, const Meta& meta,
                                                                   Index steps, Callbacks&&... callbacks);
}  // namespace detail

/// Reverses every step `opt` has taken, accumulating hypergradients of `meta` at the current
/// weights, and verifies that the initial state was recovered bit for bit with an empty buffer
/// (throws ExactnessViolation otherwise). Per step: one gradient, one Hessian-vector product and
/// one mixed product at the recomputed w_t, from the objective's fused reverseStep when it has
/// one, or its reverseStepWithDirection when the rule's direction needs g_t (objective.hpp).
///
/// Failure: if a step fails — the objective throws or returns wrongly sized or non-finite
/// products, its gradient does not match the forward run's (ExactnessViolation), a callback
/// throws — the steps already reversed are taken forward again, so the optimizer is exactly as
/// before the call (at the same iteration, with the run intact to be reversed again), and the
/// exception is rethrown. Should the objective fail again while steps are re-taken, the optimizer
/// is left consistent at opt.iteration().
template <class Optimizer, class Objective, class Meta, class... Callbacks>
HypergradientResult<typename Optimizer::RuleType> reverse(Optimizer& opt, const Objective& f, const Meta& meta,
                                                          Callbacks&&... callbacks) {
  return detail::reverseLastSteps(opt, f, meta, -1, std::forward<Callbacks>(callbacks)...);
}

/// \brief Truncated reverse (Shaban et al. 2019): differentiates only the last `steps` = K steps
/// of the run, 1 ≤ K ≤ T, at K / T of the reverse pass's cost (plus K forward steps to return).
///
/// Rows t ≥ T − K of every schedule hypergradient, and the whole-run hypergradients' shares from
/// those steps, are **bit-identical** to those of the full reverse() (its backward recursion
/// computes them first); rows t < T − K are 0, so a hyperparameter shared over the whole run
/// (a constant α, θ) gets the truncated sum — the truncation bias. `initialWeights` and the other
/// initial states hold ∂f/∂(state at iteration T − K), where the truncation starts, and
/// statistics.stepsDifferentiated = K. Afterwards the K steps are taken forward again, so the
/// optimizer is back at iteration T, its weights checked bit for bit against w_{T+1}
/// (ExactnessViolation otherwise): the run can still be reversed in full. K = T is reverse(),
/// start check included. Failures as for reverse().
template <class Optimizer, class Objective, class Meta, class... Callbacks>
HypergradientResult<typename Optimizer::RuleType> reverseTruncated(Optimizer& opt, const Objective& f, const Meta& meta,
                                                                   Index steps, Callbacks&&... callbacks) {
  if (steps < 1 || steps > opt.iteration()) {
    throw InvalidArgument(detail::message("reverseTruncated: ", steps, " steps to differentiate, but the run has ",
                                          opt.iteration(), "; give 1 <= steps <= ", opt.iteration()));
  }
  return detail::reverseLastSteps(opt, f, meta, steps, std::forward<Callbacks>(callbacks)...);
}

namespace detail {
/// reverse() (steps = −1: all) and reverseTruncated() (the last `steps`).
template <class Optimizer, class Objective, class Meta, class... Callbacks>
HypergradientResult<typename Optimizer::RuleType> reverseLastSteps(Optimizer& opt, const Objective& f, const Meta& meta,
                                                                   Index steps, Callbacks&&... callbacks) {
  using Rule = typename Optimizer::RuleType;
  using Coefficients = typename Optimizer::Coefficients;
  constexpr int S = Rule::numStates;
  checkObjective<Objective>();
  checkMetaObjective<Meta>();
  const Index T = opt.iteration();
  if (T == 0) {
    throw InvalidState("reverse: the optimizer is at iteration 0: there is nothing to reverse (run the forward pass "
                       "first; a run can be reversed once)");
  }
  if (opt.halfStep()) {
    throw InvalidState("reverse: a reverse step is half done (after unstepWeights()); finish it or call "
                       "restepWeights() first");
  }
  // A sharded optimizer (ShardedOptimizer) reverses this process's slice [offset, offset + n) of
  // the N parameters: the adjoints, u, g and H u are slices there, w and θ whole.
  constexpr bool sharded = detail::IsSharded<Optimizer>::value;
  const Index N = opt.size();
  Index n = N, offset = 0;
  if constexpr (sharded) {
    n = opt.sliceSize();
    offset = opt.sliceBegin();
  }
  const Index numGroups = opt.layout().numGroups();
  if (f.numParameters() != N) {
    throw InvalidArgument(detail::message("reverse: the objective has ", f.numParameters(),
                                          " parameters but the optimizer has ", N));
  }

  const Index K = steps < 0 ? T : steps;  // the last K steps are differentiated
  const auto clockStart = std::chrono::steady_clock::now();
  HypergradientResult<Rule> out;
  out.statistics = detail::runStatistics(opt, T);
  out.statistics.stepsDifferentiated = K;
  out.finalWeights = opt.weights();
  std::array<Eigen::VectorXd, static_cast<std::size_t>(S)> adjoints;
  Eigen::VectorXd& dw = adjoints[0];
  dw.resize(N);
  out.metaObjective = meta.valueAndGradient(out.finalWeights, dw);
  if (dw.size() != N) {
    throw InvalidArgument(detail::message("reverse: the meta objective's gradient has ", dw.size(), " entries, expected ", N));
  }
  if (!dw.allFinite() || !std::isfinite(out.metaObjective))
    throw NonFiniteValue("reverse: the meta objective or its gradient at the final weights is not finite");
  if constexpr (sharded) dw = dw.segment(offset, n).eval();  // every process computed it whole
  for (int s = 1; s < S; ++s) adjoints[static_cast<std::size_t>(s)] = Eigen::VectorXd::Zero(n);

  const Index numHyper = f.numHyperparameters();
  Eigen::VectorXd dtheta = Eigen::VectorXd::Zero(numHyper);
  if constexpr (detail::HasHyperGradient<Meta>::value) {
    meta.hyperGradient(out.finalWeights, dtheta);
    if (dtheta.size() != numHyper) {
      throw InvalidArgument(detail::message("reverse: the meta objective's hyperGradient has ", dtheta.size(),
                                            " entries but the objective has ", numHyper, " hyperparameters"));
    }
    detail::checkFiniteProduct(dtheta, "meta objective's hyperGradient", T, nullptr);
  }
  for (Index j = 0; j < Rule::numSchedules; ++j) out.schedule(j) = Eigen::MatrixXd::Zero(opt.numIterations(), numGroups);

  Eigen::VectorXd u(n), w(N), g(n), hu(n), mixed(numHyper);
  const ParameterLayout& layout = opt.layout();
  const Index sumBlock = detail::sumBlockSize(opt);
  const std::vector<detail::SumPiece> pieces = detail::sumPieces(layout, offset, offset + n, sumBlock);
  const auto numPieces = static_cast<Index>(pieces.size());
  // Sharded: every process's pieces, gathered each step (the single process's pieces, in order).
  const std::vector<detail::SumPiece> allPieces = sharded ? detail::sumPieces(layout, 0, N, sumBlock) : std::vector<detail::SumPiece>();
  Eigen::MatrixXd allPieceSums, allPieceProductSums;
  // Per step: the schedule sums per piece and per group; ∂f/∂ (running product of ratio schedule
  // j at t) per piece and per group; and the recursion of chainProducts.
  Eigen::MatrixXd pieceSums(Rule::numSchedules, numPieces), pieceProductSums(Rule::numSchedules, numPieces);
  Eigen::MatrixXd sums(Rule::numSchedules, numGroups), productSums(Rule::numSchedules, numGroups),
      productTails = Eigen::MatrixXd::Zero(Rule::numSchedules, numGroups),
      nextValues = Eigen::MatrixXd::Zero(Rule::numSchedules, numGroups);
  std::vector<Coefficients> coefficients;
  try {
    if constexpr (sizeof...(Callbacks) > 0) {
      detail::runHooks(opt, T, "running a callback's onReverseBegin at iteration", [&] {
        (detail::callReverseBegin(callbacks, opt, out.metaObjective), ...);
        return false;
      });
    }
    for (Index t = T; t-- > T - K;) {
      if constexpr (detail::HasPrepareReverseStep<Optimizer, Objective>::value) opt.prepareReverseStep(f);
      opt.coefficients(t, coefficients);
      pieceSums.setZero();
      pieceProductSums.setZero();
      // Adjoint of the weights half at the post-step state (and u, unless it needs g_t).
      detail::adjointPass<Rule>(detail::AdjointPhase::Weights, !Rule::directionNeedsGradient, opt.stateReader(),
                                pieces, offset, coefficients, adjoints.data(), u.data(), nullptr, pieceSums,
                                pieceProductSums);
      opt.unstepWeights();  // w_t, exact
      if constexpr (!Rule::directionNeedsGradient) {
        // g_t, H_t u, (∂_θ g_t)ᵀ u from one pass
        if constexpr (sharded) {
          opt.reverseStep(f, t, u, g, hu, mixed);
        } else {
          opt.weights(w);
          reverseStep(f, w, t, u, g, hu, mixed);
        }
      } else {
        // g_t first, then u from it, then H_t u and the mixed product (one forward pass when the
        // objective has reverseStepWithDirection).
        const DirectionFunction direction = [&](const Eigen::VectorXd& gt, Eigen::VectorXd& ut) {
          if (gt.size() != n) {
            throw InvalidArgument(detail::message("reverse: at iteration ", t, " the objective's gradient has ",
                                                  gt.size(), " entries, expected ", n));
          }
          ut.resize(n);
          detail::adjointPass<Rule>(detail::AdjointPhase::Direction, true, opt.stateReader(), pieces, offset,
                                    coefficients, adjoints.data(), ut.data(), gt.data(), pieceSums, pieceProductSums);
        };
        if constexpr (sharded) {
          opt.reverseStepWithDirection(f, t, direction, u, g, hu, mixed);
        } else {
          opt.weights(w);
          reverseStepWithDirection(f, w, t, direction, u, g, hu, mixed);
        }
      }
      const auto checkProducts = [&] {
        if (g.size() != n || hu.size() != n || mixed.size() != numHyper) {
          throw InvalidArgument(detail::message("reverse: at iteration ", t, " the objective returned sizes ", g.size(),
                                                ", ", hu.size(), ", ", mixed.size(),
                                                " for the gradient, Hessian-vector product and mixed product; expected ",
                                                n, ", ", n, ", ", numHyper));
        }
        detail::checkFiniteProduct(hu, "Hessian-vector product", t, &layout, offset);
        detail::checkFiniteProduct(mixed, "mixed product", t, nullptr);
      };
      if constexpr (sharded) {
        // The checks see this process's slices: their outcome is agreed, so that every process
        // throws (and restores) together.
        std::exception_ptr local;
        try {
          checkProducts();
          opt.requireSameProcesses(f);
        } catch (...) {
          local = std::current_exception();
        }
        opt.agree(t, local, "checking its slices of the objective's products at iteration");
      } else {
        checkProducts();
      }
      opt.unstepOptimizerState(g);  // the other states at t, exact (checks g_t against the record)
      // Adjoint of the state half at the pre-step state.
      detail::adjointPass<Rule>(detail::AdjointPhase::State, false, opt.stateReader(), pieces, offset, coefficients,
                                adjoints.data(), u.data(), g.data(), pieceSums, pieceProductSums);
      dw += hu;
      dtheta += mixed;
      sums.setZero();
      productSums.setZero();
      if constexpr (sharded) {
        opt.gatherPieceSums(pieceSums, pieceProductSums, allPieceSums, allPieceProductSums);
        detail::addPieces(allPieces, allPieceSums, sums);
        detail::addPieces(allPieces, allPieceProductSums, productSums);
      } else {
        detail::addPieces(pieces, pieceSums, sums);
        detail::addPieces(pieces, pieceProductSums, productSums);
      }
      detail::chainProducts(coefficients, productSums, productTails, nextValues, sums);
      for (Index j = 0; j < Rule::numSchedules; ++j) out.schedule(j).row(t) = sums.row(j);
      [[maybe_unused]] const ReverseState state{g, dw, u, adjoints.data(), S};
      if constexpr (sizeof...(Callbacks) > 0) {
        detail::runHooks(opt, t, "running a callback's onReverseStep at iteration", [&] {
          (detail::callReverseStep(callbacks, opt, t, state), ...);
          return false;
        });
      }
    }
    if (K == T) opt.checkRecoveredStart();
    for (int s = 0; s < S; ++s) {
      if constexpr (sharded) out.initialState(s) = opt.gather(adjoints[static_cast<std::size_t>(s)], "gathering the initial-state hypergradients at iteration");
      else out.initialState(s) = std::move(adjoints[static_cast<std::size_t>(s)]);
    }
    if (K < T) {
      // Truncated: back to T, the K steps re-taken (the run record checks their gradients), and
      // the weights compared with w_{T+1} bit for bit.
      while (opt.iteration() < T) opt.step(f);
      opt.weights(w);
      if (w.size() != out.finalWeights.size() ||
          std::memcmp(w.data(), out.finalWeights.data(), sizeof(double) * static_cast<std::size_t>(w.size())) != 0) {
        throw ExactnessViolation(detail::message("reverseTruncated: after re-taking the last ", K,
                                                 " steps the weights differ from w_{T+1}: the objective is not a "
                                                 "deterministic function of (w, theta, t)"));
      }
    }
    out.hyperparameters = std::move(dtheta);
    out.hyperparameterLayout = hyperparameterLayout(f);
    out.statistics.reverseSeconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - clockStart).count();
    if constexpr (sizeof...(Callbacks) > 0) {
      detail::runHooks(opt, 0, "running a callback's onReverseEnd at iteration", [&] {
        (detail::callReverseEnd(callbacks, opt, out), ...);
        return false;
      });
    }
  } catch (...) {
    const std::exception_ptr error = std::current_exception();
    detail::restoreAfterFailedReverse(opt, f, T);
    std::rethrow_exception(error);
  }
  return out;
}
}  // namespace detail

namespace detail {
template <std::size_t NumInitial, class Optimizer, class Objective, class Meta, class Tuple, std::size_t... I,
          std::size_t... C>
HypergradientResult<typename Optimizer::RuleType> computeHypergradientsSplit(Optimizer& opt, const Objective& f,
                                                                             const Meta& meta, Tuple& args,
                                                                             std::index_sequence<I...> /*states*/,
                                                                             std::index_sequence<C...> /*callbacks*/) {
  opt.start(std::get<I>(args)...);
  train(opt, f, std::get<NumInitial + C>(args)...);
  return reverse(opt, f, meta, std::get<NumInitial + C>(args)...);
}
}  // namespace detail

/// Starts `opt` at the given initial states (weights first; the others default to zero), trains
/// for all its iterations and reverses: the whole computation in one call. The arguments after
/// the meta objective are the initial states (Eigen vectors or the optimizer's Fixed vectors),
/// then any callbacks. If training fails, the optimizer holds the new run at iteration 0; if the
/// reverse pass fails, the trained run (see reverse()), so it can be reversed again.
template <class Optimizer, class Objective, class Meta, class... Args>
HypergradientResult<typename Optimizer::RuleType> computeHypergradients(Optimizer& opt, const Objective& f,
                                                                        const Meta& meta, Args&&... args) {
  constexpr std::size_t numInitial = detail::leadingStateArguments<Args...>();
  static_assert(numInitial >= 1, "hypergrad::computeHypergradients: give at least the initial weights");
  auto all = std::forward_as_tuple(std::forward<Args>(args)...);
  return detail::computeHypergradientsSplit<numInitial>(opt, f, meta, all,
                                                        std::make_index_sequence<numInitial>(),
                                                        std::make_index_sequence<sizeof...(Args) - numInitial>());
}

}  // namespace hypergrad
