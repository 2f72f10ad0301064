// SPDX-License-Identifier: MIT
//
// Peer comparison (issue "Benchmarks", item 6): the hypergradient of a validation loss with
// respect to a T × 8 learning-rate schedule (and the momentum schedule, and w₁), computed
//   --impl hypergrad  by hypergrad's exact reverse pass (SgdMomentum<> + MlpObjective), and
//   --impl torch      by libtorch autograd through the unrolled training loop (float64; each
//                     training gradient taken with create_graph = true so that the meta backward
//                     differentiates through g_t's dependence on w_t).
// Same workload on both sides: MLP 784-50-50-50-10 tanh (N = 44,860), 10,000 synthetic examples of
// MNIST shape (the recipe and seeds of benchmarks/bench_common.hpp: pixels uniform in [0, 1], labels
// from a random linear teacher), minibatch 200 with the batch indices of SeededBatches(seed, 10000, 200)(t),
// w₁ from ScaledInit (1/√fan-in), v₁ = 0, γ = 0.9 (the quantised value hypergrad uses, on both
// sides), α a per-iteration × per-group schedule, meta objective = mean cross-entropy on 1,000
// validation examples at w_{T+1}.
//
// One configuration per process, so that the peak RSS (VmHWM) is that configuration's:
//   bench_torch --impl torch|hypergrad --steps T --threads k [--reps r] [--out file]
// prints one JSON line (times, CPU times, peak RSS of the computation alone, ...). Also:
//   --compare a b         compare two hypergradient files written with --out (b = reference)
//   --check --steps T     both implementations in one process; exit 1 unless they agree (ctest)
//   --profile             (hypergrad) the model's share of the time: T gradients and T fused
//                         gradient + Hessian-vector products timed alone
//   --alpha A             mean learning rate of the schedule (default 0.05)
// The binary built without libtorch (bench_torch_hypergrad, HYPERGRAD_BENCH_WITH_TORCH=0) runs
// only --impl hypergrad and --compare, so that the hypergrad figures do not carry libtorch's
// resident pages. benchmarks/torch/run.sh runs the matrix.

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <hypergrad/batches.hpp>
#include <hypergrad/init.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/random.hpp>
#include <hypergrad/reverse.hpp>
#include <hypergrad/schedule.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

#ifndef HYPERGRAD_BENCH_WITH_TORCH
#define HYPERGRAD_BENCH_WITH_TORCH 0
#endif
#if HYPERGRAD_BENCH_WITH_TORCH
#include <ATen/Parallel.h>
#include <torch/torch.h>
#endif

namespace {

using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Index;

// ---- Process measurements -----------------------------------------------------------------------

/// A "VmXXX:" field of /proc/self/status in MiB (−1 when absent).
double procStatusMiB(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') {
      return std::strtod(line.c_str() + n + 1, nullptr) / 1024.0;  // the kernel reports kB
    }
  }
  return -1.0;
}

/// RSS figures around the measured computation (MiB).
struct Memory {
  double start = -1;      // VmRSS at program start (executable + shared libraries)
  double setupPeak = -1;  // VmHWM after building the data, before the computation
  double setup = -1;      // VmRSS then (data sets, schedules: what both sides hold anyway)
  double peak = -1;       // VmHWM over the computation alone (peak reset after the setup)
  bool peakReset = false; // whether /proc/self/clear_refs accepted the reset
};
Memory g_memory;

/// Called between the setup and the computation: records the setup figures and resets VmHWM to
/// the current RSS ("5" > /proc/self/clear_refs, Linux ≥ 4.0), so that the peak read afterwards
/// is the computation's own, not a transient of the data generation.
void markSetupDone() {
  g_memory.setupPeak = procStatusMiB("VmHWM");
  g_memory.setup = procStatusMiB("VmRSS");
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5" << std::flush;
  g_memory.peakReset = static_cast<bool>(clear);
}

double wallSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// User + system CPU seconds of the whole process (all threads).
double cpuSeconds() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec);
}

double minOf(const std::vector<double>& x) { return *std::min_element(x.begin(), x.end()); }

