// Save a training run and reverse it in another process: the forward pass runs here and writes
// the run (fixed-point state, information buffer, run record) to a file; a later process rebuilds
// the same optimizer and objective, loads the run, and computes the hypergradients — exactly,
// bit for bit, as if it had never stopped. Useful for long runs (reverse on another machine or
// after a restart), and to resume training from a checkpoint that costs the buffer, not the
// trajectory.
//
//   save_and_reverse train   run.hgrun   # forward pass, then save
//   save_and_reverse reverse run.hgrun   # load, reverse, print the hypergradients
//   save_and_reverse both    run.hgrun   # both in one process, to compare the printed digest
#include <cstdio>
#include <cstring>
#include <string>

#include <hypergrad.hpp>

using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Index;

namespace {

// Everything both processes must construct identically: the objective (data, batches), the
// layout and the schedules. A run loaded into an optimizer built differently is refused.
struct Setup {
  hypergrad::MlpArchitecture arch{{20, 16, 3}, hypergrad::Activation::Tanh};
  hypergrad::Dataset train = data(300, 1), valid = data(200, 2);
  hypergrad::MlpObjective objective{arch, train, hypergrad::SeededBatches(7, 300, 50)};
  hypergrad::MlpLoss validation{arch, valid};
  static constexpr Index T = 200;

  hypergrad::SgdMomentum<> optimizer() const {
    const hypergrad::ParameterLayout layout = arch.layout();
    return hypergrad::SgdMomentum<>(layout, hypergrad::Schedule::constant(T, layout.numGroups(), 0.2),
                                    hypergrad::Schedule::constant(T, layout.numGroups(), 0.9));
  }
  VectorXd initialWeights() const {
    const hypergrad::ParameterLayout layout = arch.layout();
    return hypergrad::ScaledInit(layout, VectorXd::Constant(layout.numGroups(), -1.5), 11).weights();
  }

  // Three classes of Gaussian blobs in 20 dimensions (deterministic, from the seed).
  static hypergrad::Dataset data(Index n, std::uint64_t seed) {
    hypergrad::Dataset d;
    d.numClasses = 3;
    d.inputs.resize(n, 20);
    d.labels.resize(n);
    hypergrad::CounterRng rng(seed);
    for (Index k = 0; k < n; ++k) {
      d.labels(k) = static_cast<int>(k % 3);
      for (Index j = 0; j < 20; ++j) d.inputs(k, j) = rng.normal() + (j % 3 == k % 3 ? 1.5 : 0.0);
    }
    return d;
  }
};

void report(const hypergrad::Hypergradients& hg) {
  std::printf("validation loss after %ld steps: %.12f\n", long(Setup::T), hg.metaObjective);
  std::printf("sum of d loss / d alpha: %+.12e, of d loss / d gamma: %+.12e\n", hg.learningRates.sum(),
              hg.momenta.sum());
  // The digest is the same in one process and across two: the reverse pass is exact either way.
  std::uint64_t digest = 0;
  for (Index i = 0; i < hg.learningRates.size(); ++i) {
    std::uint64_t bits;
    const double x = hg.learningRates.data()[i];
    std::memcpy(&bits, &x, sizeof bits);
    digest = hypergrad::mix64(digest ^ bits);
  }
  std::printf("hypergradient digest: %016llx\n", static_cast<unsigned long long>(digest));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || (std::strcmp(argv[1], "train") != 0 && std::strcmp(argv[1], "reverse") != 0 &&
                    std::strcmp(argv[1], "both") != 0)) {
    std::fprintf(stderr, "usage: %s train|reverse|both RUN_FILE\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1], path = argv[2];
  const Setup setup;
  try {
    if (mode == "train" || mode == "both") {
      hypergrad::SgdMomentum<> sgd = setup.optimizer();
      sgd.start(setup.initialWeights());
      hypergrad::train(sgd, setup.objective);
      hypergrad::saveRun(sgd, path);
      std::printf("trained %ld steps; saved the run to %s (buffer: %.0f bits)\n", long(Setup::T), path.c_str(),
                  sgd.buffer().informationBits());
    }
    if (mode == "reverse" || mode == "both") {
      hypergrad::SgdMomentum<> sgd = setup.optimizer();  // configured as the saving process did
      hypergrad::loadRun(sgd, path);
      std::printf("loaded a run at iteration %ld\n", long(sgd.iteration()));
      const hypergrad::Hypergradients hg = hypergrad::reverse(sgd, setup.objective, setup.validation);
      report(hg);
      std::printf("reversed to the start bit for bit: %s\n", sgd.buffer().empty() ? "yes" : "no");
    }
  } catch (const hypergrad::Error& e) {
    std::fprintf(stderr, "save_and_reverse: %s\n", e.what());
    return 1;
  }
  return 0;
}
