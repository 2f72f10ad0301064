// SPDX-License-Identifier: MIT
#pragma once

/// \file sharded_optimizer.hpp
/// \brief ShardedOptimizer: an exactly reversible optimizer whose state is cut among processes
/// (ZeRO-1): each process keeps only its slice of w, the other states (v; m and s for Adam) and
/// the information buffer, and the results — trajectory, hypergradients — are the single-process
/// ones bit for bit, at any number of processes.
///
/// **How.** The parameter vector is cut into one contiguous slice per process at multiples of the
/// information buffer's block size (ParameterSlicing, parallel/shard_distribution.hpp). Blocks are
/// independent word stacks, so a process's blocks are the single process's blocks and its exact
/// updates produce the same bits; its buffer holds exactly the single process's words for its
/// blocks (the processes' buffer bits add up to the single-process figure). Per forward step the
/// objective evaluates this process's shards of the batch and sends every process its slice of
/// each shard's gradient (MlpObjective::gradientSlice: an MPI_Alltoallv of N·shards values in
/// all), each process adds its slices in shard order — the single-process bits — updates its
/// slice, and the weights are all-gathered for the next gradient (N values). The reverse pass
/// (hypergradients/reverse.hpp) runs the same way: every process reverses its slice and runs the
/// adjoint code on it; the Hessian direction u is all-gathered for the products; the per-group
/// schedule sums are formed per buffer block (the reverse pass's SumPiece) and all-gathered, so
/// each group's sum is the single process's.
///
/// **What an objective must provide.** Besides the ordinary interface (objective.hpp), the sliced
/// entry points `gradientSlice(w, t, slicing, g)`, `reverseStepSlice(w, t, slicing, u, g, hu,
/// dθ)` and, for rules whose direction needs g (Adam), `reverseStepWithDirectionSlice(w, t,
/// slicing, direction, u, g, hu, dθ)`, collective over the same ShardDistribution; MlpObjective
/// has them.
///
/// **Failures.** Every operation is collective and atomic over the processes: a process that
/// fails (a FixedPointOverflow in its slice, a failing objective) brings its error into the next
/// agreement, every process throws the same DistributedError, and the processes whose part
/// succeeded undo it exactly — so all are as before the call. checkRecoveredStart() throws
/// ExactnessViolation on every process when any process's slice or buffer is not back.
/// Callbacks of train() and reverse() see this process's slices (g, the adjoints, u); the
/// processes agree after every hook, so a callback that throws on one process makes all throw,
/// and one that stops on one process stops all. What a callback does outside the library (its
/// own MPI calls, say) is its own to keep in step.
///
/// **Per process.** `buffer()`, `local()` and a result's statistics (information bits, buffer
/// bytes) are this process's; the hypergradients, `weights()` and `finalWeights` are whole. A run
/// is saved per process with `saveRun(opt.local(), file)` and loaded into a sharded optimizer of
/// the same configuration and number of processes with `loadLocalRun(...)` (collective).

#include <array>
#include <chrono>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "../exact/fingerprint.hpp"
#include "../hypergradients/reverse.hpp"
#include "../layout.hpp"
#include "../objective.hpp"
#include "../optimizers/detail/arguments.hpp"
#include "../optimizers/reversible_optimizer.hpp"
#include "../random.hpp"
#include "../schedule.hpp"
#include "shard_distribution.hpp"

namespace hypergrad {
namespace detail {
template <class, class = void>
struct HasShardDistribution : std::false_type {};
template <class F>
struct HasShardDistribution<F, std::void_t<decltype(std::declval<const F&>().shardDistribution())>> : std::true_type {};
}  // namespace detail

/// \brief An exactly reversible optimizer (`Optimizer`, a ReversibleOptimizer such as
/// SgdMomentum<> or ReversibleAdam<>) with its state sharded over the processes of a
/// ShardDistribution (see the file comment).
///
/// Every process constructs it with the same layout, schedules and options and calls the same
/// operations in the same order. `weights()` is the whole w on every process; the other states,
/// the buffer and the run record are this process's slice (`local()`). reverse() and
/// computeHypergradients() accept it as they accept the optimizer itself and return the whole
/// hypergradients on every process.
template <class Optimizer>
class ShardedOptimizer {
 public:
  using LocalOptimizer = Optimizer;                          ///< The optimizer of this process's slice.
  using RuleType = typename Optimizer::RuleType;             ///< The update rule.
  using Coefficients = typename Optimizer::Coefficients;     ///< One group's schedule entries at one t.
  using Schedules = typename Optimizer::Schedules;           ///< The validated schedules.
  static constexpr int numStates = RuleType::numStates;      ///< S.
  static constexpr int numSchedules = RuleType::numSchedules;  ///< J.