// ---- Workload (identical to benchmarks/bench_common.hpp's mnistSpec) ------------------------------

constexpr std::uint64_t kSeed = 20150101;
const std::vector<Index> kSizes{784, 50, 50, 50, 10};
constexpr Index kTrain = 10000, kValid = 1000, kBatch = 200;
constexpr double kGamma = 0.9;

MatrixXd teacher() {
  hypergrad::CounterRng rng(kSeed, 0x7eac);
  MatrixXd t(kSizes.front(), kSizes.back());
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = rng.normal();
  return t;
}

/// Pixels uniform in [0, 1], label = argmax_c (x − ½)ᵀ teacher_c.
hypergrad::Dataset syntheticData(Index numExamples, std::uint64_t seed) {
  const MatrixXd teach = teacher();
  hypergrad::Dataset data;
  data.numClasses = kSizes.back();
  data.inputs.resize(numExamples, kSizes.front());
  data.labels.resize(numExamples);
  hypergrad::CounterRng rng(seed, 0xda7a);
  for (Index j = 0; j < data.inputs.cols(); ++j)
    for (Index k = 0; k < numExamples; ++k) data.inputs(k, j) = rng.uniform();
  // In chunks of rows: no temporary copy of the whole input matrix (it would set the peak RSS).
  for (Index k0 = 0; k0 < numExamples; k0 += 500) {
    const Index rows = std::min<Index>(500, numExamples - k0);
    const MatrixXd scores = (data.inputs.middleRows(k0, rows).array() - 0.5).matrix() * teach;
    for (Index k = 0; k < rows; ++k) {
      Index best = 0;
      scores.row(k).maxCoeff(&best);
      data.labels(k0 + k) = static_cast<int>(best);
    }
  }
  return data;
}

hypergrad::Dataset trainData() { return syntheticData(kTrain, kSeed + 2); }
hypergrad::Dataset validData() { return syntheticData(kValid, kSeed + 3); }
hypergrad::SeededBatches batches() { return hypergrad::SeededBatches(kSeed + 1, kTrain, kBatch); }

/// w₁ = s_k ε with s_k = 1/√fan-in, rounded to the fixed-point grid hypergrad starts from (so
/// both implementations start from the same double values).
VectorXd initialWeights(const hypergrad::MlpArchitecture& arch) {
  const std::vector<Index> fanIn = arch.groupFanIn();
  VectorXd f(static_cast<Index>(fanIn.size()));
  for (std::size_t k = 0; k < fanIn.size(); ++k) f(static_cast<Index>(k)) = static_cast<double>(fanIn[k]);
  const VectorXd w = hypergrad::ScaledInit(arch.layout(), hypergrad::ScaledInit::logScalesFromFanIn(f), kSeed + 4).weights();
  using Fixed = hypergrad::SgdMomentum<>::Fixed;
  return Fixed::fromDouble(w, "initial weights").toDouble();
}

/// α(t, k) = ᾱ · (0.75 + 0.5 u), u uniform: a per-iteration × per-group schedule, ᾱ = 0.05 by
/// default (--alpha). With ᾱ = 0.1 (the paper's rate) this run turns chaotic before T = 1000
/// (‖∂f/∂α‖ ≈ 4e6, and the two implementations' hypergradients then differ by 4e-4 relative: the
/// amplified rounding noise of DESIGN.md §8); at 0.05 they agree to 1e-12 at T = 1000.
double g_alphaBase = 0.05;  // --alpha: mean learning rate of the schedule
bool g_float32 = false;     // --dtype float32: the network in float (MlpObjectiveFloat; torch::kFloat32)

MatrixXd alphaSchedule(Index T, Index G) {
  hypergrad::CounterRng rng(kSeed + 5, 0xa1fa);
  MatrixXd a(T, G);
  for (Index t = 0; t < T; ++t)
    for (Index k = 0; k < G; ++k) a(t, k) = g_alphaBase * (0.75 + 0.5 * rng.uniform());
  return a;
}

