// SPDX-License-Identifier: MIT
//
// Failure atomicity proven by fault injection (issue "Reliability", item 1), the way SQLite tests
// its I/O and out-of-memory handling: run the healthy computation once and count the calls of
// every entry point; then, for every (entry point, call index, failure kind), run it again with
// exactly that call failing, and check after each injected failure that
//
//   (a) the exception is the documented one: the objective's own exception passes through
//       unchanged (a custom type that is not a std::exception, std::bad_alloc, hypergrad's own
//       InvalidArgument), a wrongly sized result gives InvalidArgument, a NaN or an infinity
//       NonFiniteValue, a gradient that differs from the forward run's ExactnessViolation, a
//       huge forward gradient FixedPointOverflow;
//   (b) the optimizer is bit for bit what it was before the failed public call: every state
//       (fixedState(s)), every start state (startState(s)), the information buffer (==),
//       iteration(), halfStep() and gradientFingerprints();
//   (c) the run then completes with the working objective and reverses exactly: reverse()
//       (which calls checkRecoveredStart()) returns hypergradients bitwise equal to the healthy
//       run's.
//
// Harness. One Injector counts the calls of each entry point while a public call of a scenario is
// in progress (and nowhere else): the objective's gradient, hessianVectorProduct and mixedProduct
// (FaultyObjective), its fused reverseStep (FaultyFusedObjective; reverse() then uses it instead of
// the three calls), the meta objective's valueAndGradient and hyperGradient (FaultyMeta), the
// callbacks' hooks (FaultyCallback), and heap allocations: a replacement of the global operator
// new in this program, and Eigen's documented allocation hook — EIGEN_RUNTIME_NO_MALLOC with
// allocation "forbidden", so that every Eigen allocation goes through eigen_assert, which this
// file defines to count it, or to fail it with std::bad_alloc, instead of aborting. A Plan names
// one (entry, call index, fault). A one-shot fault fails that call only; a persistent one also
// every later call of the entry until the public call returns — then the rollback of train() and
// reverse() fails too, and they promise only a consistent state: bit for bit the healthy run's
// state at the iteration where they stop. Scenarios drive the public API as a user does — step(f),
// train() (with a callback that stops it after 2 steps, then to the end), unstep(f), reverse(),
// computeHypergradients() over a run in progress, start() over a run in progress and the raw
// stepWithGradient / unstepWeights / restepWeights / unstepOptimizerState — and retry a failed
// call once the fault is gone. The problem: T = 6 steps of an L2-regularised logistic regression
// (tests/support/logistic_fixture.hpp; one θ per weight, so the mixed products are not empty),
// eight weights in groups of 5 and 3, α and γ per (iteration, group), γ = 0.004 … 0.009 in the
// second group so that the information buffer's word stacks grow (allocate) in the forward pass
// and still hold words at T, and buffer blocks of 3 (one block straddles the groups).
//
// Besides the campaigns: start() with bad initial states (NaN, ±inf, out of range, wrong sizes,
// Fixed or double) over a run at every iteration and half step; bad gradients and calls out of
// order on the raw API; metaOptimize with a training run failing at every gradient call (a
// divergence ends at the best iterate, other errors propagate with the best iterate in params).
//
// Each TEST_CASE prints the number of injection points it tried per scenario and entry point.
// The cases where the library did not keep its guarantee when this harness was written (V1 … V7)
// have their own TEST_CASEs at the end of this file, each saying what it showed and how it was
// fixed; they are regression tests now. The main cases select around them.

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

namespace faultinjection {
void eigenAssert(bool ok, const char* expression, const char* file, int line);
void release(void* p) noexcept;
}  // namespace faultinjection

// Must precede every Eigen include (see the file comment).
#define EIGEN_RUNTIME_NO_MALLOC
#define eigen_assert(x) ::faultinjection::eigenAssert(static_cast<bool>(x), #x, __FILE__, __LINE__)

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#if defined(__unix__)
#include <csignal>
#include <sys/wait.h>
#include <unistd.h>
#define HYPERGRAD_TEST_HAS_FORK 1
#endif

#include <hypergrad/meta.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reverse.hpp>

#include "../support/logistic_fixture.hpp"

namespace faultinjection {

using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Index;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- What can fail, and how ----------------------------------------------------------------------

enum class Entry : int {
  Gradient,
  HessianVectorProduct,
  MixedProduct,
  ReverseStep,           // the objective's fused reverseStep
  MetaValueAndGradient,  // the meta objective's valueAndGradient
  MetaHyperGradient,     // the meta objective's hyperGradient
  Callback,              // onTrainBegin, onForwardStep, onTrainEnd, onReverseBegin, onReverseStep
  ReverseEndCallback,    // onReverseEnd (kept apart: see the  cases)
  Allocation,            // operator new and Eigen's allocations
  Count
};
constexpr int kEntries = static_cast<int>(Entry::Count);

const char* entryName(Entry e) {
  switch (e) {
    case Entry::Gradient: return "gradient";
    case Entry::HessianVectorProduct: return "hessianVectorProduct";
    case Entry::MixedProduct: return "mixedProduct";
    case Entry::ReverseStep: return "reverseStep";
    case Entry::MetaValueAndGradient: return "meta.valueAndGradient";
    case Entry::MetaHyperGradient: return "meta.hyperGradient";
    case Entry::Callback: return "callback";
    case Entry::ReverseEndCallback: return "onReverseEnd";
    case Entry::Allocation: return "allocation";
    case Entry::Count: break;
  }
  return "?";
}

enum class Fault {
  ThrowCustom,           // the objective's own exception type (not a std::exception)
  ThrowBadAlloc,         // std::bad_alloc (for Entry::Allocation: the allocation fails)
  ThrowInvalidArgument,  // hypergrad::InvalidArgument("injected fault")
  WrongSize,             // one entry too many
  NaN,
  Inf,
  Perturb,  // the last bit of one gradient entry flipped upwards (reverse pass only)
  Huge      // one gradient entry 1e300
};

const char* faultName(Fault f) {
  switch (f) {
    case Fault::ThrowCustom: return "custom exception";
    case Fault::ThrowBadAlloc: return "bad_alloc";
    case Fault::ThrowInvalidArgument: return "InvalidArgument";
    case Fault::WrongSize: return "wrong size";
    case Fault::NaN: return "NaN";
    case Fault::Inf: return "infinity";
    case Fault::Perturb: return "last bit changed";
    case Fault::Huge: return "1e300";
  }
  return "?";
}

/// Which part of a computation a call belongs to (set by the scenarios, the meta objective and
/// the callbacks as the computation proceeds).
enum class Phase : unsigned char { Setup, Forward, Reverse };

struct Plan {
  Entry entry = Entry::Gradient;
  long call = 0;  // index among the entry's counted calls
  Fault fault = Fault::ThrowCustom;
  int output = 0;  // reverseStep: 0 g, 1 hu, 2 dtheta; meta.valueAndGradient: 0 gradient, 1 value
  bool persistent = false;
  Phase phase = Phase::Setup;  // of the call, in the healthy run

  std::string describe() const {
    std::string s = std::string(entryName(entry)) + " call " + std::to_string(call) + ": " + faultName(fault);
    if (entry == Entry::ReverseStep && fault != Fault::ThrowCustom && fault != Fault::ThrowBadAlloc &&
        fault != Fault::ThrowInvalidArgument)
      s += std::string(" in ") + (output == 0 ? "g" : output == 1 ? "hu" : "dtheta");
    if (entry == Entry::MetaValueAndGradient && (fault == Fault::NaN || fault == Fault::Inf))
      s += output == 1 ? " in the value" : " in the gradient";
    if (persistent) s += " (persistent)";
    return s;
  }
};

/// The objective's own exception: deliberately not derived from std::exception.
struct InjectedFault {
  long call;
};

struct CallInfo {
  Phase phase;
  long tag;  // scenario-defined (metaOptimize: the meta-iteration)
};

/// Counts the calls of every entry point while `counting` is on and decides which one fails.
class Injector {
 public:
  bool counting = false;
  Phase phase = Phase::Setup;
  long tag = 0;

  void reset(const Plan* plan) {
    counting = false;
    phase = Phase::Setup;
    tag = 0;
    m_plan = plan;
    m_fired = m_done = false;
    for (auto& c : m_calls) c.clear();
  }

  /// Counts a call of `e`; returns the plan when this call must fail.
  const Plan* hit(Entry e) {
    if (!counting || m_inHook) return nullptr;
    m_inHook = true;  // the bookkeeping's own allocations are not counted
    auto& calls = m_calls[static_cast<std::size_t>(e)];
    const long k = static_cast<long>(calls.size());
    calls.push_back(CallInfo{phase, tag});
    m_inHook = false;
    if (m_plan == nullptr || m_done || m_plan->entry != e) return nullptr;
    if (k == m_plan->call || (m_plan->persistent && m_fired && k > m_plan->call)) {
      m_fired = true;
      return m_plan;
    }
    return nullptr;
  }

