// Data parallelism over MPI (issue 13): the paper's MLP hypergradient (784-50-50-50-10, batch 200
// in 4 shards of 50, T = 100) with the objective's shards shared among the processes of
// MPI_COMM_WORLD, against the same run in one process without any exchange. Run it under mpiexec:
//
//   OMP_NUM_THREADS=1 mpiexec -n 2 build-bench/benchmarks/bench_mpi --benchmark_filter=mnist
//   OMP_NUM_THREADS=2 build-bench/benchmarks/bench_mpi --benchmark_filter=mnist   # the threaded single process
//
//   mpi/hypergradient/<wl>/T:<T>     computeHypergradients with MpiShardDistribution: time per forward
//                                    and reverse step, bytes received per step, RSS per process
//   sharded/hypergradient/<wl>/T:<T> the same with the optimizer state sharded (ShardedOptimizer):
//                                    each process keeps its slice of w, v and the buffer
//   single/hypergradient/<wl>/T:<T>  the same run with no distribution (each process alone)
//
// state_mb: the optimizer state this process keeps — w, v and their start snapshot for its
// elements, and its information buffer at the end of training, when it is largest.
//
// Every case has a fixed iteration count, so all processes run the same collectives; only rank 0
// reports. Both cases check that their hypergradients are bit-identical (the error counter).
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include <hypergrad/mpi.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reverse.hpp>

#include "bench_common.hpp"

namespace {

using bench::Workload;
using bench::WorkloadSpec;
using hypergrad::Index;

int worldSize() {
  int p = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  return p;
}

// Buffer blocks: the default 4,096 (11 blocks of the paper's MLP); 256 for the smoke workload's
// 1,482 weights, so that 2 processes each own blocks of the sharded state. Every case of a
// workload uses the same block size (the bits depend on it).
Index blockSizeFor(const Workload& wl) { return wl.spec.name == "smoke" ? 256 : 4096; }

// The reference result per workload, from one process without exchange (computed once each).
const hypergrad::Hypergradients& singleResult(const Workload& wl, Index T) {
  static std::map<std::string, hypergrad::Hypergradients> results;
  const std::string key = wl.spec.name + "/T:" + std::to_string(T);
  auto it = results.find(key);
  if (it == results.end()) {
    hypergrad::SgdMomentum<> opt(wl.layout, wl.alphas(T), wl.gammas(T, wl.spec.gamma), blockSizeFor(wl));
    it = results.emplace(key, hypergrad::computeHypergradients(opt, wl.train, wl.validation, wl.w1)).first;
  }
  return it->second;
}

// The process's peak resident memory (VmHWM), MB.
double peakRssMb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0.0;
}

bool sameBits(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}

// The information buffer's size at the end of training, when it is largest.
struct BufferAtTrainEnd {
  std::size_t bytes = 0;
  template <class Optimizer>
  void onTrainEnd(const Optimizer& opt) {
    bytes = opt.buffer().memoryBytes();
  }
};

enum class Mode { Single, Distributed, Sharded };