/// γ = 0.9 as hypergrad quantises it (n / 2^16), T × G.
MatrixXd gammaSchedule(const hypergrad::ParameterLayout& layout, Index T) {
  const hypergrad::SgdMomentum<> probe(layout, hypergrad::Schedule::constant(T, layout.numGroups(), 0.1),
                                       hypergrad::Schedule::constant(T, layout.numGroups(), kGamma));
  return probe.quantizedMomenta();
}

// ---- Results --------------------------------------------------------------------------------------

struct Result {
  std::vector<double> wall, cpu, forward, reverse;  // per repetition, seconds
  std::vector<double> forwardCpu, reverseCpu;       // CPU seconds of the two phases
  double metaObjective = 0.0;
  MatrixXd dAlpha, dGamma;  // T × G
  VectorXd dW1;             // N
  double extraBytes = -1;   // hypergrad: information buffer bytes after the forward pass
  std::string profile;      // hypergrad --profile: JSON object of the cost breakdown
};

void writeHypergradients(const std::string& path, const Result& r) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write " + path);
  const std::int64_t header[3] = {r.dAlpha.rows(), r.dAlpha.cols(), r.dW1.size()};
  out.write(reinterpret_cast<const char*>(header), sizeof header);
  out.write(reinterpret_cast<const char*>(&r.metaObjective), sizeof(double));
  out.write(reinterpret_cast<const char*>(r.dAlpha.data()), static_cast<std::streamsize>(sizeof(double) * r.dAlpha.size()));
  out.write(reinterpret_cast<const char*>(r.dGamma.data()), static_cast<std::streamsize>(sizeof(double) * r.dGamma.size()));
  out.write(reinterpret_cast<const char*>(r.dW1.data()), static_cast<std::streamsize>(sizeof(double) * r.dW1.size()));
}

Result readHypergradients(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::int64_t header[3];
  in.read(reinterpret_cast<char*>(header), sizeof header);
  Result r;
  r.dAlpha.resize(header[0], header[1]);
  r.dGamma.resize(header[0], header[1]);
  r.dW1.resize(header[2]);
  in.read(reinterpret_cast<char*>(&r.metaObjective), sizeof(double));
  in.read(reinterpret_cast<char*>(r.dAlpha.data()), static_cast<std::streamsize>(sizeof(double) * r.dAlpha.size()));
  in.read(reinterpret_cast<char*>(r.dGamma.data()), static_cast<std::streamsize>(sizeof(double) * r.dGamma.size()));
  in.read(reinterpret_cast<char*>(r.dW1.data()), static_cast<std::streamsize>(sizeof(double) * r.dW1.size()));
  if (!in) throw std::runtime_error(path + " is truncated");
  return r;
}

/// Relative norm of the difference, and the largest relative error over the entries whose
/// reference magnitude exceeds 1e-6 of the reference norm.
std::string agreement(const char* name, const Eigen::Ref<const MatrixXd>& a, const Eigen::Ref<const MatrixXd>& ref) {
  if (a.rows() != ref.rows() || a.cols() != ref.cols()) throw std::runtime_error(std::string(name) + ": shapes differ");
  const double norm = ref.norm();
  double maxRel = 0.0;
  Index counted = 0, identical = 0;
  for (Index i = 0; i < ref.size(); ++i) {
    identical += (a.data()[i] == ref.data()[i]) ? 1 : 0;
    if (std::fabs(ref.data()[i]) > 1e-6 * norm) {
      maxRel = std::max(maxRel, std::fabs(a.data()[i] - ref.data()[i]) / std::fabs(ref.data()[i]));
      ++counted;
    }
  }
  std::ostringstream s;
  s.precision(3);
  s << "\"" << name << "\":{\"norm\":" << norm << ",\"rel_norm_diff\":" << (a - ref).norm() / norm
    << ",\"max_rel_err\":" << maxRel << ",\"entries_compared\":" << counted << ",\"bit_identical\":" << identical
    << ",\"entries\":" << ref.size() << "}";
  return s.str();
}