  /// \param distribution the processes (every one constructs the optimizer alike)
  /// \param layout       all parameters' groups
  /// \param schedules    the rule's schedules for all groups, T × G each
  /// \param options      as for the optimizer; the block size is also the slicing's unit
  /// \throws InvalidArgument as the optimizer does, and when some process would own no block
  ///         (fewer blocks than processes: use a smaller block size or fewer processes);
  ///         DistributedError on every process when the processes' schedules or block sizes
  ///         differ (the constructor is collective: every process constructs it)
  ShardedOptimizer(std::shared_ptr<const ShardDistribution> distribution, ParameterLayout layout,
                   std::array<Schedule, static_cast<std::size_t>(numSchedules)> schedules,
                   OptimizerOptions options = OptimizerOptions())
      : m_distribution(std::move(distribution)),
        m_layout(std::move(layout)),
        m_schedules(m_layout, schedules, /*quantizeRatios=*/true, RuleType::name, options.ratios),
        m_slicing(checkedSlicing(m_distribution, m_layout, options)),
        m_local(sliceLayout(m_layout, begin(), end()), sliceSchedules(schedules, m_layout, begin(), end()), options) {
    for (int r = 0; r < m_slicing.numProcesses(); ++r) {
      m_piecesOf.push_back(static_cast<Index>(
          detail::sumPieces(m_layout, m_slicing.begin(r), m_slicing.end(r), options.blockSize).size()));
    }
    // Collective: processes with other schedules, layouts or block sizes would slice and step
    // differently (and their exchanges would not match).
    std::uint64_t print = mix64(m_schedules.fingerprint() ^ static_cast<std::uint64_t>(options.blockSize));
    for (const ParameterGroup& grp : m_layout.groups()) print = mix64(print ^ static_cast<std::uint64_t>(grp.size));
    m_distribution->requireSame("the sharded optimizer's schedules, layout and block size", print);
  }

  /// The same with the schedules as separate arguments: `(distribution, layout, α, γ)` or
  /// `(distribution, layout, α, γ, options)`.
  template <class... Args, std::enable_if_t<detail::schedulesThen<static_cast<std::size_t>(numSchedules),
                                                                  OptimizerOptions, Args...>(),
                                            int> = 0>
  ShardedOptimizer(std::shared_ptr<const ShardDistribution> distribution, ParameterLayout layout, Args&&... args)
      : ShardedOptimizer(std::move(distribution), std::move(layout),
                         detail::takeSchedules<static_cast<std::size_t>(numSchedules)>(
                             std::forward_as_tuple(args...), std::make_index_sequence<static_cast<std::size_t>(numSchedules)>()),
                         detail::takeExtra<static_cast<std::size_t>(numSchedules), OptimizerOptions>(
                             std::forward_as_tuple(args...), OptimizerOptions())) {}

  // ---- Run (each operation collective) -------------------------------------------------------------

