// Long horizons (issue 12): the paper's MLP hypergradient at growing T, by the exact reverse pass
// and by √T checkpointing — what a user would pick for a long unroll in PyTorch: store every k-th
// state (k = ⌈√T⌉) in the forward pass, and during the reverse pass recompute each segment's
// states from its checkpoint before differentiating through it.
//
//   long_horizon/exact/<wl>/T:<T>          SgdMomentum<> (Q11.52, bits-back), train + reverse
//   long_horizon/checkpointed/<wl>/T:<T>   plain double, same α, the quantised γ, same batches
//
// The checkpointed baseline is written here on the reference (double) arithmetic, with the
// momentum adjoint of DESIGN.md §2 by hand and the MLP's fused reverseStep for g_t and H_t u —
// the same network code as the exact pass, so the time difference is the method, not the model.
// Its dα is compared with the exact pass's (counter dalpha_max_rel_diff, from a separate exact
// run at the same T, smoke and T ≤ 1000 only): rounding-level at short T, growing with T as
// the training is chaotic (README, "Accuracy against float64").
//
// Counters: total_s, ms_per_step (total / T), state_bytes (what the method keeps for the reverse
// pass: information buffer + run record, or checkpoints + one segment), peak_rss_growth_mb (VmHWM
// at the end minus VmRSS at the start, after resetting the high-water mark — meaningful only for
// a case run in a process of its own, one --benchmark_filter per process: the allocator keeps
// the pages an earlier case freed, and a later case reuses them without growing), threads.
//
//   OMP_NUM_THREADS=2 bench_long_horizon                        T = 100, 1000
//   OMP_NUM_THREADS=2 bench_long_horizon --hypergrad_long                 adds T = 10⁴
//   OMP_NUM_THREADS=2 bench_long_horizon --hypergrad_long --benchmark_filter='T:100000/'   T = 10⁵ (hours)
//
// The plots (<prefix>-time.svg, <prefix>-memory.svg; --plot PREFIX, default long_horizon) show
// ms per step and state_bytes of the mnist cases that ran; with --torch FILE also libtorch's
// unrolled hypergradient from `bench_torch --impl torch --steps T --threads k` runs (their JSON
// lines, collected in FILE; the rows with this run's thread count): ms per step and its graph's
// memory. `--replot RUN.json` redraws the plots from an earlier run's --benchmark_out file.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <hypergrad.hpp>
#include <hypergrad/io/svg.hpp>

#include "bench_common.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using bench::Workload;
using bench::WorkloadSpec;
using hypergrad::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

// ---- Memory -----------------------------------------------------------------------------------

/// "VmRSS" or "VmHWM" of this process, in bytes (0 when /proc is unavailable).
double procStatusBytes(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(key) + ":";
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0) return 1024.0 * std::stod(line.substr(prefix.size()));
  return 0.0;
}