/// The JSON fields comparing hypergradients `a` with the reference `ref`.
std::string comparison(const Result& a, const Result& ref) {
  std::ostringstream s;
  s.precision(17);
  s << "\"meta_objective\":[" << a.metaObjective << "," << ref.metaObjective << "]," << agreement("alpha", a.dAlpha, ref.dAlpha)
    << "," << agreement("gamma", a.dGamma, ref.dGamma) << "," << agreement("w1", a.dW1, ref.dW1);
  return s.str();
}

// ---- hypergrad ------------------------------------------------------------------------------------

template <class Objective>
Result runHypergradWith(Index T, int reps, bool profile) {
  const hypergrad::MlpArchitecture arch(kSizes, hypergrad::Activation::Tanh);
  const hypergrad::ParameterLayout layout = arch.layout();
  const Objective train(arch, trainData(), batches());
  const hypergrad::MlpLoss valid(arch, validData());
  const VectorXd w1 = initialWeights(arch), v1 = VectorXd::Zero(layout.size());
  hypergrad::SgdMomentum<> opt(layout, hypergrad::Schedule(alphaSchedule(T, layout.numGroups())),
                               hypergrad::Schedule(gammaSchedule(layout, T)));
  Result r;
  markSetupDone();
  for (int rep = 0; rep < reps; ++rep) {
    const double w0 = wallSeconds(), c0 = cpuSeconds();
    opt.start(w1, v1);
    hypergrad::train(opt, train);
    const double w1t = wallSeconds(), c1 = cpuSeconds();
    r.extraBytes = static_cast<double>(opt.buffer().memoryBytes());
    hypergrad::Hypergradients hg = hypergrad::reverse(opt, train, valid);  // checks exact recovery
    const double w2 = wallSeconds(), c2 = cpuSeconds();
    r.wall.push_back(w2 - w0);
    r.cpu.push_back(c2 - c0);
    r.forward.push_back(w1t - w0);
    r.reverse.push_back(w2 - w1t);
    r.forwardCpu.push_back(c1 - c0);
    r.reverseCpu.push_back(c2 - c1);
    r.metaObjective = hg.metaObjective;
    r.dAlpha = std::move(hg.learningRates);
    r.dGamma = std::move(hg.momenta);
    r.dW1 = std::move(hg.initialWeights);
  }
  if (profile) {
    // Where the time goes: the model's work alone (T gradients; T fused gradient + Hessian-vector
    // products, as the reverse pass calls them) at w₁, timed like the full run. The remainder of
    // the forward / reverse time is the optimizer's per-element work (exact update, information
    // buffer, fingerprints, conversions) and the reverse pass's own vector loops.
    VectorXd g, hu, mixed;
    const VectorXd u = 1e-3 * w1;
    const double a0 = wallSeconds(), c0 = cpuSeconds();
    for (Index t = 0; t < T; ++t) train.gradient(w1, t, g);
    const double a1 = wallSeconds(), c1 = cpuSeconds();
    for (Index t = 0; t < T; ++t) train.reverseStep(w1, t, u, g, hu, mixed);
    const double a2 = wallSeconds(), c2 = cpuSeconds();
    const double perStep = 1e3 / static_cast<double>(T);
    std::ostringstream s;
    s.precision(4);
    s << "{\"gradient_ms\":" << (a1 - a0) * perStep << ",\"reverse_step_ms\":" << (a2 - a1) * perStep
      << ",\"gradient_cpu_ms\":" << (c1 - c0) * perStep << ",\"reverse_step_cpu_ms\":" << (c2 - c1) * perStep
      << ",\"forward_step_cpu_ms\":" << minOf(r.forwardCpu) * perStep
      << ",\"reverse_pass_step_cpu_ms\":" << minOf(r.reverseCpu) * perStep
      << "}";
    r.profile = s.str();
  }
  return r;
}

/// hypergrad with the training objective in double or, with --dtype float32, in float (the
/// optimizer's exact state, the reverse pass and the validation loss stay as they are).
Result runHypergrad(Index T, int reps, bool profile) {
  return g_float32 ? runHypergradWith<hypergrad::MlpObjectiveFloat>(T, reps, profile)
                   : runHypergradWith<hypergrad::MlpObjective>(T, reps, profile);
}