  /// Begins a run from the whole initial states (weights first; Eigen vectors of doubles, rounded
  /// to the grid as ReversibleOptimizer::start() rounds them; the same on every process, which
  /// is checked; each process keeps its slice). Throws leaving the previous run as it was, on
  /// every process.
  template <class... Initial>
  void start(const Initial&... initial) {
    static_assert(sizeof...(Initial) >= 1 && sizeof...(Initial) <= static_cast<std::size_t>(numStates),
                  "hypergrad: start() takes the initial weights and at most the rule's other states");
    std::uint64_t print = 0;
    std::exception_ptr error;
    std::optional<typename Optimizer::RunState> previous;
    try {
      (void)std::initializer_list<int>{(checkWhole(initial), print = mix64(print ^ wholePrint(initial)), 0)...};
      if (m_local.started()) previous = m_local.exportRun();
    } catch (...) {
      error = std::current_exception();
    }
    applyThenGather({0, 0, size(), print, "starting its slice of the run at iteration"}, error,
                    [&] { m_local.start(initial.segment(begin(), sliceSize())...); },
                    [&] {
                      if (previous) m_local.importRun(std::move(*previous));
                    });
    m_started = true;
    m_forwardSeconds = 0.0;
    m_lastLoss = std::numeric_limits<double>::quiet_NaN();
  }

  /// One forward step at t = iteration(): this process's slice of g_t (the objective's sliced
  /// exchange), the exact update of the slice, the weights all-gathered.
  template <class Objective>
  void step(const Objective& f) {
    requireForward("step");
    checkObjectiveSize(f.numParameters());
    const auto clock = std::chrono::steady_clock::now();
    const Index t = iteration();
    const double loss = f.gradientSlice(m_w, t, m_slicing, m_work);
    applyThenGather({t, 0, size(), fingerprint(m_w.data(), m_w.size()), "taking its optimizer step at iteration"}, nullptr,
                    [&] {
                      requireSameProcesses(f);
                      m_local.stepWithGradient(m_work);
                    },
                    [&] {  // exact: the step just taken, undone with its own gradient
                      m_local.unstepWeights();
                      m_local.unstepOptimizerState(m_work);
                    });
    m_g.swap(m_work);
    m_lastLoss = loss;
    m_forwardSeconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - clock).count();
  }

  /// First half of a reverse step: every process restores its slice of w_t; w_t is all-gathered.
  void unstepWeights() {
    requireStarted("unstepWeights");
    applyThenGather({iteration() - 1, 0, size(), fingerprint(m_w.data(), m_w.size()), "reversing its weights at iteration"},
                    nullptr, [&] { m_local.unstepWeights(); }, [&] { m_local.restepWeights(); });
  }

  /// Undoes unstepWeights() on every process.
  void restepWeights() {
    requireStarted("restepWeights");
    applyThenGather(
        {iteration() - 1, 0, size(), fingerprint(m_w.data(), m_w.size()), "re-taking its weights step at iteration"},
        nullptr, [&] { m_local.restepWeights(); }, [&] { m_local.unstepWeights(); });
  }

  /// Second half: each process restores its slice of the other states from its slice of g_t.
  void unstepOptimizerState(const Eigen::VectorXd& gSlice) {
    requireStarted("unstepOptimizerState");
    const Index t = iteration() - 1;
    std::exception_ptr error;
    bool done = false;
    try {
      m_local.unstepOptimizerState(gSlice);
      done = true;
    } catch (...) {
      error = std::current_exception();
    }
    try {
      m_distribution->agree({t, 0, size(), fingerprint(m_w.data(), m_w.size()), "reversing its optimizer state at iteration"},
                            error);
    } catch (...) {
      if (done) {  // exact: forward again from (w_t, state_t), then back to the half step
        m_local.stepWithGradient(gSlice);
        m_local.unstepWeights();
      }
      throw;
    }
  }

  /// The reverse step's objective call (reverse() calls it): this process's slices of g_t and
  /// H_t u from its slice of u, and the whole mixed product.
  template <class Objective>
  void reverseStep(const Objective& f, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& g, Eigen::VectorXd& hu,
                   Eigen::VectorXd& mixed) const {
    f.reverseStepSlice(m_w, t, m_slicing, u, g, hu, mixed);
  }
  /// The same for rules whose direction needs g_t: `direction(gSlice, uSlice)`.
  template <class Objective>
  void reverseStepWithDirection(const Objective& f, Index t, const DirectionFunction& direction, Eigen::VectorXd& u,
                                Eigen::VectorXd& g, Eigen::VectorXd& hu, Eigen::VectorXd& mixed) const {
    f.reverseStepWithDirectionSlice(m_w, t, m_slicing, direction, u, g, hu, mixed);
  }