void hypergradient(benchmark::State& state, const WorkloadSpec& spec, Index T, Mode mode) {
  const Workload& wl = bench::workload(spec);
  hypergrad::MlpObjective f = wl.train;  // shares the data
  std::shared_ptr<hypergrad::mpi::MpiShardDistribution> d;
  if (mode != Mode::Single) {
    d = std::make_shared<hypergrad::mpi::MpiShardDistribution>();
    f.setShardDistribution(d);
  }
  const hypergrad::Hypergradients& reference = singleResult(wl, T);
  double forward = 0.0, reverse = 0.0, stateBytes = 0.0;
  bool identical = true;
  for (auto _ : state) {
    BufferAtTrainEnd buffer;
    hypergrad::Hypergradients hg;
    Index elements = wl.layout.size();
    if (mode == Mode::Sharded) {
      hypergrad::ShardedOptimizer<hypergrad::SgdMomentum<>> opt(d, wl.layout, wl.alphas(T), wl.gammas(T, wl.spec.gamma),
                                                                blockSizeFor(wl));
      hg = hypergrad::computeHypergradients(opt, f, wl.validation, wl.w1, buffer);
      elements = opt.sliceSize();
    } else {
      hypergrad::SgdMomentum<> opt(wl.layout, wl.alphas(T), wl.gammas(T, wl.spec.gamma), blockSizeFor(wl));
      hg = hypergrad::computeHypergradients(opt, f, wl.validation, wl.w1, buffer);
    }
    // w and v, each with its start snapshot, 8 bytes per element; and the buffer.
    stateBytes = 4.0 * 8.0 * static_cast<double>(elements) + static_cast<double>(buffer.bytes);
    forward += hg.statistics.forwardSeconds;
    reverse += hg.statistics.reverseSeconds;
    identical = identical && sameBits(hg.learningRates, reference.learningRates) && sameBits(hg.momenta, reference.momenta);
  }
  const double runs = static_cast<double>(state.iterations()), steps = runs * static_cast<double>(T);
  state.counters["processes"] = mode != Mode::Single ? worldSize() : 1;
  state.counters["state_mb"] = stateBytes / 1e6;
  state.counters["forward_ms_per_step"] = 1e3 * forward / steps;
  state.counters["reverse_ms_per_step"] = 1e3 * reverse / steps;
  // Exchanges: one per forward step, one per reverse step (the fused reverse step), one for the
  // initial gradient of the reverse pass; bytes received by this process (rank 0).
  state.counters["kib_received_per_step"] = d ? static_cast<double>(d->bytesReceived()) / 1024.0 / (2.0 * steps) : 0.0;
  state.counters["peak_rss_mb"] = peakRssMb();
  state.counters["bit_identical"] = identical ? 1 : 0;
  if (!identical) state.SkipWithError("the hypergradients differ from the single-process run");
}

void registerAll() {
  for (const WorkloadSpec& spec : {bench::mnistSpec(), bench::smokeSpec()}) {
    const Index T = spec.steps;
    const std::string tag = "/" + spec.name + "/T:" + std::to_string(T);
    const int iterations = spec.name == "smoke" ? 1 : 3;
    benchmark::RegisterBenchmark(("mpi/hypergradient" + tag).c_str(),
                                 [spec, T](benchmark::State& st) { hypergradient(st, spec, T, Mode::Distributed); })
        ->Unit(benchmark::kMillisecond)->Iterations(iterations)->UseRealTime();
    benchmark::RegisterBenchmark(("sharded/hypergradient" + tag).c_str(),
                                 [spec, T](benchmark::State& st) { hypergradient(st, spec, T, Mode::Sharded); })
        ->Unit(benchmark::kMillisecond)->Iterations(iterations)->UseRealTime();
    benchmark::RegisterBenchmark(("single/hypergradient" + tag).c_str(),
                                 [spec, T](benchmark::State& st) { hypergradient(st, spec, T, Mode::Single); })
        ->Unit(benchmark::kMillisecond)->Iterations(iterations)->UseRealTime();
  }
}

// Ranks other than 0 run the same benchmarks silently.
class SilentReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  // OpenMP threads run the shards; MPI is called only from this thread (FUNNELED).
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  registerAll();
  bool fileOut = false;  // --benchmark_out given: the silent ranks need a file reporter too
  for (int i = 1; i < argc; ++i) fileOut = fileOut || std::strncmp(argv[i], "--benchmark_out=", 16) == 0;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
  if (rank == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    SilentReporter silent, silentFile;
    if (fileOut) benchmark::RunSpecifiedBenchmarks(&silent, &silentFile);
    else benchmark::RunSpecifiedBenchmarks(&silent);
  }
  benchmark::Shutdown();
  MPI_Finalize();
  return 0;
}