// ---- libtorch -------------------------------------------------------------------------------------

#if HYPERGRAD_BENCH_WITH_TORCH

/// Row-major double tensor of a data set's inputs, and its labels as int64.
std::pair<torch::Tensor, torch::Tensor> toTensors(const hypergrad::Dataset& d) {
  const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rows = d.inputs;
  torch::Tensor x = torch::from_blob(const_cast<double*>(rows.data()), {rows.rows(), rows.cols()}, torch::kFloat64).clone();
  std::vector<std::int64_t> labels(static_cast<std::size_t>(d.labels.size()));
  for (Index i = 0; i < d.labels.size(); ++i) labels[static_cast<std::size_t>(i)] = d.labels(i);
  torch::Tensor y = torch::from_blob(labels.data(), {static_cast<std::int64_t>(labels.size())}, torch::kInt64).clone();
  return {x, y};
}

/// The MLP on parameter tensors in group order (W_1, b_1, W_2, b_2, ...), W_l of shape (out, in)
/// like torch::nn::Linear — the same memory as hypergrad's column-major in × out block.
torch::Tensor logits(const std::vector<torch::Tensor>& p, torch::Tensor a) {
  const std::size_t L = p.size() / 2;
  for (std::size_t l = 0; l < L; ++l) {
    a = torch::nn::functional::linear(a, p[2 * l], p[2 * l + 1]);
    if (l + 1 < L) a = torch::tanh(a);
  }
  return a;
}