  /// Every process's per-piece schedule sums (J × its pieces each, the reverse pass's SumPiece),
  /// all-gathered in element order: `all` = J × every piece.
  void gatherPieceSums(const Eigen::MatrixXd& sums, const Eigen::MatrixXd& productSums, Eigen::MatrixXd& all,
                       Eigen::MatrixXd& allProducts) const {
    const Index J = sums.rows();
    const int P = m_slicing.numProcesses();
    std::vector<Index> counts(static_cast<std::size_t>(P));
    Index total = 0;
    for (int r = 0; r < P; ++r) total += (counts[static_cast<std::size_t>(r)] = 2 * J * m_piecesOf[static_cast<std::size_t>(r)]);
    m_piecesLocal.resize(static_cast<std::size_t>(2 * sums.size()));
    std::copy_n(sums.data(), sums.size(), m_piecesLocal.data());
    std::copy_n(productSums.data(), productSums.size(), m_piecesLocal.data() + sums.size());
    m_piecesAll.resize(static_cast<std::size_t>(total));
    m_distribution->allGatherValues(m_piecesLocal.data(), counts.data(), m_piecesAll.data());
    all.resize(J, total / (2 * std::max<Index>(J, 1)));
    allProducts.resize(all.rows(), all.cols());
    const double* in = m_piecesAll.data();
    Index column = 0;
    for (int r = 0; r < P; ++r) {
      const Index p = m_piecesOf[static_cast<std::size_t>(r)];
      std::copy_n(in, J * p, all.data() + column * J);
      std::copy_n(in + J * p, J * p, allProducts.data() + column * J);
      in += 2 * J * p;
      column += p;
    }
  }

  /// Collective (train() and reverse() call it after callbacks): throws the same DistributedError
  /// on every process when `localError` is set on any; otherwise returns whether `stop` is true
  /// on any process.
  bool agreeOnStop(Index t, const std::exception_ptr& localError, bool stop, const char* operation) const {
    m_distribution->agree({t, 0, size(), 0, operation}, localError);
    const double mine = stop ? 1.0 : 0.0;
    std::vector<double> all(static_cast<std::size_t>(m_slicing.numProcesses()));
    const std::vector<Index> counts(all.size(), 1);
    m_distribution->allGatherValues(&mine, counts.data(), all.data());
    for (double x : all)
      if (x != 0.0) return true;
    return false;
  }

  /// Throws InvalidArgument unless the objective's shard distribution (when it has one) numbers
  /// this process as the optimizer's does: the sliced exchange sends slice r to the objective's
  /// rank r. (reverse() and step() carry this into their agreement.)
  template <class Objective>
  void requireSameProcesses(const Objective& f) const {
    if constexpr (detail::HasShardDistribution<Objective>::value) {
      const auto& d = f.shardDistribution();
      if (d && (d->rank() != m_distribution->rank() || d->numProcesses() != m_distribution->numProcesses())) {
        throw InvalidArgument(detail::message("ShardedOptimizer: the objective's shard distribution numbers this process ",
                                              d->rank(), " of ", d->numProcesses(), ", the optimizer's ",
                                              m_distribution->rank(), " of ", m_distribution->numProcesses(),
                                              "; give both the same processes in the same order (e.g. the same "
                                              "distribution object)"));
      }
    } else {
      static_cast<void>(f);
    }
  }

  /// This process's run (its slice: states, start, buffer, record), e.g. to save it per process
  /// with the snapshot format: `saveRun(opt.local(), file)` writes the same.
  typename Optimizer::RunState exportRun() const { return m_local.exportRun(); }