  /// A public call returned: a fault that fired does not fire again (persistent ones end here).
  void endCall() {
    if (m_fired) m_done = true;
  }

  bool fired() const { return m_fired; }
  const Plan* plan() const { return m_plan; }
  const std::vector<CallInfo>& calls(Entry e) const { return m_calls[static_cast<std::size_t>(e)]; }

 private:
  const Plan* m_plan = nullptr;
  bool m_fired = false, m_done = false, m_inHook = false;
  std::array<std::vector<CallInfo>, kEntries> m_calls;
};

Injector& injector() {
  static Injector instance;
  return instance;
}

/// True when the allocation being made must fail.
bool allocationFails() { return injector().hit(Entry::Allocation) != nullptr; }

void eigenAssert(bool ok, const char* expression, const char* file, int line) {
  if (ok) return;
  if (std::strstr(expression, "heap allocation is forbidden") != nullptr) {  // an Eigen allocation
    if (allocationFails()) throw std::bad_alloc();
    return;
  }
  std::fprintf(stderr, "%s:%d: Eigen assertion failed: %s\n", file, line, expression);
  std::abort();
}

// Eigen allocations go through eigen_assert (above) from the start.
const bool kEigenHookInstalled = [] {
  Eigen::internal::set_is_malloc_allowed(false);
  return true;
}();

// ---- The faulty objective, meta objective and callback -------------------------------------------

void throwIfThrowing(const Plan& p) {
  switch (p.fault) {
    case Fault::ThrowCustom: throw InjectedFault{p.call};
    case Fault::ThrowBadAlloc: throw std::bad_alloc();
    case Fault::ThrowInvalidArgument: throw hypergrad::InvalidArgument("injected fault");
    default: return;
  }
}

void corrupt(const Plan& p, VectorXd& v) {
  const Index i = std::min<Index>(v.size() - 1, 6);  // group 'b' for the w-sized vectors
  switch (p.fault) {
    case Fault::WrongSize:
      v.conservativeResize(v.size() + 1);
      v(v.size() - 1) = 0.25;
      break;
    case Fault::NaN: v(i) = kNaN; break;
    case Fault::Inf: v(i) = -kInf; break;
    case Fault::Perturb: v(i) = std::nextafter(v(i), kInf); break;
    case Fault::Huge: v(i) = 1e300; break;
    default: break;
  }
}

/// The training objective with faults injected; no fused reverseStep (reverse() then calls
/// gradient, hessianVectorProduct and mixedProduct).
struct FaultyObjective {
  const fixture::Logistic* base;
  Injector* inj;

  Index numParameters() const { return base->numParameters(); }
  Index numHyperparameters() const { return base->numHyperparameters(); }
  void gradient(const VectorXd& w, Index t, VectorXd& g) const {
    const Plan* p = inj->hit(Entry::Gradient);
    if (p) throwIfThrowing(*p);
    base->gradient(w, t, g);
    if (p) corrupt(*p, g);
  }
  void hessianVectorProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& hu) const {
    const Plan* p = inj->hit(Entry::HessianVectorProduct);
    if (p) throwIfThrowing(*p);
    base->hessianVectorProduct(w, t, u, hu);
    if (p) corrupt(*p, hu);
  }
  void mixedProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& d) const {
    const Plan* p = inj->hit(Entry::MixedProduct);
    if (p) throwIfThrowing(*p);
    base->mixedProduct(w, t, u, d);
    if (p) corrupt(*p, d);
  }
};

/// The same with the fused reverseStep, which reverse() then uses instead of the three calls.
struct FaultyFusedObjective : FaultyObjective {
  void reverseStep(const VectorXd& w, Index t, const VectorXd& u, VectorXd& g, VectorXd& hu, VectorXd& d) const {
    const Plan* p = inj->hit(Entry::ReverseStep);
    if (p) throwIfThrowing(*p);
    base->gradient(w, t, g);
    base->hessianVectorProduct(w, t, u, hu);
    base->mixedProduct(w, t, u, d);
    if (p) corrupt(*p, p->output == 0 ? g : p->output == 1 ? hu : d);
  }
};

/// Meta objective f(w, θ) = validation loss(w) + cᵀθ (so that hyperGradient is not empty).
struct FaultyMeta {
  const fixture::Validation* base;
  const fixture::Logistic* train;
  Injector* inj;

  VectorXd c() const { return VectorXd::LinSpaced(train->numHyperparameters(), -0.01, 0.02); }
  double value(const VectorXd& w) const { return base->value(w) + c().dot(train->theta); }
  double valueAndGradient(const VectorXd& w, VectorXd& g) const {
    inj->phase = Phase::Reverse;
    const Plan* p = inj->hit(Entry::MetaValueAndGradient);
    if (p) throwIfThrowing(*p);
    double f = base->valueAndGradient(w, g) + c().dot(train->theta);
    if (p && p->output == 1) f = p->fault == Fault::NaN ? kNaN : kInf;
    else if (p) corrupt(*p, g);
    return f;
  }
  void hyperGradient(const VectorXd&, VectorXd& d) const {
    const Plan* p = inj->hit(Entry::MetaHyperGradient);
    if (p) throwIfThrowing(*p);
    d = c();
    if (p) corrupt(*p, d);
  }
};

/// Implements every hook; each may throw.
struct FaultyCallback {
  Injector* inj;

  void fire(Entry e) const {
    if (const Plan* p = inj->hit(e)) throwIfThrowing(*p);
  }
  template <class Opt>
  void onTrainBegin(const Opt&) {
    inj->phase = Phase::Forward;
    fire(Entry::Callback);
  }
  template <class Opt>
  bool onForwardStep(const Opt&, Index, const VectorXd&) {
    fire(Entry::Callback);
    return false;
  }
  template <class Opt>
  void onTrainEnd(const Opt&) {
    fire(Entry::Callback);
    inj->phase = Phase::Reverse;  // in computeHypergradients(), what follows is reverse()
  }
  template <class Opt>
  void onReverseBegin(const Opt&, double) {
    fire(Entry::Callback);
  }
  template <class Opt>
  void onReverseStep(const Opt&, Index, const hypergrad::ReverseState&) {
    fire(Entry::Callback);
  }
  template <class Opt, class Result>
  void onReverseEnd(const Opt&, const Result&) {
    fire(Entry::ReverseEndCallback);
  }
};

// ---- Exceptions ----------------------------------------------------------------------------------

enum class Caught {
  None,
  Injected,
  BadAlloc,
  InjectedInvalidArgument,
  InvalidArgument,
  NonFiniteValue,
  FixedPointOverflow,
  ExactnessViolation,
  InvalidState,
  OtherError,
  Unknown
};

const char* caughtName(Caught c) {
  switch (c) {
    case Caught::None: return "no exception";
    case Caught::Injected: return "the objective's own exception";
    case Caught::BadAlloc: return "std::bad_alloc";
    case Caught::InjectedInvalidArgument: return "the injected InvalidArgument";
    case Caught::InvalidArgument: return "InvalidArgument";
    case Caught::NonFiniteValue: return "NonFiniteValue";
    case Caught::FixedPointOverflow: return "FixedPointOverflow";
    case Caught::ExactnessViolation: return "ExactnessViolation";
    case Caught::InvalidState: return "InvalidState";
    case Caught::OtherError: return "another hypergrad::Error";
    case Caught::Unknown: return "an unknown exception";
  }
  return "?";
}

/// Classifies the exception being handled (call inside a catch block).
Caught classifyCurrent(std::string& message) {
  try {
    throw;
  } catch (const InjectedFault&) {
    return Caught::Injected;
  } catch (const std::bad_alloc&) {
    return Caught::BadAlloc;
  } catch (const hypergrad::InvalidArgument& e) {
    message = e.what();
    return message == "injected fault" ? Caught::InjectedInvalidArgument : Caught::InvalidArgument;
  } catch (const hypergrad::NonFiniteValue& e) {
    message = e.what();
    return Caught::NonFiniteValue;
  } catch (const hypergrad::FixedPointOverflow& e) {
    message = e.what();
    return Caught::FixedPointOverflow;
  } catch (const hypergrad::ExactnessViolation& e) {
    message = e.what();
    return Caught::ExactnessViolation;
  } catch (const hypergrad::InvalidState& e) {
    message = e.what();
    return Caught::InvalidState;
  } catch (const hypergrad::Error& e) {
    message = e.what();
    return Caught::OtherError;
  } catch (...) {
    return Caught::Unknown;
  }
}