Result runTorch(Index T, int reps) {
  // --dtype float32: every tensor (data, weights, velocities, schedules) in float; results read
  // back in double.
  const auto dtype = g_float32 ? torch::kFloat32 : torch::kFloat64;
  const hypergrad::MlpArchitecture arch(kSizes, hypergrad::Activation::Tanh);
  const hypergrad::ParameterLayout layout = arch.layout();
  const Index G = layout.numGroups();
  torch::Tensor xTrain, yTrain, xValid, yValid;
  {
    std::tie(xTrain, yTrain) = toTensors(trainData());  // the Eigen copies die here
    std::tie(xValid, yValid) = toTensors(validData());
    xTrain = xTrain.to(dtype);
    xValid = xValid.to(dtype);
  }
  const hypergrad::SeededBatches batchOf = batches();
  const VectorXd w1 = initialWeights(arch);
  // T × G schedules: Eigen is column-major, torch row-major.
  const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> alphaRows = alphaSchedule(T, G),
                                                                               gammaRows = gammaSchedule(layout, T);

  Result r;
  markSetupDone();
  for (int rep = 0; rep < reps; ++rep) {
    const double w0 = wallSeconds(), c0 = cpuSeconds();
    torch::Tensor alpha = torch::from_blob(const_cast<double*>(alphaRows.data()), {T, G}, torch::kFloat64).to(dtype);
    torch::Tensor gamma = torch::from_blob(const_cast<double*>(gammaRows.data()), {T, G}, torch::kFloat64).to(dtype);
    alpha.requires_grad_(true);
    gamma.requires_grad_(true);
    std::vector<torch::Tensor> w1Leaves, p, v;
    for (Index k = 0; k < G; ++k) {
      const hypergrad::ParameterGroup& grp = layout.group(k);
      const Index l = k / 2;
      std::vector<std::int64_t> shape;
      if (k % 2 == 0) shape = {arch.fanOut(l), arch.fanIn(l)};  // (out, in): hypergrad's block memory
      else shape = {grp.size};
      torch::Tensor leaf =
          torch::from_blob(const_cast<double*>(w1.data() + grp.offset), shape, torch::kFloat64).to(dtype).requires_grad_(true);
      w1Leaves.push_back(leaf);
      p.push_back(leaf);
      v.push_back(torch::zeros(shape, dtype));
    }
    for (Index t = 0; t < T; ++t) {
      std::vector<Index> idx = batchOf(t);
      static_assert(sizeof(Index) == sizeof(std::int64_t), "Index must be 64-bit");
      const torch::Tensor index =
          torch::from_blob(idx.data(), {static_cast<std::int64_t>(idx.size())}, torch::kInt64).clone();
      const torch::Tensor loss = torch::nn::functional::cross_entropy(logits(p, xTrain.index_select(0, index)),
                                                                      yTrain.index_select(0, index));
      // create_graph: the meta backward must differentiate through g_t(w_t) (Hessian terms).
      const std::vector<torch::Tensor> g = torch::autograd::grad({loss}, p, {}, /*retain_graph=*/true,
                                                                 /*create_graph=*/true);
      const torch::Tensor at = alpha.select(0, t), gt = gamma.select(0, t);
      for (Index k = 0; k < G; ++k) {
        const torch::Tensor ak = at.select(0, k), gk = gt.select(0, k);
        v[static_cast<std::size_t>(k)] = gk * v[static_cast<std::size_t>(k)] - (1 - gk) * g[static_cast<std::size_t>(k)];
        p[static_cast<std::size_t>(k)] = p[static_cast<std::size_t>(k)] + ak * v[static_cast<std::size_t>(k)];
      }
    }
    const torch::Tensor meta = torch::nn::functional::cross_entropy(logits(p, xValid), yValid);
    const double w1t = wallSeconds(), c1 = cpuSeconds();
    meta.backward();
    const double w2 = wallSeconds(), c2 = cpuSeconds();
    r.wall.push_back(w2 - w0);
    r.cpu.push_back(c2 - c0);
    r.forward.push_back(w1t - w0);
    r.reverse.push_back(w2 - w1t);
    r.forwardCpu.push_back(c1 - c0);
    r.reverseCpu.push_back(c2 - c1);
    r.metaObjective = meta.item<double>();
    const torch::Tensor da = alpha.grad().to(torch::kFloat64).contiguous(),
                        dg = gamma.grad().to(torch::kFloat64).contiguous();
    r.dAlpha = Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
        da.data_ptr<double>(), T, G);
    r.dGamma = Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
        dg.data_ptr<double>(), T, G);
    r.dW1.resize(layout.size());
    for (Index k = 0; k < G; ++k) {
      const torch::Tensor gw = w1Leaves[static_cast<std::size_t>(k)].grad().to(torch::kFloat64).contiguous();
      std::memcpy(r.dW1.data() + layout.group(k).offset, gw.data_ptr<double>(), sizeof(double) * layout.group(k).size);
    }
    // Everything of this repetition (graph included) is released at the end of the scope.
  }
  return r;
}
#endif

// ---- Driver ---------------------------------------------------------------------------------------

std::string jsonList(const std::vector<double>& x) {
  std::ostringstream s;
  s.precision(4);
  s << "[";
  for (std::size_t i = 0; i < x.size(); ++i) s << (i ? "," : "") << x[i];
  s << "]";
  return s.str();
}