/// Resets the resident high-water mark to the current RSS (Linux ≥ 4.0); false if not allowed.
bool resetPeak() {
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (f == nullptr) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

int threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// ---- √T checkpointing on the double arithmetic -------------------------------------------------

struct CheckpointedResult {
  MatrixXd learningRates, momenta;  // ∂f/∂α, ∂f/∂γ (T × G)
  VectorXd initialWeights;          // ∂f/∂w₁
  double metaObjective = 0.0;
  std::size_t stateBytes = 0;       // checkpoints + one segment's states
};

/// SGD with momentum in double (v ← γ⊙v − (1−γ)⊙g, w ← w + α⊙v, v₁ = 0), hypergradients by √T
/// checkpointing: checkpoints (w_t, v_t) every k steps; the reverse pass recomputes a segment's
/// states from its checkpoint and runs the adjoint through it:
///   dα_t = Σ_group dw ⊙ v_{t+1};  dv += α_t ⊙ dw;  dγ_t = Σ_group dv ⊙ (v_t + g_t);
///   dw −= H_t ((1 − γ_t) ⊙ dv);   dv ← γ_t ⊙ dv.
template <class Objective, class Meta>
CheckpointedResult checkpointedHypergradients(const Objective& f, const Meta& meta,
                                              const hypergrad::ParameterLayout& layout, const MatrixXd& alpha,
                                              const MatrixXd& gamma, const VectorXd& w1, Index k) {
  const Index T = alpha.rows(), n = w1.size(), numSegments = (T + k - 1) / k;
  std::vector<VectorXd> checkW, checkV;  // state before step s·k
  VectorXd w = w1, v = VectorXd::Zero(n), g(n);
  const auto step = [&](Index t, VectorXd& wt, VectorXd& vt) {
    f.gradient(wt, t, g);
    const VectorXd a = layout.expand(alpha.row(t)), c = layout.expand(gamma.row(t));
    vt = (c.array() * vt.array() - (1.0 - c.array()) * g.array()).matrix();
    wt += (a.array() * vt.array()).matrix();
  };
  for (Index t = 0; t < T; ++t) {
    if (t % k == 0) {
      checkW.push_back(w);
      checkV.push_back(v);
    }
    step(t, w, v);
  }
  CheckpointedResult out;
  out.learningRates = MatrixXd::Zero(T, layout.numGroups());
  out.momenta = MatrixXd::Zero(T, layout.numGroups());
  VectorXd dw(n), dv = VectorXd::Zero(n), hu(n), mixed, u(n);
  out.metaObjective = meta.valueAndGradient(w, dw);
  std::vector<VectorXd> segW(static_cast<std::size_t>(k + 1)), segV(static_cast<std::size_t>(k + 1));
  out.stateBytes = sizeof(double) * static_cast<std::size_t>(n) * 2 *
                   (checkW.size() + static_cast<std::size_t>(k + 1));
  for (Index s = numSegments; s-- > 0;) {
    const Index t0 = s * k, t1 = std::min(T, t0 + k);
    segW[0] = checkW[static_cast<std::size_t>(s)];
    segV[0] = checkV[static_cast<std::size_t>(s)];
    for (Index t = t0; t < t1; ++t) {  // recompute the segment (w_t, v_t), t0 ≤ t ≤ t1
      const auto j = static_cast<std::size_t>(t - t0);
      segW[j + 1] = segW[j];
      segV[j + 1] = segV[j];
      step(t, segW[j + 1], segV[j + 1]);
    }
    for (Index t = t1; t-- > t0;) {
      const auto j = static_cast<std::size_t>(t - t0);
      const VectorXd a = layout.expand(alpha.row(t)), c = layout.expand(gamma.row(t));
      out.learningRates.row(t) = layout.sumByGroup((dw.array() * segV[j + 1].array()).matrix()).transpose();
      dv += (a.array() * dw.array()).matrix();
      u = ((1.0 - c.array()) * dv.array()).matrix();
      hypergrad::reverseStep(f, segW[j], t, u, g, hu, mixed);  // g_t and H_t u from one pass
      out.momenta.row(t) = layout.sumByGroup((dv.array() * (segV[j].array() + g.array())).matrix()).transpose();
      dw -= hu;
      dv = (c.array() * dv.array()).matrix();
    }
  }
  out.initialWeights = dw;
  return out;
}

// ---- Cases ------------------------------------------------------------------------------------

using ExactSgd = hypergrad::SgdMomentum<>;

/// Set when a smoke comparison failed: main() then returns 1, so ctest fails.
bool& disagreed() {
  static bool d = false;
  return d;
}

struct Point {
  double msPerStep = 0, stateMb = 0;
};
std::map<std::string, std::map<Index, Point>>& results() {
  static std::map<std::string, std::map<Index, Point>> r;
  return r;
}

void finish(benchmark::State& state, const std::string& method, const std::string& wl, Index T, double seconds,
            double rss0, std::size_t stateBytes) {
  const double peak = std::max(0.0, procStatusBytes("VmHWM") - rss0);
  state.counters["total_s"] = seconds;
  state.counters["ms_per_step"] = 1e3 * seconds / static_cast<double>(T);
  state.counters["peak_rss_growth_mb"] = peak / 1e6;
  state.counters["state_bytes"] = static_cast<double>(stateBytes);
  state.counters["threads"] = threads();
  if (wl == "mnist") results()[method][T] = Point{1e3 * seconds / static_cast<double>(T), static_cast<double>(stateBytes) / 1e6};
}

void exactCase(benchmark::State& state, const WorkloadSpec& spec, Index T) {
  const Workload& wl = bench::workload(spec);
  ExactSgd opt(wl.layout, wl.alphas(T), wl.gammas(T, spec.gamma));
  const VectorXd v1 = VectorXd::Zero(wl.size());
  double seconds = 0, rss0 = 0;
  std::size_t stateBytes = 0;
  for (auto _ : state) {
    rss0 = procStatusBytes("VmRSS");
    if (!resetPeak()) state.SkipWithError("cannot reset the RSS high-water mark (/proc/self/clear_refs)");
    const auto t0 = std::chrono::steady_clock::now();
    opt.start(wl.w1, v1);
    hypergrad::train(opt, wl.train);
    stateBytes = opt.buffer().memoryBytes() + static_cast<std::size_t>(T) * 8;  // buffer + run record
    const hypergrad::Hypergradients hg = hypergrad::reverse(opt, wl.train, wl.validation);  // checks exactness
    benchmark::DoNotOptimize(hg.learningRates.data());
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  finish(state, "exact", spec.name, T, seconds, rss0, stateBytes);
}

void checkpointedCase(benchmark::State& state, const WorkloadSpec& spec, Index T, bool compare) {
  const Workload& wl = bench::workload(spec);
  const ExactSgd probe(wl.layout, wl.alphas(T), wl.gammas(T, spec.gamma));  // the quantised γ
  const MatrixXd alpha = wl.alphas(T).values(), gamma = probe.quantizedMomenta();
  const auto k = static_cast<Index>(std::ceil(std::sqrt(static_cast<double>(T))));
  double seconds = 0, rss0 = 0;
  CheckpointedResult r;
  for (auto _ : state) {
    rss0 = procStatusBytes("VmRSS");
    if (!resetPeak()) state.SkipWithError("cannot reset the RSS high-water mark (/proc/self/clear_refs)");
    const auto t0 = std::chrono::steady_clock::now();
    r = checkpointedHypergradients(wl.train, wl.validation, wl.layout, alpha, gamma, wl.w1, k);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  state.counters["segment_steps"] = static_cast<double>(k);
  if (compare) {  // against the exact pass (a second run, outside the timed region)
    ExactSgd opt(wl.layout, wl.alphas(T), wl.gammas(T, spec.gamma));
    const hypergrad::Hypergradients hg =
        hypergrad::computeHypergradients(opt, wl.train, wl.validation, wl.w1, VectorXd::Zero(wl.size()));
    const double dAlpha = bench::maxRelativeDifference(hg.learningRates, r.learningRates, 1e-8);
    const double dGamma = bench::maxRelativeDifference(hg.momenta, r.momenta, 1e-8);
    state.counters["dalpha_max_rel_diff"] = dAlpha;
    state.counters["dgamma_max_rel_diff"] = dGamma;
    // The smoke pass is short (T = 10): the two must agree to rounding, or the baseline is wrong.
    if (spec.name == "smoke" && !(dAlpha <= 1e-8 && dGamma <= 1e-8)) {
      state.SkipWithError("the checkpointed hypergradients disagree with the exact reverse pass");
      disagreed() = true;  // fails the process (SkipWithError alone does not change the exit code)
    }
  }
  finish(state, "checkpointed", spec.name, T, seconds, rss0, r.stateBytes);
}

using bench::jsonNumber;

/// libtorch runs of benchmarks/torch (`bench_torch --impl torch ... --out FILE`, JSON lines):
/// ms per step and the graph's memory (peak RSS over the computation − RSS after the setup), by T,
/// for the thread count of this run.
std::map<Index, Point> readTorch(const std::string& path) {
  std::map<Index, Point> out;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("bench_long_horizon: cannot read --torch file '" + path + "'");
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("\"impl\":\"torch\"") == std::string::npos || jsonNumber(line, "threads") != threads()) continue;
    const auto T = static_cast<Index>(jsonNumber(line, "steps"));
    const double ms = 1e3 * jsonNumber(line, "time_s") / static_cast<double>(T);
    const double mb = (jsonNumber(line, "peak_rss_mib") - jsonNumber(line, "setup_rss_mib")) * 1.048576;
    if (out.count(T) == 0 || ms < out[T].msPerStep) out[T] = Point{ms, mb};
  }
  return out;
}

/// Refills results() from a --benchmark_out JSON file of an earlier run (for --replot).
void readResults(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("bench_long_horizon: cannot read --replot file '" + path + "'");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string tag = "\"name\": \"long_horizon/";
  for (std::size_t at = text.find(tag); at != std::string::npos; at = text.find(tag, at + 1)) {
    const std::size_t end = text.find('}', at);
    const std::string entry = text.substr(at, end - at);
    const std::size_t m0 = tag.size(), m1 = entry.find('/', m0);
    const std::string method = entry.substr(m0, m1 - m0);
    const std::size_t w1 = entry.find('/', m1 + 1);
    if (entry.compare(m1 + 1, w1 - m1 - 1, "mnist") != 0) continue;
    const auto T = static_cast<Index>(std::strtoll(entry.c_str() + entry.find("T:", w1) + 2, nullptr, 10));
    results()[method][T] = Point{jsonNumber(entry, "ms_per_step"), jsonNumber(entry, "state_bytes") / 1e6};
  }
}

void writePlot(const std::string& path, const std::string& torchFile) {
  const auto& r = results();
  if (r.empty()) return;
  hypergrad::SvgPlot time("Paper MLP hypergradient: time per step", "log10 T", "ms per step");
  hypergrad::SvgPlot memory("Paper MLP hypergradient: memory kept for the reverse pass", "log10 T", "MB");
  memory.setLogY(true);
  for (const auto& [method, points] : r) {
    std::vector<double> x, ms, mb;
    for (const auto& [T, p] : points) {
      x.push_back(std::log10(static_cast<double>(T)));
      ms.push_back(p.msPerStep);
      mb.push_back(p.stateMb);
    }
    time.addLine(method == "exact" ? "exact reverse (hypergrad)" : "sqrt(T) checkpointing (double)", x, ms);
    memory.addLine(method == "exact" ? "exact: information buffer + run record" : "checkpoints + one segment", x, mb);
  }
  if (!torchFile.empty()) {  // libtorch's store-everything unroll, measured by benchmarks/torch
    std::vector<double> x, ms, mb;
    for (const auto& [T, p] : readTorch(torchFile)) {
      x.push_back(std::log10(static_cast<double>(T)));
      ms.push_back(p.msPerStep);
      mb.push_back(p.stateMb);
    }
    time.addLine("libtorch unrolled (bench_torch)", x, ms);
    memory.addLine("libtorch: its autograd graph (peak RSS growth)", x, mb);
  }
  time.save(path + "-time.svg");
  memory.save(path + "-memory.svg");
  std::printf("plots: %s-time.svg, %s-memory.svg\n", path.c_str(), path.c_str());
}

void registerAll(bool longCases) {
  const auto ms = benchmark::kMillisecond;
  {
    const WorkloadSpec spec = bench::smokeSpec();
    benchmark::RegisterBenchmark("long_horizon/exact/smoke/T:10",
                                 [spec](benchmark::State& st) { exactCase(st, spec, 10); })->Unit(ms)->Iterations(1);
    benchmark::RegisterBenchmark("long_horizon/checkpointed/smoke/T:10",
                                 [spec](benchmark::State& st) { checkpointedCase(st, spec, 10, true); })
        ->Unit(ms)->Iterations(1);
  }
  const WorkloadSpec spec = bench::mnistSpec();
  std::vector<Index> horizons = {100, 1000};
  if (longCases) horizons.push_back(10000);
  horizons.push_back(100000);  // registered always, run only when a filter selects it (see main)
  for (const Index T : horizons) {
    const std::string tail = "/mnist/T:" + std::to_string(T);
    benchmark::RegisterBenchmark(("long_horizon/exact" + tail).c_str(),
                                 [spec, T](benchmark::State& st) { exactCase(st, spec, T); })->Unit(ms)->Iterations(1);
    benchmark::RegisterBenchmark(("long_horizon/checkpointed" + tail).c_str(),
                                 [spec, T](benchmark::State& st) { checkpointedCase(st, spec, T, T <= 1000); })
        ->Unit(ms)->Iterations(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string plot = "long_horizon", torch, replot;
  std::vector<char*> args;
  bool filtered = false;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--plot" && i + 1 < argc) {
      plot = argv[++i];
      continue;
    }
    if (a == "--torch" && i + 1 < argc) {
      torch = argv[++i];
      continue;
    }
    if (a == "--replot" && i + 1 < argc) {  // plots from an earlier run's --benchmark_out JSON, no run
      replot = argv[++i];
      continue;
    }
    if (a.rfind("--benchmark_filter=", 0) == 0) filtered = true;
    args.push_back(argv[i]);
  }
  if (!replot.empty()) {
    readResults(replot);
    writePlot(plot, torch);
    return 0;
  }
  // T = 10⁵ takes hours: only an explicit filter runs it.
  static std::string defaultFilter = "--benchmark_filter=^long_horizon/.*/T:(10|100|1000|10000)/";
  if (!filtered) args.push_back(defaultFilter.data());
  int n = static_cast<int>(args.size());
  const int rc = bench::runBenchmarks(n, args.data(), registerAll);
  if (rc == 0) writePlot(plot, torch);
  if (disagreed()) {
    std::fprintf(stderr, "bench_long_horizon: the checkpointed baseline disagrees with the exact reverse pass\n");
    return 1;
  }
  return rc;
}