  /// \brief Collective: makes every process's `run` (its slice, from exportRun() or loadLocalRun())
  /// the current run. Throws on every process — each keeping its previous run — when any process's
  /// run does not fit its slice or the processes' runs are at different iterations.
  void importRun(typename Optimizer::RunState run) {
    const Index t = run.iteration;
    std::exception_ptr error;
    std::optional<typename Optimizer::RunState> previous;
    try {
      if (m_local.started()) previous = m_local.exportRun();
    } catch (...) {
      error = std::current_exception();
    }
    // The header's batch field is the iteration: processes at different iterations disagree.
    applyThenGather({t, 0, size(), 0, "importing its slice of a run at iteration"}, error,
                    [&] { m_local.importRun(std::move(run)); },
                    [&] {
                      if (previous) m_local.importRun(std::move(*previous));
                    });
    m_started = true;
    m_forwardSeconds = 0.0;
    m_lastLoss = std::numeric_limits<double>::quiet_NaN();
  }

  /// \brief Collective: loads this process's slice of a run saved with `saveRun(opt.local(), ...)`
  /// (optimizers/snapshot.hpp) by a sharded optimizer of the same configuration and number of
  /// processes, then importRun(). `load(optimizer)` reads it, e.g.
  /// `[&](auto& o) { hypergrad::loadRun(o, "run." + std::to_string(rank) + ".hgrun"); }`; it runs
  /// on a fresh optimizer of this process's slice, so a failure leaves the current run as it was.
  template <class Load>
  void loadLocalRun(Load&& load) {
    std::exception_ptr error;
    std::optional<typename Optimizer::RunState> run;
    try {
      Optimizer fresh(m_local.layout(), requestedSchedules(), m_local.options());
      load(fresh);
      run = fresh.exportRun();
    } catch (...) {
      error = std::current_exception();
    }
    m_distribution->agree({iteration(), 0, size(), 0, "loading its slice of a run at iteration"}, error);
    importRun(std::move(*run));
  }

  /// Collective: throws the same DistributedError on every process when `localError` is set on
  /// any (reverse() agrees on its checks of this process's slices with it).
  void agree(Index t, const std::exception_ptr& localError, const char* operation) const {
    m_distribution->agree({t, 0, size(), 0, operation}, localError);
  }

  /// A whole reverse step (as ReversibleOptimizer::unstep): unstepWeights(), this process's
  /// slice of g_t recomputed, unstepOptimizerState(g_t); the weights half is re-taken when the
  /// objective fails, so every process is as before the call.
  template <class Objective>
  void unstep(const Objective& f) {
    checkObjectiveSize(f.numParameters());
    unstepWeights();
    try {
      f.gradientSlice(m_w, iteration() - 1, m_slicing, m_work);
      unstepOptimizerState(m_work);  // collective and atomic: on failure still at the half step
    } catch (...) {
      restepWeights();
      throw;
    }
    m_g.swap(m_work);
  }

  /// Every process's slice of a vector (e.g. an initial-state hypergradient), gathered: the whole.
  Eigen::VectorXd gather(const Eigen::VectorXd& slice, const char* what) const {
    Eigen::VectorXd whole;
    m_distribution->allGatherSlices({iteration(), 0, size(), 0, what}, m_slicing, slice, whole, nullptr);
    return whole;
  }

  /// Throws ExactnessViolation on every process unless every process's slice is back at
  /// iteration 0, bit-identical to its start, with an empty buffer.
  void checkRecoveredStart() const {
    std::exception_ptr error;
    try {
      m_local.checkRecoveredStart();
    } catch (...) {
      error = std::current_exception();
    }
    try {
      m_distribution->agree({iteration(), 0, size(), 0, "checking the recovered start of its slice at iteration"}, error);
    } catch (const DistributedError& e) {
      throw ExactnessViolation(e.what());
    }
  }

  // ---- Accessors ----------------------------------------------------------------------------------