int usage() {
  std::cerr << "usage: bench_torch --impl torch|hypergrad --steps T --threads k [--reps r] [--out file] [--profile]\n"
               "                   [--dtype float64|float32]   (float32: MlpObjectiveFloat / torch::kFloat32)\n"
               "       bench_torch --compare file file   (files written with --out; the second is the reference)\n"
               "       bench_torch --check --steps T [--threads k]   (both implementations; exit 1 unless they agree)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string impl, out, cmpA, cmpB;
  Index steps = 100;
  int threads = 1, reps = 1;
  bool profile = false, check = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error("missing value after " + a);
      return argv[++i];
    };
    if (a == "--impl") impl = next();
    else if (a == "--steps") steps = std::stol(next());
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--out") out = next();
    else if (a == "--profile") profile = true;
    else if (a == "--check") check = true;
    else if (a == "--alpha") g_alphaBase = std::stod(next());
    else if (a == "--dtype") {
      const std::string d = next();
      if (d != "float64" && d != "float32") return usage();
      g_float32 = d == "float32";
    }
    else if (a == "--compare") {
      cmpA = next();
      cmpB = next();
    } else return usage();
  }
  try {
    if (!cmpA.empty()) {
      const Result a = readHypergradients(cmpA), b = readHypergradients(cmpB);
      std::cout << "{\"compare\":\"" << cmpA << "\",\"reference\":\"" << cmpB << "\"," << comparison(a, b) << "}" << std::endl;
      return 0;
    }
    if (check) {
      // Smoke test (ctest bench_torch_check): both implementations, one process, must agree.
#if HYPERGRAD_BENCH_WITH_TORCH
      at::set_num_interop_threads(1);
      torch::set_num_threads(threads);
#if defined(_OPENMP)
      omp_set_num_threads(threads);
#endif
      const Result h = runHypergrad(steps, 1, false), t = runTorch(steps, 1);
      const double da = (h.dAlpha - t.dAlpha).norm() / t.dAlpha.norm();
      const double dg = (h.dGamma - t.dGamma).norm() / t.dGamma.norm();
      std::cout << "{\"check\":\"hypergrad vs torch\",\"steps\":" << steps << "," << comparison(h, t) << "}" << std::endl;
      if (!(da < 1e-8 && dg < 1e-8)) {
        std::cerr << "bench_torch --check: the hypergradients differ (relative norm of the difference: alpha " << da
                  << ", gamma " << dg << "; expected < 1e-8)\n";
        return 1;
      }
      return 0;
#else
      std::cerr << "bench_torch: --check needs the binary built with libtorch (bench_torch)\n";
      return 2;
#endif
    }
    if (impl.empty() || steps < 1 || threads < 1 || reps < 1) return usage();

    int ompThreads = 0;
#if defined(_OPENMP)
    omp_set_num_threads(threads);
    ompThreads = omp_get_max_threads();
#endif
    Result r;
    if (impl == "hypergrad") {
      g_memory.start = procStatusMiB("VmRSS");
      r = runHypergrad(steps, reps, profile);
    } else if (impl == "torch") {
#if HYPERGRAD_BENCH_WITH_TORCH
      at::set_num_interop_threads(1);
      torch::set_num_threads(threads);
      ompThreads = at::get_num_threads();
      g_memory.start = procStatusMiB("VmRSS");
      r = runTorch(steps, reps);
#else
      std::cerr << "bench_torch: this binary was built without libtorch; use bench_torch for --impl torch\n";
      return 2;
#endif
    } else {
      return usage();
    }
    g_memory.peak = procStatusMiB("VmHWM");
    if (!out.empty()) writeHypergradients(out, r);
    std::cout.precision(6);
    std::cout << "{\"impl\":\"" << impl << "\",\"steps\":" << steps << ",\"threads\":" << threads
              << ",\"dtype\":\"" << (g_float32 ? "float32" : "float64") << "\",\"omp_threads\":" << ompThreads << ",\"reps\":" << reps << ",\"time_s\":" << minOf(r.wall)
              << ",\"wall_s\":" << jsonList(r.wall) << ",\"cpu_s\":" << jsonList(r.cpu)
              << ",\"forward_s\":" << jsonList(r.forward) << ",\"backward_s\":" << jsonList(r.reverse)
              << ",\"forward_cpu_s\":" << jsonList(r.forwardCpu) << ",\"backward_cpu_s\":" << jsonList(r.reverseCpu)
              << ",\"peak_rss_mib\":" << g_memory.peak << ",\"peak_reset\":" << (g_memory.peakReset ? "true" : "false")
              << ",\"setup_rss_mib\":" << g_memory.setup << ",\"setup_peak_rss_mib\":" << g_memory.setupPeak
              << ",\"start_rss_mib\":" << g_memory.start
              << ",\"buffer_bytes\":" << r.extraBytes << ",\"meta_objective\":" << r.metaObjective
              << ",\"dalpha_norm\":" << r.dAlpha.norm();
    if (!r.profile.empty()) std::cout << ",\"profile\":" << r.profile;
    std::cout << "}" << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "bench_torch: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