/// The documented exception for a plan whose fault hit a call of phase `phase`.
Caught expectedException(const Plan& p, Phase phase) {
  if (p.entry == Entry::Allocation) return Caught::BadAlloc;
  switch (p.fault) {
    case Fault::ThrowCustom: return Caught::Injected;
    case Fault::ThrowBadAlloc: return Caught::BadAlloc;
    case Fault::ThrowInvalidArgument: return Caught::InjectedInvalidArgument;
    case Fault::WrongSize: return Caught::InvalidArgument;
    case Fault::NaN:
    case Fault::Inf: return Caught::NonFiniteValue;
    case Fault::Perturb: return Caught::ExactnessViolation;
    case Fault::Huge: return phase == Phase::Reverse ? Caught::ExactnessViolation : Caught::FixedPointOverflow;
  }
  return Caught::Unknown;
}

// ---- The optimizer's observable state ------------------------------------------------------------

using Opt = hypergrad::SgdMomentum<>;
constexpr Index T = 6;

/// Everything the guarantee covers, copied (take it with counting off).
struct Snapshot {
  std::array<Opt::Fixed, 2> state, start;
  Opt::Buffer buffer;
  std::vector<std::uint64_t> fingerprints;
  Index iteration = 0;
  bool halfStep = false, started = false, usable = false;

  explicit Snapshot(const Opt& o)
      : buffer(o.buffer()),
        fingerprints(o.gradientFingerprints()),
        iteration(o.iteration()),
        halfStep(o.halfStep()),
        started(o.started()),
        usable(o.usable()) {
    for (int s = 0; s < 2; ++s) {
      state[static_cast<std::size_t>(s)] = o.fixedState(s);
      start[static_cast<std::size_t>(s)] = o.startState(s);
    }
  }

  /// "" when equal; else what differs. `prefixOnly`: fingerprints compared up to the iteration
  /// (those beyond it are stale entries of steps since undone).
  std::string difference(const Snapshot& o, bool prefixOnly = false) const {
    std::string d;
    for (std::size_t s = 0; s < 2; ++s) {
      if (state[s] != o.state[s]) d += (s == 0 ? "weights; " : "velocity; ");
      if (start[s] != o.start[s]) d += (s == 0 ? "start weights; " : "start velocity; ");
    }
    if (!(buffer == o.buffer)) d += "buffer; ";
    if (iteration != o.iteration)
      d += "iteration " + std::to_string(o.iteration) + " instead of " + std::to_string(iteration) + "; ";
    if (halfStep != o.halfStep) d += "halfStep; ";
    if (started != o.started || usable != o.usable) d += "started/usable; ";
    if (prefixOnly) {
      const auto n = static_cast<std::size_t>(std::min(iteration, o.iteration));
      if (fingerprints.size() != o.fingerprints.size() ||
          !std::equal(fingerprints.begin(), fingerprints.begin() + static_cast<std::ptrdiff_t>(n),
                      o.fingerprints.begin()))
        d += "fingerprints; ";
    } else if (fingerprints != o.fingerprints) {
      d += "fingerprints; ";
    }
    return d;
  }
};

bool sameBits(const MatrixXd& a, const MatrixXd& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}
bool sameBits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

/// "" when every member of the two results has the same bits.
std::string hypergradientDifference(const hypergrad::Hypergradients& a, const hypergrad::Hypergradients& b) {
  std::string d;
  if (!sameBits(a.learningRates, b.learningRates)) d += "learningRates ";
  if (!sameBits(a.momenta, b.momenta)) d += "momenta ";
  if (!sameBits(a.initialWeights, b.initialWeights)) d += "initialWeights ";
  if (!sameBits(a.initialVelocity, b.initialVelocity)) d += "initialVelocity ";
  if (!sameBits(a.hyperparameters, b.hyperparameters)) d += "hyperparameters ";
  if (!sameBits(a.finalWeights, b.finalWeights)) d += "finalWeights ";
  if (!sameBits(a.metaObjective, b.metaObjective)) d += "metaObjective ";
  return d;
}

// ---- The problem -----------------------------------------------------------------------------------

struct Setup {
  fixture::Logistic train{50, 8, 10, 11};
  fixture::Validation valid{train, 12};
  hypergrad::ParameterLayout layout;
  MatrixXd alpha = MatrixXd(T, 2), gamma = MatrixXd(T, 2);
  VectorXd w1, v1;
  Index blockSize = 3;  // three buffer blocks for eight weights, one of them split across the groups

  /// γ of group 'b' at iteration t: gammaB + gammaBSlope · t.
  Setup(double gammaB, double gammaBSlope) {
    layout.addGroup("a", 5);
    layout.addGroup("b", 3);
    for (Index t = 0; t < T; ++t) {
      alpha(t, 0) = 0.3 + 0.05 * static_cast<double>(t);
      alpha(t, 1) = 0.2 - 0.01 * static_cast<double>(t);
      gamma(t, 0) = 0.9 - 0.02 * static_cast<double>(t);
      gamma(t, 1) = gammaB + gammaBSlope * static_cast<double>(t);
    }
    w1 = VectorXd::LinSpaced(8, -1.0, 1.0);
    v1 = VectorXd::LinSpaced(8, 0.25, -0.125);
  }
  Opt optimizer() const { return Opt(layout, hypergrad::Schedule(alpha), hypergrad::Schedule(gamma), blockSize); }
};

/// Two configurations. 0, used throughout: γ of group 'b' 0.004 … 0.009 (7-8 bits per step), so
/// the information buffer's word stacks grow in the forward pass and still hold words at T.
/// 1, for V5 only: γ of group 'b' 0.03 … 0.08, where the last step spills a word and refills it,
/// so that the first reverse step pushes a word onto a stack that a copy left without spare
/// capacity.
int& activeConfiguration() {
  static int active = 0;
  return active;
}

const Setup& setup() {
  static const Setup configurations[2] = {Setup(0.004, 0.001), Setup(0.03, 0.01)};
  return configurations[activeConfiguration()];
}

/// Selects a configuration for its lifetime.
struct UseConfiguration {
  explicit UseConfiguration(int c) : previous(activeConfiguration()) { activeConfiguration() = c; }
  ~UseConfiguration() { activeConfiguration() = previous; }
  int previous;
  UseConfiguration(const UseConfiguration&) = delete;
  UseConfiguration& operator=(const UseConfiguration&) = delete;
};

/// The healthy run: its states after 0 … T steps, its gradients, its hypergradients.
struct Reference {
  std::vector<Snapshot> trajectory;
  std::vector<VectorXd> gradients;
  hypergrad::Hypergradients hg;
  std::size_t bufferBytesAtStart = 0, bufferBytesAtEnd = 0;
};

Reference makeReference(int configuration) {
  const UseConfiguration use(configuration);
  Reference r;
  const Setup& s = setup();
  Opt opt = s.optimizer();
  opt.start(s.w1, s.v1);
  r.bufferBytesAtStart = opt.buffer().memoryBytes();
  r.trajectory.emplace_back(opt);
  for (Index t = 0; t < T; ++t) {
    opt.step(s.train);
    r.trajectory.emplace_back(opt);
    r.gradients.push_back(opt.lastGradient());
  }
  r.bufferBytesAtEnd = opt.buffer().memoryBytes();
  Injector none;
  r.hg = hypergrad::reverse(opt, s.train, FaultyMeta{&s.valid, &s.train, &none});
  return r;
}

const Reference& reference() {
  static const Reference references[2] = {makeReference(0), makeReference(1)};
  return references[activeConfiguration()];
}

// ---- One run of a scenario, with or without a fault -------------------------------------------------

/// How the state after a failed call is checked.
enum class Expect {
  Unchanged,  // bit for bit as before the call
  Rollback,   // train(), reverse(): Unchanged, except after a persistent fault in an entry that the
              // rollback needs (the gradient, allocations): then consistent, i.e. the healthy run's
              // state at the iteration where the rollback stopped
  ComputeHypergradients  // before (failed in start), the new run at 0 (in train) or at T (in reverse)
};

/// Options of an injection campaign.
struct Options {
  /// Compare all of gradientFingerprints() after a rolled-back train() (the  case), or
  /// only the entries of the steps taken (the stale entries of the undone steps are not compared).
  bool fullRecordAfterRollback = true;
};

template <class Objective>
class Session {
 public:
  explicit Session(Injector& inj)
      : opt(setup().optimizer()),
        f{&setup().train, &inj},
        meta{&setup().valid, &setup().train, &inj},
        cb{&inj},
        m_inj(inj) {}

  Opt opt;
  Objective f;
  FaultyMeta meta;
  FaultyCallback cb;

  int exceptions = 0;
  Caught caught = Caught::None;
  std::string message;
  std::vector<std::string> problems;
  bool aborted = false;
  Options options;

  Injector& inj() { return m_inj; }

  /// start(w1, v1), not counted.
  void start() { opt.start(setup().w1, setup().v1); }