  Index size() const noexcept { return m_layout.size(); }  ///< N, all parameters.
  Index sliceBegin() const noexcept { return begin(); }  ///< This process's first parameter.
  Index sliceSize() const noexcept { return end() - begin(); }  ///< This process's number of parameters.
  const ParameterSlicing& slicing() const noexcept { return m_slicing; }  ///< Every process's slice.
  const ParameterLayout& layout() const noexcept { return m_layout; }  ///< All parameters' groups.
  Index numIterations() const noexcept { return m_local.numIterations(); }  ///< T.
  Index iteration() const noexcept { return m_local.iteration(); }  ///< Steps applied.
  bool halfStep() const noexcept { return m_local.halfStep(); }  ///< Between the two halves of a reverse step.
  bool started() const noexcept { return m_started; }  ///< True once start() succeeded on every process.
  Index blockSize() const noexcept { return m_local.blockSize(); }  ///< Elements per buffer block.
  const Schedules& schedules() const noexcept { return m_schedules; }  ///< All groups' schedules.
  /// The values schedule j's update uses, T × G (all groups).
  const Eigen::MatrixXd& scheduleValues(Index j) const { return m_schedules.used(j); }
  /// Every group's schedule entries at iteration t.
  void coefficients(Index t, std::vector<Coefficients>& out) const { m_schedules.fill(t, out); }
  /// This process's slice of the state, element by element (local indices).
  typename Optimizer::StateReader stateReader() const noexcept { return m_local.stateReader(); }
  /// The whole weights (the same on every process).
  const Eigen::VectorXd& weights() const noexcept { return m_w; }
  /// The whole weights into `out`.
  void weights(Eigen::VectorXd& out) const { out = m_w; }
  /// The optimizer of this process's slice: its states, buffer and run record.
  const Optimizer& local() const noexcept { return m_local; }
  /// This process's information buffer.
  const typename Optimizer::Buffer& buffer() const noexcept { return m_local.buffer(); }
  /// This process's slice of the gradient of the last forward step (or reverse step of unstep()).
  const Eigen::VectorXd& lastGradient() const noexcept { return m_g; }
  /// The minibatch loss of the last forward step (see ReversibleOptimizer::lastLoss()).
  double lastLoss() const noexcept { return m_lastLoss; }
  /// Wall seconds in step() since start().
  double forwardSeconds() const noexcept { return m_forwardSeconds; }
  /// The distribution.
  const std::shared_ptr<const ShardDistribution>& distribution() const noexcept { return m_distribution; }

 private:
  /// The pattern of every operation that changes the weights: this process's part `apply()`
  /// (which changes its slice, or throws changing nothing; skipped when `error` is already set),
  /// then the weights all-gathered together with every process's outcome. When any process
  /// failed, those whose part succeeded run `undo()` — exact — and all throw the same
  /// DistributedError; otherwise the whole weights become the gathered ones.
  template <class Apply, class Undo>
  void applyThenGather(const ShardExchangeHeader& header, std::exception_ptr error, Apply&& apply, Undo&& undo) {
    bool applied = false;
    if (!error) {
      try {
        apply();
        applied = true;
        m_local.weights(m_wSlice);
      } catch (...) {
        error = std::current_exception();
      }
    }
    try {
      m_distribution->allGatherSlices(header, m_slicing, m_wSlice, m_wNext, error);
    } catch (...) {
      if (applied) undo();
      throw;
    }
    m_w.swap(m_wNext);
  }

  Index begin() const noexcept { return m_slicing.begin(m_distribution->rank()); }
  Index end() const noexcept { return m_slicing.end(m_distribution->rank()); }

  std::array<Schedule, static_cast<std::size_t>(numSchedules)> requestedSchedules() const {
    std::array<Schedule, static_cast<std::size_t>(numSchedules)> out;
    for (std::size_t j = 0; j < out.size(); ++j) out[j] = m_local.schedule(static_cast<Index>(j));
    return out;
  }

  static ParameterSlicing checkedSlicing(const std::shared_ptr<const ShardDistribution>& distribution,
                                         const ParameterLayout& layout, const OptimizerOptions& options) {
    if (!distribution) throw InvalidArgument("ShardedOptimizer: the shard distribution is null");
    if (options.blockSize <= 0)
      throw InvalidArgument(detail::message(RuleType::name, ": the buffer block size is ", options.blockSize, "; it must be >= 1"));
    const int P = distribution->numProcesses();
    const Index blocks = (layout.size() + options.blockSize - 1) / options.blockSize;
    if (blocks < P) {
      throw InvalidArgument(detail::message(
          "ShardedOptimizer: ", layout.size(), " parameters in buffer blocks of ", options.blockSize, " make ", blocks,
          " block(s), fewer than the ", P, " processes, so some process would own no state; use a smaller block "
          "size (OptimizerOptions::blockSize) or fewer processes"));
    }
    return ParameterSlicing(layout.size(), options.blockSize, P);
  }

