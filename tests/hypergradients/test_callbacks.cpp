// The callback protocol (callbacks.hpp): every hook of train() and reverse() in order, any number
// of callbacks, `true` from a forward hook stops training with the callback's reason, hooks that
// return void, and callbacks that implement none of them.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <hypergrad/hypergradients.hpp>
#include <hypergrad/optimizers/momentum.hpp>

#include "../support/logistic_fixture.hpp"

using namespace hypergrad;
using fixture::Logistic;
using fixture::VectorXd;

namespace {

struct Journal {
  std::vector<std::string>* log;
  template <class Opt>
  void onTrainBegin(const Opt& opt) {
    log->push_back("train begin " + std::to_string(opt.iteration()));
  }
  template <class Opt>
  void onForwardStep(const Opt& opt, Index t, const VectorXd& g) {
    CHECK(opt.iteration() == t + 1);
    CHECK(g.size() == opt.size());
    log->push_back("forward " + std::to_string(t));
  }
  template <class Opt>
  void onTrainEnd(const Opt& opt) {
    log->push_back("train end " + std::to_string(opt.iteration()));
  }
  template <class Opt>
  void onReverseBegin(const Opt& opt, double f) {
    CHECK(f > 0);
    log->push_back("reverse begin " + std::to_string(opt.iteration()));
  }
  template <class Opt>
  void onReverseStep(const Opt& opt, Index t, const ReverseState& s) {
    CHECK(opt.iteration() == t);
    CHECK(s.numStates == 2);
    CHECK(&s.adjoint(0) == &s.dWeights);
    log->push_back("reverse " + std::to_string(t));
  }
  template <class Opt, class Result>
  void onReverseEnd(const Opt& opt, const Result& hg) {
    CHECK(hg.learningRates.rows() == opt.numIterations());
    log->push_back("reverse end " + std::to_string(opt.iteration()));
  }
};

/// Stops after `at` steps through a bool hook, with its own reason.
struct StopAt {
  Index at;
  template <class Opt>
  bool onForwardStep(const Opt& opt, Index, const VectorXd&) {
    return opt.iteration() >= at;
  }
  std::string stopReason() const { return "enough steps"; }
};

struct Silent {};  // implements no hook

/// Throws from a hook at step `at`.
struct Bomb {
  Index at;
  template <class Opt>
  void onForwardStep(const Opt&, Index t, const VectorXd&) {
    if (t == at) throw std::runtime_error("callback failed");
  }
  template <class Opt>
  void onReverseStep(const Opt&, Index t, const ReverseState&) {
    if (t == at) throw std::runtime_error("callback failed in reverse");
  }
};

SgdMomentum<> makeOptimizer(Index T) {
  return SgdMomentum<>(ParameterLayout::single(8), Schedule::constant(T, 1, 0.2), Schedule::constant(T, 1, 0.9));
}

}  // namespace

TEST_CASE("train and reverse call every hook of every callback, in order", "[callbacks]") {
  const Logistic f(40, 8, 10, 51);
  const fixture::Validation valid(f, 52);
  std::vector<std::string> a, b;
  SgdMomentum<> opt = makeOptimizer(3);
  computeHypergradients(opt, f, valid, VectorXd::Ones(8), Journal{&a}, Silent{}, Journal{&b});
  const std::vector<std::string> expected = {"train begin 0", "forward 0",  "forward 1",     "forward 2",
                                             "train end 3",   "reverse begin 3", "reverse 2", "reverse 1",
                                             "reverse 0",     "reverse end 0"};
  CHECK(a == expected);
  CHECK(b == expected);
}

TEST_CASE("a forward hook returning true stops training with its reason; the partial run reverses", "[callbacks]") {
  const Logistic f(40, 8, 10, 53);
  const fixture::Validation valid(f, 54);
  SgdMomentum<> opt = makeOptimizer(10);
  opt.start(VectorXd::Ones(8));
  std::vector<std::string> log;
  const TrainSummary s = train(opt, f, Journal{&log}, StopAt{4}, StopAfter{7});
  CHECK(s.stoppedEarly);
  CHECK(s.stepsTaken == 4);
  CHECK(s.stopReason == "enough steps");
  CHECK(opt.iteration() == 4);
  CHECK(log.back() == "train end 4");
  const Hypergradients hg = reverse(opt, f, valid);
  CHECK(hg.learningRates.rows() == 10);
  CHECK(hg.learningRates.bottomRows(6).isZero(0));  // steps never taken have no influence
  CHECK(opt.buffer().empty());
  // StopAfter counts the steps of its own call.
  opt.start(VectorXd::Ones(8));
  CHECK(train(opt, f, StopAfter{2}).stopReason == "stopped after 2 steps");
  CHECK(train(opt, f).stepsTaken == 8);
}

TEST_CASE("a callback that throws makes train() and reverse() leave the optimizer as they found it", "[callbacks]") {
  const Logistic f(40, 8, 10, 55);
  const fixture::Validation valid(f, 56);
  SgdMomentum<> opt = makeOptimizer(8);
  opt.start(VectorXd::Ones(8));
  opt.step(f);
  const auto w = opt.fixedWeights();
  CHECK_THROWS_WITH(train(opt, f, Bomb{5}), "callback failed");
  CHECK(opt.iteration() == 1);  // the steps train() took were undone
  CHECK(opt.fixedWeights() == w);
  train(opt, f);
  const auto wEnd = opt.fixedWeights();
  const auto bEnd = opt.buffer();
  CHECK_THROWS_WITH(reverse(opt, f, valid, Bomb{3}), "callback failed in reverse");
  CHECK(opt.iteration() == 8);  // the steps reverse() had undone were taken again
  CHECK(opt.fixedWeights() == wEnd);
  CHECK(opt.buffer() == bEnd);
  CHECK_NOTHROW(reverse(opt, f, valid));
}