  /// Runs `op` (a public call) with counting on. On failure: records the exception, checks the
  /// state and returns false.
  template <class Op>
  bool attempt(const char* what, Op&& op, Expect expect = Expect::Unchanged) {
    const Snapshot before(opt);
    Caught c = Caught::None;
    std::string msg;
    m_inj.counting = true;
    try {
      op();
      m_inj.counting = false;
    } catch (...) {
      m_inj.counting = false;
      c = classifyCurrent(msg);
    }
    m_inj.endCall();
    if (c == Caught::None) return true;
    if (++exceptions == 1) {
      caught = c;
      message = msg;
    }
    const std::string d = stateProblem(before, expect);
    if (!d.empty()) problems.push_back(std::string(what) + ": " + d);
    if (exceptions > 3) {
      problems.push_back(std::string(what) + " keeps failing");
      aborted = true;
    }
    return false;
  }

  /// Repairs what a documented partial rollback left (not counted): a half step is re-stepped.
  void repair() {
    if (opt.halfStep()) opt.restepWeights();
  }

  /// Completes the run with the working objective (not counted) and compares its hypergradients.
  void finish() {
    m_inj.counting = false;
    try {
      repair();
      if (opt.iteration() < T) hypergrad::train(opt, f);
      compare(hypergrad::reverse(opt, f, meta));
    } catch (...) {
      std::string msg;
      const Caught c = classifyCurrent(msg);
      problems.push_back(std::string("recovery failed: ") + caughtName(c) + " " + msg);
    }
  }

  void compare(const hypergrad::Hypergradients& hg) {
    const std::string d = hypergradientDifference(hg, reference().hg);
    if (!d.empty()) problems.push_back("hypergradients differ from the healthy run's: " + d);
    if (!opt.buffer().empty()) problems.push_back("the buffer is not empty after reverse()");
  }

 private:
  std::string stateProblem(const Snapshot& before, Expect expect) const {
    const Snapshot after(opt);
    const Plan* plan = m_inj.plan();
    const bool persistentInRollback =
        plan != nullptr && plan->persistent && (plan->entry == Entry::Gradient || plan->entry == Entry::Allocation);
    if (expect == Expect::Unchanged || (!persistentInRollback && expect == Expect::Rollback)) {
      const bool prefixOnly = expect == Expect::Rollback && !options.fullRecordAfterRollback;
      const std::string d = before.difference(after, prefixOnly);
      return d.empty() ? d : "not as before the call: " + d;
    }
    if (persistentInRollback) return consistencyProblem(after);
    // ComputeHypergradients, a one-shot fault: where did it hit (in the healthy run)?
    const Reference& ref = reference();
    const Phase phase = plan != nullptr ? plan->phase : Phase::Setup;
    const Snapshot& expected = phase == Phase::Setup     ? before
                               : phase == Phase::Forward ? ref.trajectory.front()
                                                         : ref.trajectory.back();
    // After a rolled-back train() the undone steps' fingerprints remain (V3): compare the prefix.
    const std::string d = expected.difference(after, phase == Phase::Forward);
    return d.empty() ? d : "not the documented state: " + d;
  }

  static std::string consistencyProblem(const Snapshot& after) {
    if (after.halfStep) return "left in a half step";
    if (after.iteration < 0 || after.iteration > T) return "iteration out of range";
    const std::string d = reference().trajectory[static_cast<std::size_t>(after.iteration)].difference(after, true);
    return d.empty() ? d : "not the healthy run's state at its iteration: " + d;
  }

  Injector& m_inj;
};

// ---- Scenarios ----------------------------------------------------------------------------------------

/// step(f) T times.
template <class Objective>
void stepScenario(Session<Objective>& s) {
  s.start();
  s.inj().phase = Phase::Forward;
  while (s.opt.iteration() < T && !s.aborted) s.attempt("step(f)", [&] { s.opt.step(s.f); });
  s.finish();
}

/// train() for 2 steps (a callback stops it), then train() to the end.
template <class Objective>
void trainScenario(Session<Objective>& s) {
  s.start();
  s.inj().phase = Phase::Forward;
  while (!s.aborted && !s.attempt("train(f, stop after 2)", [&] {
    s.inj().phase = Phase::Forward;
    hypergrad::train(s.opt, s.f, s.cb, hypergrad::StopAfter{2});
  }, Expect::Rollback))
    s.repair();
  while (!s.aborted && !s.attempt("train(f)", [&] {
    s.inj().phase = Phase::Forward;
    hypergrad::train(s.opt, s.f, s.cb);
  }, Expect::Rollback))
    s.repair();
  s.finish();
}

/// The whole run forward (not counted), then unstep(f) T times, then forward and reverse again.
template <class Objective>
void unstepScenario(Session<Objective>& s) {
  s.start();
  hypergrad::train(s.opt, s.f);
  s.inj().phase = Phase::Reverse;
  while (s.opt.iteration() > 0 && !s.aborted)
    if (!s.attempt("unstep(f)", [&] { s.opt.unstep(s.f); })) s.repair();  // (a half step: the  case)
  try {
    s.opt.checkRecoveredStart();
  } catch (const hypergrad::Error& e) {
    s.problems.push_back(std::string("checkRecoveredStart after unstep(f): ") + e.what());
  }
  s.finish();
}

/// The whole run forward (not counted), then reverse().
template <class Objective>
void reverseScenario(Session<Objective>& s) {
  s.start();
  hypergrad::train(s.opt, s.f);
  s.inj().phase = Phase::Reverse;
  hypergrad::Hypergradients hg;
  while (!s.aborted) {
    if (s.attempt("reverse(f, meta)", [&] {
          s.inj().phase = Phase::Reverse;
          hg = hypergrad::reverse(s.opt, s.f, s.meta, s.cb);
        }, Expect::Rollback)) {
      s.compare(hg);
      return;
    }
    s.repair();
    if (s.opt.iteration() < T) hypergrad::train(s.opt, s.f);  // after a partial rollback (documented)
  }
}

/// computeHypergradients() on an optimizer holding another run in progress (2 steps taken).
template <class Objective>
void computeScenario(Session<Objective>& s) {
  s.start();
  s.opt.step(s.f);
  s.opt.step(s.f);
  s.inj().phase = Phase::Setup;
  hypergrad::Hypergradients hg;
  if (s.attempt("computeHypergradients", [&] {
        hg = hypergrad::computeHypergradients(s.opt, s.f, s.meta, setup().w1, setup().v1, s.cb);
      }, Expect::ComputeHypergradients))
    s.compare(hg);
  else
    s.finish();
}

/// The raw API with the recorded gradients: start() over a run in progress, stepWithGradient,
/// then unstepWeights, restepWeights, unstepWeights, unstepOptimizerState per step.
template <class Objective>
void rawScenario(Session<Objective>& s) {
  const Reference& ref = reference();
  s.start();
  for (int k = 0; k < 3; ++k) s.opt.step(s.f);
  s.inj().phase = Phase::Setup;
  while (!s.aborted && !s.attempt("start(w1, v1)", [&] { s.opt.start(setup().w1, setup().v1); })) {
  }
  s.inj().phase = Phase::Forward;
  for (Index t = 0; t < T; ++t)
    while (!s.aborted && !s.attempt("stepWithGradient(g)", [&] { s.opt.stepWithGradient(ref.gradients[t]); })) {
    }
  s.inj().phase = Phase::Reverse;
  for (Index t = T; t-- > 0 && !s.aborted;) {
    while (!s.aborted && !s.attempt("unstepWeights()", [&] { s.opt.unstepWeights(); })) {
    }
    while (!s.aborted && !s.attempt("restepWeights()", [&] { s.opt.restepWeights(); })) {
    }
    while (!s.aborted && !s.attempt("unstepWeights()", [&] { s.opt.unstepWeights(); })) {
    }
    while (!s.aborted && !s.attempt("unstepOptimizerState(g)", [&] { s.opt.unstepOptimizerState(ref.gradients[t]); })) {
    }
  }
  try {
    s.opt.checkRecoveredStart();
  } catch (const hypergrad::Error& e) {
    s.problems.push_back(std::string("checkRecoveredStart after the raw reverse steps: ") + e.what());
  }
  s.finish();
}

/// The raw API on optimizers that never ran a step(f) (nothing cached yet): start(),
/// stepWithGradient T times; the run is then moved into a new optimizer (importRun), which takes
/// the raw reverse steps.
template <class Objective>
void freshRawScenario(Session<Objective>& s) {
  const Reference& ref = reference();
  s.inj().phase = Phase::Setup;
  while (!s.aborted && !s.attempt("start(w1, v1) on a new optimizer", [&] { s.opt.start(setup().w1, setup().v1); })) {
  }
  s.inj().phase = Phase::Forward;
  for (Index t = 0; t < T; ++t)
    while (!s.aborted && !s.attempt("stepWithGradient(g)", [&] { s.opt.stepWithGradient(ref.gradients[t]); })) {
    }
  Opt::RunState run = s.opt.exportRun();
  s.opt = setup().optimizer();
  s.opt.importRun(std::move(run));
  s.inj().phase = Phase::Reverse;
  for (Index t = T; t-- > 0 && !s.aborted;) {
    while (!s.aborted && !s.attempt("unstepWeights()", [&] { s.opt.unstepWeights(); })) {
    }
    while (!s.aborted && !s.attempt("unstepOptimizerState(g)", [&] { s.opt.unstepOptimizerState(ref.gradients[t]); })) {
    }
  }
  s.finish();
}

