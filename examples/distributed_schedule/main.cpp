// The learning-rate-schedule experiment (examples/learning_rate_schedule) data-parallel over MPI:
// every process holds the same objective, evaluates its own shards of each minibatch, and the
// shards' gradients and Hessian-vector products are exchanged and added in shard order — so the
// hypergradients, and the schedules learned from them, are bit-identical at any number of
// processes. The program prints a digest of every hypergradient it computed: the same under
// `mpiexec -n 1`, `-n 2`, `-n 3`, ... and with `--single` (no exchange at all).
//
//   mpiexec -n 2 distributed_schedule [--quick] [--single] [--data DIR|mnist] [--meta-iterations N]
//                                     [--shard-size S] [--seed N]
//
// See README.md beside this file.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <hypergrad.hpp>
#include <hypergrad/data/idx.hpp>
#include <hypergrad/mpi.hpp>

using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Index;

namespace {

struct Options {
  bool quick = false;
  bool single = false;  // no shard distribution: the single-process library, for the digest
  bool shardedState = false;  // each process keeps a slice of the optimizer state (ShardedOptimizer)
  std::string data;     // "" = hypergrad::defaultDataDirectory()
  Index metaIterations = -1;
  Index shardSize = -1;  // -1: 50 (the paper's batch of 200 in 4 shards), --quick 10 (batch 50 in 5)
  std::uint64_t seed = 1;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw hypergrad::InvalidArgument("option " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--quick") o.quick = true;
    else if (a == "--single") o.single = true;
    else if (a == "--sharded-state") o.shardedState = true;
    else if (a == "--data") o.data = next();
    else if (a == "--meta-iterations") o.metaIterations = std::stol(next());
    else if (a == "--seed") o.seed = std::stoull(next());
    else if (a == "--shard-size") o.shardSize = std::stol(next());
    else if (a == "--help" || a == "-h") {
      std::printf("usage: mpiexec -n P %s [--quick] [--single | --sharded-state] [--data DIR] [--meta-iterations N]\n"
                  "                  [--shard-size S] [--seed N]\n"
                  "  --quick         MLP 784-20-10, T = 10, 500 examples (synthetic when DIR holds no MNIST files)\n"
                  "  --data DIR      MNIST-format directory (default %s), or \"mnist\"\n"
                  "                  (../shared/data/mnist or $HYPERGRAD_MNIST_DIR) or \"fashion-mnist\"; t10k only: two halves\n"
                  "  --single        evaluate every shard here (no exchange): the digest to compare with\n"
                  "  --sharded-state each process keeps only its slice of the optimizer state and buffer\n"
                  "  --shard-size S  examples per shard (default 50; --quick 10): the unit shared among processes\n",
                  argv[0], hypergrad::defaultDataDirectory().c_str());
      std::exit(0);
    } else {
      throw hypergrad::InvalidArgument("unknown option '" + a + "' (see --help)");
    }
  }
  if (o.metaIterations == -1) o.metaIterations = o.quick ? 3 : 10;
  if (o.shardSize == -1) o.shardSize = o.quick ? 10 : hypergrad::defaultMlpShardSize;
  if (o.metaIterations < 1) throw hypergrad::InvalidArgument("--meta-iterations must be >= 1");
  if (o.single && o.shardedState)
    throw hypergrad::InvalidArgument("--sharded-state shares the optimizer state among processes; it needs no --single");
  return o;
}

// Noisy prototypes of MNIST's shape, for --quick without data.
hypergrad::Dataset synthetic(Index n, std::uint64_t seed) {
  hypergrad::CounterRng protoRng(12345, 0), rng(seed, 1);
  MatrixXd prototypes(10, 784);
  for (Index i = 0; i < prototypes.size(); ++i) prototypes(i) = protoRng.uniform() < 0.3 ? 1.0 : 0.0;
  hypergrad::Dataset d;
  d.numClasses = 10;
  d.inputs.resize(n, 784);
  d.labels.resize(n);
  for (Index k = 0; k < n; ++k) {
    d.labels(k) = static_cast<int>(rng.below(10));
    for (Index j = 0; j < 784; ++j) d.inputs(k, j) = std::clamp(prototypes(d.labels(k), j) + 0.5 * rng.normal(), 0.0, 1.0);
  }
  return d;
}

// Records the information buffer's size at the end of training, when it is largest.
struct BufferAtTrainEnd {
  std::size_t bytes = 0;
  template <class Optimizer>
  void onTrainEnd(const Optimizer& opt) {
    bytes = opt.buffer().memoryBytes();
  }
};

std::uint64_t digestOf(std::uint64_t digest, const MatrixXd& m) {
  for (Index i = 0; i < m.size(); ++i) {
    std::uint64_t bits;
    std::memcpy(&bits, &m.data()[i], sizeof bits);
    digest = hypergrad::mix64(digest ^ bits);
  }
  return digest;
}

int run(int argc, char** argv) {
  const auto clockStart = std::chrono::steady_clock::now();
  const Options o = parse(argc, argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const bool print = rank == 0;

  // Every process reads the same data (from a shared file system, or its own copy).
  const std::string dir = o.data.empty() ? hypergrad::defaultDataDirectory() : hypergrad::resolveDataDirectory(o.data);
  const Index n = o.quick ? 500 : 10000;
  hypergrad::Dataset train, valid;
  if (hypergrad::hasMnistSplit(dir, "train")) {
    const hypergrad::Dataset all = hypergrad::loadMnist(dir, "train", 2 * n);
    train = hypergrad::subset(all, 0, n);
    valid = hypergrad::subset(all, n, n);
  } else if (hypergrad::hasMnistSplit(dir, "t10k")) {  // e.g. --data mnist, the test set alone: two halves
    const hypergrad::Dataset all = hypergrad::loadMnist(dir, "t10k");
    const Index half = std::min(n, all.numExamples() / 2);
    train = hypergrad::subset(all, 0, half);
    valid = hypergrad::subset(all, half, half);
  } else if (o.quick) {
    train = synthetic(n, 1);
    valid = synthetic(n, 2);
  } else {
    hypergrad::loadMnist(dir, "train");  // throws the DataError that says what is missing
  }

  const std::vector<Index> sizes = o.quick ? std::vector<Index>{784, 20, 10} : std::vector<Index>{784, 50, 50, 50, 10};
  const Index T = o.quick ? 10 : 100, batchSize = o.quick ? 50 : 200;
  const hypergrad::MlpArchitecture arch(sizes, hypergrad::Activation::Tanh);
  const hypergrad::ParameterLayout layout = arch.layout();
  const Index G = layout.numGroups(), N = arch.numParameters();
  VectorXd fanIn(G);
  for (Index k = 0; k < G; ++k) fanIn(k) = double(arch.groupFanIn()[static_cast<std::size_t>(k)]);
  const VectorXd logScales = hypergrad::ScaledInit::logScalesFromFanIn(fanIn);
  const hypergrad::MlpLoss trainLoss(arch, std::move(train)), validLoss(arch, std::move(valid));

  // One distribution for all objectives: the shards of each batch (200 = 4 shards of 50) are
  // shared among the processes; --single leaves it out. The bits depend on the shard size, never
  // on the number of processes.
  std::shared_ptr<const hypergrad::ShardDistribution> shards;
  if (!o.single) shards = std::make_shared<hypergrad::mpi::MpiShardDistribution>();
  if (print) {
    std::printf("%d process%s%s; MLP with %ld weights, T = %ld, batch %ld in shards of %ld; %ld meta-iterations\n", size,
                size == 1 ? "" : "es", o.single ? " (--single: no exchange)" : "", long(N), long(T), long(batchSize),
                long(o.shardSize), long(o.metaIterations));
  }

  hypergrad::MetaParameters params;
  params.add("learning rates", MatrixXd::Constant(T, G, 0.1), hypergrad::Transform::Log);
  params.add("momenta", MatrixXd::Constant(T, G, 0.9), hypergrad::Transform::Logit);
  std::uint64_t digest = 0;
  Index stateElements = 0;      // the elements of w and v this process keeps
  std::size_t bufferBytes = 0;  // this process's information buffer after training, the largest
  auto evaluate = [&](const hypergrad::MetaParameters& p, Index metaIteration) {
    const std::uint64_t seed = o.seed * 1000003u + std::uint64_t(metaIteration);
    hypergrad::MlpObjective objective(arch, trainLoss.sharedData(),
                                      hypergrad::SeededBatches(seed, trainLoss.data().numExamples(), batchSize));
    objective.setShardSize(o.shardSize);
    objective.setShardDistribution(shards);
    const VectorXd w1 = hypergrad::ScaledInit(layout, logScales, seed).weights();
    const hypergrad::Schedule alpha(p.value(0)), gamma(p.value(1));
    // Every process must run the same schedules (they do: the same meta-loop on the same
    // hypergradients); checked before training, not only when the weights drift apart.
    BufferAtTrainEnd peak;
    hypergrad::Hypergradients hg;
    if (o.shardedState) {
      // Each process keeps its slice of w, v and the information buffer (whole buffer blocks).
      hypergrad::ShardedOptimizer<hypergrad::SgdMomentum<>> sgd(shards, layout, alpha, gamma);
      shards->requireSame("the schedules", sgd.schedules().fingerprint());
      hg = hypergrad::computeHypergradients(sgd, objective, trainLoss, w1, VectorXd::Zero(N), peak);
      stateElements = sgd.sliceSize();
    } else {
      hypergrad::SgdMomentum<> sgd(layout, alpha, gamma);
      if (shards) shards->requireSame("the schedules", sgd.schedules().fingerprint());
      hg = hypergrad::computeHypergradients(sgd, objective, trainLoss, w1, VectorXd::Zero(N), peak);
      stateElements = N;
    }
    bufferBytes = std::max(bufferBytes, peak.bytes);
    digest = digestOf(digestOf(digest, hg.learningRates), hg.momenta);
    if (print) {
      std::printf("meta-iteration %2ld: final training loss %.6f, |dalpha| %.6e, digest %016llx\n", long(metaIteration),
                  hg.metaObjective, hg.learningRates.norm(), static_cast<unsigned long long>(digest));
    }
    hypergrad::MetaEvaluation e;
    e.objective = hg.metaObjective;
    e.gradients = {hg.learningRates, hg.momenta};
    e.metrics["valid loss"] = validLoss.value(hg.finalWeights);
    return e;
  };
  hypergrad::MetaAdam adam;
  adam.stepSize = 0.04;
  const hypergrad::MetaResult result = hypergrad::metaOptimize(params, evaluate, adam, o.metaIterations);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - clockStart).count();
  if (print) {
    std::printf("final training loss %.6f (first %.6f), validation loss %.6f\n", result.objectives.back(),
                result.objectives.front(), result.metrics.back().at("valid loss"));
    std::printf("hypergradient digest: %016llx\n", static_cast<unsigned long long>(digest));
    std::printf("rank 0 keeps %ld of %ld weights' optimizer state; its buffer after training: %.2f MB (the largest)\n",
                long(stateElements), long(N), double(bufferBytes) / 1e6);
    std::printf("wall time %.1f s\n", seconds);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // OpenMP threads run the shards; MPI is called only from this thread (FUNNELED).
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rc = 1;
  try {
    rc = run(argc, argv);
  } catch (const hypergrad::DistributedError& e) {
    // Every process throws the same DistributedError when one fails: all leave together.
    std::fprintf(stderr, "error: %s\n", e.what());
  } catch (const std::exception& e) {
    // An error on this process alone (its data file, say): the others would wait for it in
    // their next collective, so end them all.
    std::fprintf(stderr, "error: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return rc;
}