  /// The groups of [first, last), clipped, with their names.
  static ParameterLayout sliceLayout(const ParameterLayout& layout, Index first, Index last) {
    ParameterLayout out;
    for (const ParameterGroup& grp : layout.groups()) {
      const Index b = std::max(first, grp.offset), e = std::min(last, grp.offset + grp.size);
      if (b < e) out.addGroup(grp.name, e - b);
    }
    return out;
  }
  /// The schedules' columns of the groups in [first, last).
  static std::array<Schedule, static_cast<std::size_t>(numSchedules)> sliceSchedules(
      const std::array<Schedule, static_cast<std::size_t>(numSchedules)>& schedules, const ParameterLayout& layout,
      Index first, Index last) {
    std::vector<Index> columns;
    for (Index k = 0; k < layout.numGroups(); ++k) {
      const ParameterGroup& grp = layout.group(k);
      if (std::max(first, grp.offset) < std::min(last, grp.offset + grp.size)) columns.push_back(k);
    }
    std::array<Schedule, static_cast<std::size_t>(numSchedules)> out;
    for (std::size_t j = 0; j < out.size(); ++j) {
      Eigen::MatrixXd values(schedules[j].numIterations(), static_cast<Index>(columns.size()));
      for (std::size_t c = 0; c < columns.size(); ++c) values.col(static_cast<Index>(c)) = schedules[j].values().col(columns[c]);
      out[j] = Schedule(std::move(values));
    }
    return out;
  }

  template <class Derived>
  static std::uint64_t wholePrint(const Eigen::MatrixBase<Derived>& x) {
    const Eigen::VectorXd v = x;  // x may be an expression (VectorXd::Zero(n))
    return fingerprint(v.data(), v.size());
  }
  template <class Derived>
  void checkWhole(const Eigen::MatrixBase<Derived>& x) const {
    if (x.size() != size()) {
      throw InvalidArgument(detail::message(RuleType::name, ": ShardedOptimizer::start: an initial state has ", x.size(),
                                            " entries but the layout has ", size(),
                                            " (every process passes the whole vectors)"));
    }
  }
  void checkObjectiveSize(Index n) const {
    if (n != size()) {
      throw InvalidArgument(detail::message(RuleType::name, ": the objective has ", n,
                                            " parameters but the parameter layout has ", size()));
    }
  }
  void requireStarted(const char* fn) const {
    if (!m_started) throw InvalidState(detail::message(RuleType::name, ": ShardedOptimizer::", fn, ": call start(w1, ...) first"));
  }
  void requireForward(const char* fn) const {
    requireStarted(fn);
    if (halfStep())
      throw InvalidState(detail::message(RuleType::name, ": ", fn, ": a reverse step is half done (after unstepWeights())"));
    if (iteration() >= numIterations())
      throw InvalidState(detail::message(RuleType::name, ": ", fn, ": all ", numIterations(), " iterations have been taken"));
  }

  std::shared_ptr<const ShardDistribution> m_distribution;
  ParameterLayout m_layout;
  Schedules m_schedules;      // all groups (the reverse pass's coefficients)
  ParameterSlicing m_slicing;
  Optimizer m_local;          // this process's slice
  std::vector<Index> m_piecesOf;  // schedule-sum pieces per process
  bool m_started = false;
  Eigen::VectorXd m_w, m_wNext, m_wSlice, m_g, m_work;  // whole weights; the next ones; this slice's; g's slice
  mutable std::vector<double> m_piecesLocal, m_piecesAll;
  double m_lastLoss = std::numeric_limits<double>::quiet_NaN();
  double m_forwardSeconds = 0.0;
};

}  // namespace hypergrad