// ---- The harness ------------------------------------------------------------------------------------

/// The faults tried at a call of `e` in phase `phase` (one-shot; persistent ones added below).
std::vector<Plan> faultsAt(Entry e, long call, Phase phase) {
  std::vector<Plan> plans;
  auto add = [&](Fault f, int output = 0) { plans.push_back(Plan{e, call, f, output, false, phase}); };
  if (e == Entry::Allocation) {
    add(Fault::ThrowBadAlloc);
    return plans;
  }
  add(Fault::ThrowCustom);
  add(Fault::ThrowBadAlloc);
  add(Fault::ThrowInvalidArgument);
  if (e == Entry::Callback || e == Entry::ReverseEndCallback) return plans;
  const int outputs = e == Entry::ReverseStep ? 3 : 1;
  for (int o = 0; o < outputs; ++o) {
    add(Fault::WrongSize, o);
    add(Fault::NaN, o);
    add(Fault::Inf, o);
  }
  if (e == Entry::MetaValueAndGradient) {
    add(Fault::NaN, 1);
    add(Fault::Inf, 1);
  }
  if (e == Entry::Gradient || e == Entry::ReverseStep) {
    add(Fault::Huge);
    if (phase == Phase::Reverse) add(Fault::Perturb);  // in the forward pass it is just another run
  }
  return plans;
}

struct Tally {
  std::map<std::string, int> points;  // per entry (and kind)
  int total = 0;
  int failedPoints = 0;
  int absorbed = 0;  // allocation failures absorbed without an exception (the call then succeeded)
  std::vector<std::string> failures;
};

/// Runs `scenario` healthy (it must succeed) and returns the plans for the calls it made that
/// `select` accepts: every one-shot fault of faultsAt(), and a persistent variant of the custom
/// exception and of the failed allocation.
template <class Objective, class Scenario, class Select>
std::vector<Plan> injectionPoints(const char* name, Scenario scenario, Select select) {
  Injector& inj = injector();
  inj.reset(nullptr);
  std::array<std::vector<CallInfo>, kEntries> counted;
  {
    Session<Objective> healthy(inj);
    scenario(healthy);
    INFO(name);
    REQUIRE(healthy.exceptions == 0);
    for (const std::string& p : healthy.problems) FAIL_CHECK(p);
    for (int e = 0; e < kEntries; ++e) counted[static_cast<std::size_t>(e)] = inj.calls(static_cast<Entry>(e));
  }
  std::vector<Plan> plans;
  for (int e = 0; e < kEntries; ++e) {
    const auto& calls = counted[static_cast<std::size_t>(e)];
    for (long k = 0; k < static_cast<long>(calls.size()); ++k) {
      const Phase phase = calls[static_cast<std::size_t>(k)].phase;
      for (Plan p : faultsAt(static_cast<Entry>(e), k, phase)) {
        if (select(p)) plans.push_back(p);
        p.persistent = true;
        if ((p.fault == Fault::ThrowCustom || p.entry == Entry::Allocation) && select(p)) plans.push_back(p);
      }
    }
  }
  return plans;
}

/// One run of `scenario` with `plan`; returns what went wrong (empty: recovered exactly).
/// `absorbed` is set when an allocation failure surfaced as no exception at all (an ostream
/// swallows it, for instance) and the run was then exact.
template <class Objective, class Scenario>
std::vector<std::string> runPlan(Scenario scenario, const Plan& plan, const Options& options, bool& absorbed) {
  Injector& inj = injector();
  inj.reset(&plan);
  Session<Objective> s(inj);
  s.options = options;
  scenario(s);
  const bool fired = inj.fired();
  inj.reset(nullptr);
  std::vector<std::string> problems = s.problems;
  const Caught expected = expectedException(plan, plan.phase);
  absorbed = false;
  if (!fired) problems.push_back("the injection point was not reached");
  else if (s.exceptions == 0 && plan.entry == Entry::Allocation) absorbed = true;
  else if (s.exceptions == 0) problems.push_back("the fault was not reported: no exception");
  else if (s.caught != expected)
    problems.push_back(std::string("threw ") + caughtName(s.caught) + " (" + s.message + "), expected " +
                       caughtName(expected));
  return problems;
}

void printTally(const char* name, const Tally& tally) {
  std::string perEntry;
  for (const auto& kv : tally.points)
    perEntry += (perEntry.empty() ? "" : ", ") + kv.first + " " + std::to_string(kv.second);
  std::printf("fault injection: %s: %d points (%s), %d recovered exactly", name, tally.total, perEntry.c_str(),
              tally.total - tally.failedPoints);
  if (tally.absorbed > 0) std::printf(" (%d allocation failures absorbed without an exception)", tally.absorbed);
  std::printf("\n");
  std::fflush(stdout);
}

void count(Tally& tally, const char* name, const Plan& plan, const std::vector<std::string>& problems) {
  ++tally.total;
  if (!problems.empty()) ++tally.failedPoints;
  ++tally.points[std::string(entryName(plan.entry)) + (plan.persistent ? " (persistent)" : "")];
  for (const std::string& p : problems) tally.failures.push_back(std::string(name) + ", " + plan.describe() + ": " + p);
}

/// The campaign: every selected injection point of `scenario`, one run each.
template <class Objective, class Scenario, class Select>
Tally inject(const char* name, Scenario scenario, Select select, Options options = {}) {
  Tally tally;
  for (const Plan& plan : injectionPoints<Objective>(name, scenario, select)) {
    bool absorbed = false;
    const std::vector<std::string> problems = runPlan<Objective>(scenario, plan, options, absorbed);
    if (absorbed) ++tally.absorbed;
    count(tally, name, plan, problems);
  }
  printTally(name, tally);
  return tally;
}

void report(const Tally& t) {
  for (std::size_t i = 0; i < t.failures.size() && i < 40; ++i) FAIL_CHECK(t.failures[i]);
  CHECK(t.failures.empty());
}

// Selections of plans. The cases where the library does not keep its guarantee today are left to
// the  TEST_CASEs at the end of this file; the main cases select around them.

/// V1: an exception from onReverseEnd.
bool reverseEndCallback(const Plan& p) { return p.entry == Entry::ReverseEndCallback; }
/// V2: a NaN or an infinity from the meta objective's hyperGradient.
bool nonFiniteHyperGradient(const Plan& p) {
  return p.entry == Entry::MetaHyperGradient && (p.fault == Fault::NaN || p.fault == Fault::Inf);
}
bool objectiveFault(const Plan& p) {
  return p.entry != Entry::Allocation && !reverseEndCallback(p) && !nonFiniteHyperGradient(p);
}
bool allocationFault(const Plan& p) { return p.entry == Entry::Allocation; }
/// V4 lies in the persistent allocation failures of the calls whose rollback re-steps the weights.
bool oneShotAllocationFault(const Plan& p) { return p.entry == Entry::Allocation && !p.persistent; }
bool persistentAllocationFault(const Plan& p) { return p.entry == Entry::Allocation && p.persistent; }
/// V5 lies in the allocations of the reverse steps on an imported run (the process terminates).
bool allocationBeforeReverse(const Plan& p) { return p.entry == Entry::Allocation && p.phase != Phase::Reverse; }
bool allocationInReverse(const Plan& p) { return p.entry == Entry::Allocation && p.phase == Phase::Reverse; }

}  // namespace faultinjection

// The global allocation functions of this test program: counted and failed on demand while an
// injection run is counting, plain malloc/free otherwise.
void* operator new(std::size_t n) {
  if (faultinjection::allocationFails()) throw std::bad_alloc();
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  if (faultinjection::allocationFails()) return nullptr;
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t& tag) noexcept { return ::operator new(n, tag); }
// Out of line, so that GCC does not see free() paired with operator new (-Wmismatched-new-delete).
[[gnu::noinline]] void faultinjection::release(void* p) noexcept { std::free(p); }
void operator delete(void* p) noexcept { faultinjection::release(p); }
void operator delete[](void* p) noexcept { faultinjection::release(p); }
void operator delete(void* p, std::size_t) noexcept { faultinjection::release(p); }
void operator delete[](void* p, std::size_t) noexcept { faultinjection::release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { faultinjection::release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { faultinjection::release(p); }

using namespace faultinjection;

TEST_CASE("fault injection: the reference run is what the harness assumes", "[reliability][fault]") {
  const Reference& ref = reference();
  CHECK(ref.trajectory.size() == static_cast<std::size_t>(T + 1));
  CHECK(ref.trajectory.back().buffer.spilledWords() > 0);  // the reverse pass pops spilled words
  CHECK(ref.bufferBytesAtEnd > ref.bufferBytesAtStart);    // the forward pass allocates word stacks
  CHECK(ref.hg.hyperparameters.size() == 8);
  CHECK(ref.hg.hyperparameters.norm() > 0);  // mixed products and hyperGradient are not empty
  CHECK(ref.hg.learningRates.allFinite());
  // The same run with the fused objective gives the same bits.
  const Setup& s = setup();
  Opt opt = s.optimizer();
  Injector none;
  const auto hg = hypergrad::computeHypergradients(opt, FaultyFusedObjective{{&s.train, &none}},
                                                   FaultyMeta{&s.valid, &s.train, &none}, s.w1, s.v1);
  CHECK(hypergradientDifference(hg, ref.hg).empty());
}

TEST_CASE("fault injection: every failure of the objective, the meta objective or a callback leaves the optimizer "
          "exactly as it was, and the run then reverses to the healthy hypergradients",
          "[reliability][fault]") {
  // train()'s rollback leaves the fingerprints of the undone steps in the run record (V3, a
  //  case below): only the entries of the steps taken are compared after it here.
  Options train;
  train.fullRecordAfterRollback = false;
  report(inject<FaultyObjective>("step(f)", stepScenario<FaultyObjective>, objectiveFault));
  report(inject<FaultyObjective>("train()", trainScenario<FaultyObjective>, objectiveFault, train));
  report(inject<FaultyObjective>("unstep(f)", unstepScenario<FaultyObjective>, objectiveFault));
  report(inject<FaultyObjective>("reverse(), three calls", reverseScenario<FaultyObjective>, objectiveFault));
  report(inject<FaultyFusedObjective>("reverse(), fused reverseStep", reverseScenario<FaultyFusedObjective>,
                                      objectiveFault));
  report(inject<FaultyObjective>("computeHypergradients(), three calls", computeScenario<FaultyObjective>,
                                 objectiveFault));
  report(inject<FaultyFusedObjective>("computeHypergradients(), fused", computeScenario<FaultyFusedObjective>,
                                      objectiveFault));
}

TEST_CASE("fault injection: an allocation that fails anywhere in a step, an unstep, train() or reverse() leaves the "
          "optimizer exactly as it was",
          "[reliability][fault][allocation]") {
  Options train;
  train.fullRecordAfterRollback = false;  // V3, as above
  // One-shot: the K-th allocation fails, for every K. Persistent: every allocation from the K-th
  // on fails until the call returns; not for unstep(f), reverse() and computeHypergradients(),
  // whose rollback re-steps the weights (V4).
  report(inject<FaultyObjective>("allocations: step(f)", stepScenario<FaultyObjective>, allocationFault));
  report(inject<FaultyObjective>("allocations: train()", trainScenario<FaultyObjective>, allocationFault, train));
  report(inject<FaultyObjective>("allocations: unstep(f)", unstepScenario<FaultyObjective>, oneShotAllocationFault));
  report(inject<FaultyFusedObjective>("allocations: reverse()", reverseScenario<FaultyFusedObjective>,
                                      oneShotAllocationFault));
  report(inject<FaultyFusedObjective>("allocations: computeHypergradients()", computeScenario<FaultyFusedObjective>,
                                      oneShotAllocationFault));
  report(inject<FaultyObjective>("allocations: start() and raw steps, run in progress", rawScenario<FaultyObjective>,
                                 allocationFault));
}

// ---- start(), the raw steps and metaOptimize ------------------------------------------------------

TEST_CASE("fault injection: start() with a bad initial state leaves the run in progress untouched and reversible",
          "[reliability][fault]") {
  const Setup& su = setup();
  const Reference& ref = reference();
  Injector none;
  const FaultyMeta meta{&su.valid, &su.train, &none};
  struct BadStart {
    const char* what;
    Caught expected;  // start() documents InvalidArgument and FixedPointOverflow (also for a NaN)
    std::function<void(Opt&)> call;
  };
  auto velocityWith = [&](Index i, double x) {
    VectorXd v = su.v1;
    v(i) = x;
    return v;
  };
  VectorXd nanWeights = su.w1;
  nanWeights(0) = kNaN;
  const std::vector<BadStart> bad{
      {"NaN in the 2nd initial state", Caught::FixedPointOverflow,
       [&](Opt& o) { o.start(su.w1, velocityWith(6, kNaN)); }},
      {"-inf in the 2nd initial state", Caught::FixedPointOverflow,
       [&](Opt& o) { o.start(su.w1, velocityWith(0, -kInf)); }},
      {"1e6 (out of range) in the 2nd initial state", Caught::FixedPointOverflow,
       [&](Opt& o) { o.start(su.w1, velocityWith(3, 1e6)); }},
      {"2048 (just out of range) in the 2nd initial state", Caught::FixedPointOverflow,
       [&](Opt& o) { o.start(su.w1, velocityWith(7, 2048.0)); }},
      {"NaN in the initial weights", Caught::FixedPointOverflow, [&](Opt& o) { o.start(nanWeights, su.v1); }},
      {"initial weights of 7 entries", Caught::InvalidArgument, [&](Opt& o) { o.start(VectorXd(su.w1.head(7))); }},
      {"no initial weights", Caught::InvalidArgument, [&](Opt& o) { o.start(VectorXd()); }},
      {"a 2nd initial state of 9 entries", Caught::InvalidArgument, [&](Opt& o) { o.start(su.w1, VectorXd::Zero(9)); }},
      {"a Fixed 2nd initial state of 7 entries", Caught::InvalidArgument,
       [&](Opt& o) { o.start(Opt::Fixed::fromDouble(su.w1), Opt::Fixed(7)); }},
  };
  int points = 0;
  std::vector<std::string> failures;
  for (Index k = 0; k <= T; ++k) {
    for (const bool half : {false, true}) {
      if (half && k == 0) continue;
      for (const BadStart& b : bad) {
        Opt opt = su.optimizer();
        opt.start(su.w1, su.v1);
        for (Index t = 0; t < k; ++t) opt.step(su.train);
        if (half) opt.unstepWeights();
        const Snapshot before(opt);
        std::string message;
        Caught c = Caught::None;
        try {
          b.call(opt);
        } catch (...) {
          c = classifyCurrent(message);
        }
        ++points;
        const std::string where =
            std::string(b.what) + " at iteration " + std::to_string(k) + (half ? " (half step)" : "");
        if (c != b.expected)
          failures.push_back(where + ": threw " + caughtName(c) + ", expected " + caughtName(b.expected));
        const std::string d = before.difference(Snapshot(opt));
        if (!d.empty()) failures.push_back(where + ": the run in progress changed: " + d);
        try {
          if (opt.halfStep()) opt.restepWeights();
          hypergrad::train(opt, su.train);
          const std::string h = hypergradientDifference(hypergrad::reverse(opt, su.train, meta), ref.hg);
          if (!h.empty()) failures.push_back(where + ": hypergradients differ: " + h);
        } catch (const std::exception& e) {
          failures.push_back(where + ": the run in progress does not reverse: " + e.what());
        }
      }
    }
  }
  std::printf("fault injection: start() on a run in progress: %d points (%zu bad initial states x %d positions), %d "
              "recovered exactly\n",
              points, bad.size(), points / static_cast<int>(bad.size()), points - static_cast<int>(failures.size()));
  for (const std::string& f : failures) FAIL_CHECK(f);
  CHECK(failures.empty());
}

TEST_CASE("fault injection: a bad gradient given to stepWithGradient or unstepOptimizerState, or a call out of order, "
          "changes nothing",
          "[reliability][fault]") {
  const Setup& su = setup();
  const Reference& ref = reference();
  Injector none;
  const FaultyMeta meta{&su.valid, &su.train, &none};
  Opt opt = su.optimizer();
  opt.start(su.w1, su.v1);
  int points = 0;
  std::vector<std::string> failures;
  auto expectFailure = [&](const std::string& what, Caught expected, const std::function<void()>& call) {
    const Snapshot before(opt);
    std::string message;
    Caught c = Caught::None;
    try {
      call();
    } catch (...) {
      c = classifyCurrent(message);
    }
    ++points;
    if (c != expected) failures.push_back(what + ": threw " + caughtName(c) + ", expected " + caughtName(expected));
    const std::string d = before.difference(Snapshot(opt));
    if (!d.empty()) failures.push_back(what + ": the state changed: " + d);
  };
  auto with = [](const VectorXd& g, Index i, double x) {
    VectorXd b = g;
    b(i) = x;
    return b;
  };
  for (Index t = 0; t < T; ++t) {
    const VectorXd& g = ref.gradients[static_cast<std::size_t>(t)];
    const std::string at = " at iteration " + std::to_string(t);
    expectFailure("stepWithGradient(7 entries)" + at, Caught::InvalidArgument,
                  [&] { opt.stepWithGradient(g.head(7)); });
    expectFailure("stepWithGradient(9 entries)" + at, Caught::InvalidArgument,
                  [&] { opt.stepWithGradient(VectorXd::Zero(9)); });
    expectFailure("stepWithGradient(empty)" + at, Caught::InvalidArgument, [&] { opt.stepWithGradient(VectorXd()); });
    expectFailure("stepWithGradient(NaN last)" + at, Caught::NonFiniteValue,
                  [&] { opt.stepWithGradient(with(g, 7, kNaN)); });
    expectFailure("stepWithGradient(inf first)" + at, Caught::NonFiniteValue,
                  [&] { opt.stepWithGradient(with(g, 0, kInf)); });
    expectFailure("stepWithGradient(1e300 in block 2)" + at, Caught::FixedPointOverflow,
                  [&] { opt.stepWithGradient(with(g, 6, 1e300)); });
    expectFailure("stepWithGradient(-1e300 in block 0)" + at, Caught::FixedPointOverflow,
                  [&] { opt.stepWithGradient(with(g, 1, -1e300)); });
    expectFailure("restepWeights() without a half step" + at, Caught::InvalidState, [&] { opt.restepWeights(); });
    expectFailure("unstepOptimizerState(g) without unstepWeights()" + at, Caught::InvalidState,
                  [&] { opt.unstepOptimizerState(g); });
    opt.stepWithGradient(g);
  }
  expectFailure("stepWithGradient after the last iteration", Caught::InvalidState,
                [&] { opt.stepWithGradient(ref.gradients.back()); });
  expectFailure("step(f) after the last iteration", Caught::InvalidState, [&] { opt.step(su.train); });
  for (Index t = T; t-- > 0;) {
    const VectorXd& g = ref.gradients[static_cast<std::size_t>(t)];
    const std::string at = " at iteration " + std::to_string(t);
    expectFailure("unstepOptimizerState(g) without unstepWeights()" + at, Caught::InvalidState,
                  [&] { opt.unstepOptimizerState(g); });
    opt.unstepWeights();
    expectFailure("unstepWeights() twice" + at, Caught::InvalidState, [&] { opt.unstepWeights(); });
    expectFailure("stepWithGradient in a half step" + at, Caught::InvalidState, [&] { opt.stepWithGradient(g); });
    expectFailure("step(f) in a half step" + at, Caught::InvalidState, [&] { opt.step(su.train); });
    expectFailure("unstep(f) in a half step" + at, Caught::InvalidState, [&] { opt.unstep(su.train); });
    expectFailure("unstepOptimizerState(7 entries)" + at, Caught::InvalidArgument,
                  [&] { opt.unstepOptimizerState(g.head(7)); });
    expectFailure("unstepOptimizerState(NaN)" + at, Caught::NonFiniteValue,
                  [&] { opt.unstepOptimizerState(with(g, 6, kNaN)); });
    expectFailure("unstepOptimizerState(-inf)" + at, Caught::NonFiniteValue,
                  [&] { opt.unstepOptimizerState(with(g, 0, -kInf)); });
    expectFailure("unstepOptimizerState(last bit changed)" + at, Caught::ExactnessViolation,
                  [&] { opt.unstepOptimizerState(with(g, 3, std::nextafter(g(3), kInf))); });
    expectFailure("unstepOptimizerState(1e300)" + at, Caught::ExactnessViolation,
                  [&] { opt.unstepOptimizerState(with(g, 5, 1e300)); });
    const VectorXd& other = ref.gradients[static_cast<std::size_t>((t + 1) % T)];
    expectFailure("unstepOptimizerState(another step's gradient)" + at, Caught::ExactnessViolation,
                  [&] { opt.unstepOptimizerState(other); });
    opt.unstepOptimizerState(g);
  }
  expectFailure("unstepWeights() at iteration 0", Caught::InvalidState, [&] { opt.unstepWeights(); });
  expectFailure("unstep(f) at iteration 0", Caught::InvalidState, [&] { opt.unstep(su.train); });
  CHECK_NOTHROW(opt.checkRecoveredStart());
  hypergrad::train(opt, su.train);
  CHECK(hypergradientDifference(hypergrad::reverse(opt, su.train, meta), ref.hg).empty());
  std::printf("fault injection: stepWithGradient / unstepOptimizerState / order of the raw calls: %d points, %d "
              "recovered exactly\n",
              points, points - static_cast<int>(failures.size()));
  for (const std::string& f : failures) FAIL_CHECK(f);
  CHECK(failures.empty());
}

TEST_CASE("fault injection: metaOptimize ends a diverged training run at the best iterate and lets other errors "
          "through",
          "[reliability][fault][meta]") {
  const Setup& su = setup();
  Injector& inj = injector();
  constexpr Index kMetaIterations = 3;
  struct Outcome {
    hypergrad::MetaResult result;
    Caught caught = Caught::None;
    std::string message;
    VectorXd raw;
    std::vector<VectorXd> evaluated;  // x of each evaluation
  };
  auto run = [&](const Plan* plan) {
    inj.reset(plan);
    Outcome out;
    hypergrad::MetaParameters params;
    params.add("learning rates", su.alpha, hypergrad::Transform::Log);
    hypergrad::MetaSgd sgd;
    sgd.stepSize = 0.5;
    auto evaluate = [&](const hypergrad::MetaParameters& p, Index it) {
      out.evaluated.push_back(p.raw());
      Opt opt(su.layout, hypergrad::Schedule(p.value(0)), hypergrad::Schedule(su.gamma), su.blockSize);
      const FaultyObjective f{&su.train, &inj};
      const FaultyMeta meta{&su.valid, &su.train, &inj};
      inj.tag = it;
      inj.phase = Phase::Forward;
      struct Counting {
        Injector& i;
        explicit Counting(Injector& in) : i(in) { i.counting = true; }
        ~Counting() {
          i.counting = false;
          i.endCall();
        }
      } counting(inj);
      const auto hg = hypergrad::computeHypergradients(opt, f, meta, su.w1, su.v1);
      hypergrad::MetaEvaluation e;
      e.objective = hg.metaObjective;
      e.gradients = {hg.learningRates};
      return e;
    };
    try {
      out.result = hypergrad::metaOptimize(params, evaluate, sgd, kMetaIterations);
    } catch (...) {
      out.caught = classifyCurrent(out.message);
    }
    out.raw = params.raw();
    return out;
  };
  const Outcome healthy = run(nullptr);
  REQUIRE(healthy.caught == Caught::None);
  REQUIRE(healthy.result.iterations == kMetaIterations);
  REQUIRE_FALSE(healthy.result.diverged);
  std::array<std::vector<CallInfo>, 2> counted{inj.calls(Entry::Gradient), inj.calls(Entry::MetaValueAndGradient)};
  // The meta-iterations of the healthy run differ (else "the best iterate" proves nothing).
  REQUIRE(!sameBits(healthy.evaluated[0], healthy.evaluated[1]));

  int points = 0, diverged = 0, propagated = 0;
  std::vector<std::string> failures;
  for (const Entry entry : {Entry::Gradient, Entry::MetaValueAndGradient}) {
    const auto& calls = counted[entry == Entry::Gradient ? 0 : 1];
    for (long k = 0; k < static_cast<long>(calls.size()); ++k) {
      const CallInfo info = calls[static_cast<std::size_t>(k)];
      std::vector<Plan> plans;
      for (const Fault fault : {Fault::ThrowCustom, Fault::ThrowBadAlloc, Fault::ThrowInvalidArgument, Fault::NaN,
                                Fault::Inf, Fault::Huge}) {
        if (fault == Fault::Huge && entry != Entry::Gradient) continue;
        plans.push_back(Plan{entry, k, fault, 0, false, info.phase});
        if (entry == Entry::MetaValueAndGradient && (fault == Fault::NaN || fault == Fault::Inf))
          plans.push_back(Plan{entry, k, fault, 1, false, info.phase});
      }
      for (const Plan& plan : plans) {
        const Outcome out = run(&plan);
        ++points;
        const Index m = info.tag;  // the meta-iteration that fails
        const std::string where = plan.describe() + " (meta-iteration " + std::to_string(m) + ")";
        // The best iterate among the evaluations before m (the first minimum), or the initial x.
        Index best = -1;
        for (Index i = 0; i < m; ++i)
          if (best < 0 || healthy.result.objectives[static_cast<std::size_t>(i)] <
                              healthy.result.objectives[static_cast<std::size_t>(best)])
            best = i;
        const VectorXd& expectedRaw = healthy.evaluated[static_cast<std::size_t>(best < 0 ? 0 : best)];
        const Caught thrown = expectedException(plan, plan.phase);
        const bool divergence = thrown == Caught::NonFiniteValue || thrown == Caught::FixedPointOverflow;
        if (divergence) {
          ++diverged;
          const hypergrad::MetaFailure kind = thrown == Caught::NonFiniteValue
                                                  ? hypergrad::MetaFailure::NonFiniteValue
                                                  : hypergrad::MetaFailure::FixedPointOverflow;
          if (out.caught != Caught::None)
            failures.push_back(where + ": threw " + caughtName(out.caught) + " " + out.message);
          else if (!out.result.diverged || out.result.failure != kind || out.result.failedIteration != m ||
                   out.result.iterations != m || out.result.bestIteration != best)
            failures.push_back(where + ": not reported as a divergence at meta-iteration " + std::to_string(m) +
                               " (failure " + hypergrad::metaFailureName(out.result.failure) + ", failedIteration " +
                               std::to_string(out.result.failedIteration) + ")");
        } else {
          ++propagated;
          if (out.caught != thrown)
            failures.push_back(where + ": threw " + caughtName(out.caught) + ", expected " + caughtName(thrown));
        }
        if (!sameBits(out.raw, expectedRaw)) failures.push_back(where + ": the parameters are not the best iterate");
      }
    }
  }
  std::printf("fault injection: metaOptimize: %d points (%d divergences ended at the best iterate, %d errors "
              "propagated with the best iterate), %d as documented\n",
              points, diverged, propagated, points - static_cast<int>(failures.size()));
  for (const std::string& f : failures) FAIL_CHECK(f);
  CHECK(failures.empty());
}

// ---- Regression tests: where the library did not keep its guarantee, and the fix ---------------------
//
// V1: onReverseEnd ran after reverse()'s transaction  -> it runs inside it now.
// V2: the meta objective's hyperGradient was not checked -> NonFiniteValue.
// V3: train()'s rollback left the undone steps' fingerprints -> unstepping a step clears its record.
// V4/V5: the kernel allocated during a pass (its flags; a spill of the word stack, even inside the
//     noexcept divide) -> the driver keeps the flags, the buffer reserves a pass's worst case before
//     the pass, pops never free (trim() does, after the operation).
// V6/V7: lastGradient() and the start snapshot were copied after the commit point -> commit()
//     allocates everything first.
// The comments below describe the defects as they were found.

// V1. reverse() calls onReverseEnd after its transaction (include/hypergrad/hypergradients/reverse.hpp,
// reverse(): `(detail::callReverseEnd(callbacks, opt, out), ...)` follows the try/catch block). An
// exception from onReverseEnd therefore leaves the run reversed (iteration 0) instead of returning
// the optimizer to iteration T where reverse() started; computeHypergradients() likewise.
TEST_CASE("fault injection: an exception from onReverseEnd leaves the optimizer where reverse() started",
          "[reliability][fault]") {
  report(inject<FaultyObjective>("V1 onReverseEnd: reverse()", reverseScenario<FaultyObjective>, reverseEndCallback));
  report(inject<FaultyFusedObjective>("V1 onReverseEnd: computeHypergradients()",
                                      computeScenario<FaultyFusedObjective>, reverseEndCallback));
}

// V2. reverse() checks the size of the meta objective's hyperGradient but not that it is finite
// (reverse.hpp, reverse(), after `meta.hyperGradient(out.finalWeights, dtheta)`): a NaN or an
// infinity raises no NonFiniteValue and lands in result.hyperparameters, although the gradient
// from valueAndGradient and every product of the objective are checked.
TEST_CASE("fault injection: a non-finite hyperGradient of the meta objective is a NonFiniteValue",
          "[reliability][fault]") {
  report(inject<FaultyObjective>("V2 non-finite hyperGradient: reverse()", reverseScenario<FaultyObjective>,
                                 nonFiniteHyperGradient));
}

// V3. train() rolls back with unstep(f), which leaves the gradient fingerprints of the undone steps
// in the run record: gradientFingerprints() (and exportRun()) differ from before the call in the
// entries from iteration() on. The states, the buffer and iteration() are exact, and reverse()
// never reads those entries, but the record is not "bit-identical to before the call".
TEST_CASE("fault injection: a failed train() leaves the run record as it was", "[reliability][fault]") {
  report(inject<FaultyObjective>("V3 train() run record", trainScenario<FaultyObjective>, objectiveFault));
}

// V4. restepWeights() allocates (ExactKernel::run in include/hypergrad/exact/arithmetic.hpp creates
// its `done` and `errors` vectors on every call), so the rollbacks that rely on it fail when memory
// stays short: unstep(f) (whose catch block calls restepWeights(), "exact: cannot fail", in
// reversible_optimizer.hpp) then throws bad_alloc with the optimizer in a half step (weights at
// w_t, halfStep() true, the velocity at t + 1), and reverse()'s restoreAfterFailedReverse
// (reverse.hpp) swallows the same failure and leaves a half step. (train()'s rollback stops
// cleanly: its unstep(f) fails in unstepWeights() before changing anything.) Reproduce: let every
// allocation fail from one inside the objective's gradient call in unstep(f) on.
TEST_CASE("fault injection: unstep(f) and reverse() keep their guarantee when allocations keep failing",
          "[reliability][fault][allocation]") {
  report(inject<FaultyObjective>("V4 persistent allocation failures: unstep(f)", unstepScenario<FaultyObjective>,
                                 persistentAllocationFault));
  report(inject<FaultyFusedObjective>("V4 persistent allocation failures: reverse()",
                                      reverseScenario<FaultyFusedObjective>, persistentAllocationFault));
}

// V6. stepWithGradient(g) commits the step and then copies g into lastGradient() (`m_g = g` in
// reversible_optimizer.hpp), which allocates when lastGradient() is empty — on an optimizer that
// has never run step(f), or one a run was imported into: if that allocation fails, bad_alloc
// leaves the step applied (iteration 1). unstepOptimizerState(g) ends with the same line (seen in
// the V5 case below: the reverse step is taken, iteration 5, and bad_alloc is thrown).
// V7. start() on an optimizer that never started copies the start snapshot after its commit point
// (`m_start = s`, "nothing below throws"), which allocates the first time: a failure of the
// second state's copy leaves startState(0) changed (started() stays false).
TEST_CASE("fault injection: start() and stepWithGradient() on a new optimizer keep their guarantee when an "
          "allocation fails",
          "[reliability][fault][allocation]") {
  report(inject<FaultyObjective>("V6/V7 new optimizer: start() and stepWithGradient()",
                                 freshRawScenario<FaultyObjective>, allocationBeforeReverse));
}

// V5. BitsBackRounding::tryDivideOne (include/hypergrad/exact/ratio_multiply.hpp) is noexcept but
// calls InformationBuffer::pushUniform, which may spill a word and grow the block's stack
// (std::vector::reserve in information_buffer.hpp, spill()); it is called from the kernel's
// ExactElement::undo() (exact/arithmetic.hpp). On a run whose buffer has no spare capacity —
// imported with importRun() (or any copy of the buffer) — a reverse step's division allocates when
// it spills, and a failing allocation calls std::terminate instead of throwing bad_alloc.
// Configuration 1 spills and refills a word in the last forward step, so the first reverse step
// (unstepOptimizerState at iteration 5) spills onto a stack without spare capacity. Each injection
// point runs in a child process, so that a terminate is reported as a failed check. The same
// campaign shows V6 for unstepOptimizerState.
TEST_CASE("fault injection: an allocation failure in a reverse step of an imported run is an exception, not a "
          "terminate",
          "[reliability][fault][allocation]") {
#if defined(HYPERGRAD_TEST_HAS_FORK)
  const UseConfiguration spillInTheLastStep(1);
  const char* name = "V5 imported run: unstepWeights() and unstepOptimizerState()";
  Tally tally;
  int terminated = 0;
  for (const Plan& plan :
       injectionPoints<FaultyObjective>(name, freshRawScenario<FaultyObjective>, allocationInReverse)) {
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      std::signal(SIGABRT, SIG_DFL);  // die of std::terminate quietly (not through Catch's handler)
      bool absorbed = false;
      const auto problems = runPlan<FaultyObjective>(freshRawScenario<FaultyObjective>, plan, Options{}, absorbed);
      for (const std::string& p : problems) std::fprintf(stderr, "  %s: %s\n", plan.describe().c_str(), p.c_str());
      std::fflush(stderr);
      _exit(problems.empty() ? 0 : 1);
    }
    int status = 0;
    waitpid(child, &status, 0);
    std::vector<std::string> problems;
    if (WIFSIGNALED(status)) {
      ++terminated;
      problems.push_back("the process died of signal " + std::to_string(WTERMSIG(status)) +
                         " (std::terminate: bad_alloc thrown through a noexcept function)");
    } else if (WEXITSTATUS(status) != 0) {
      problems.push_back("the guarantee was violated (the child's report is above)");
    }
    count(tally, name, plan, problems);
  }
  printTally(name, tally);
  std::printf("fault injection: %s: %d of %d points terminated the process\n", name, terminated, tally.total);
  report(tally);
#else
  WARN("needs fork() to survive std::terminate; skipped on this platform");
#endif
}
