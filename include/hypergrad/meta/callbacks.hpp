// SPDX-License-Identifier: MIT
#pragma once

/// \file callbacks.hpp
/// \brief Ready-made meta-optimisation callbacks: a progress line, a CSV log, early stopping.
/// Pass any number of them to metaOptimize; each implements only the hooks it needs.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../errors.hpp"
#include "meta_optimize.hpp"

namespace hypergrad {

/// One line per meta-iteration: iteration, a bar, objective, hypergradient norm, the metrics,
/// elapsed and estimated remaining time; a line for a failure and a summary at the end.
///
///     meta  12/50 [#####.............]  objective 0.3456  |grad| 1.2e-02  valid loss 0.41  3.1s, ~9.8s left
///     meta  13/50 FAILED (non-finite value): SgdMomentum::step: ...
class ProgressBar {
 public:
  /// Writes to `os` (which must outlive the bar) with a bar of `width` characters.
  explicit ProgressBar(std::ostream& os = std::cout, int width = 20) : m_os(&os), m_width(width) {}

  /// Prints the iteration's line; never stops the loop.
  bool onMetaIteration(const MetaIterationInfo& info) {
    const int done = static_cast<int>(static_cast<double>(m_width) * static_cast<double>(info.iteration + 1) /
                                      static_cast<double>(info.numIterations));
    std::ostringstream line;
    line << "meta " << std::setw(4) << info.iteration + 1 << "/" << info.numIterations << " ["
         << std::string(static_cast<std::size_t>(done), '#') << std::string(static_cast<std::size_t>(m_width - done), '.')
         << "]  objective " << std::setprecision(5) << info.objective << "  |grad| " << std::scientific
         << std::setprecision(2) << info.gradientNorm << std::defaultfloat;
    if (info.metrics)
      for (const auto& [name, value] : *info.metrics) line << "  " << name << " " << std::setprecision(4) << value;
    line << "  " << std::fixed << std::setprecision(1) << info.elapsedSeconds << "s, ~" << info.remainingSeconds
         << "s left";
    *m_os << line.str() << std::endl;
    return false;
  }

  /// Prints the FAILED line with the error's kind and message.
  void onMetaFailure(const MetaFailureInfo& info) {
    *m_os << "meta " << std::setw(4) << info.iteration + 1 << "/" << info.numIterations << " FAILED ("
          << metaFailureName(info.kind) << "): " << info.message << std::endl;
  }

  /// Prints the summary: how the run ended and the best objective.
  void onMetaEnd(const MetaResult& r) {
    // A failure's message is on the FAILED line already; the summary only names it.
    const std::string how = r.diverged ? detail::message("diverged at meta-iteration ", r.failedIteration, " (",
                                                         metaFailureName(r.failure), ")")
                            : r.stoppedEarly ? "stopped early (" + r.stopReason + ")"
                                             : std::string("finished");
    std::ostringstream line;  // formatted apart, so the flags of the caller's stream stay as they were
    line << "meta-optimisation " << how << " after " << r.iterations << " iterations in " << std::fixed
         << std::setprecision(1) << r.seconds << "s; " << std::defaultfloat << std::setprecision(6);
    if (r.bestIteration < 0)
      line << "no evaluation succeeded" << (r.diverged ? ", the parameters are the initial values" : "");
    else
      line << "best objective " << r.bestObjective << " at meta-iteration " << r.bestIteration
           << (r.diverged ? ", where the parameters are now" : "");
    *m_os << line.str() << std::endl;
  }

 private:
  std::ostream* m_os;
  int m_width;
};

/// Writes one CSV row per meta-iteration: iteration, objective, gradient_norm, elapsed_s, then
/// the metrics (columns fixed by the first iteration's metric names). Flushed every row.
/// A failed meta-iteration gets a last row with what is known of it: `nan` for an objective or
/// a norm that was never computed (evaluate threw), `inf`/`nan` as returned, empty metrics when
/// evaluate threw; the error itself is in MetaResult::stopReason (and on the ProgressBar line).
class CsvLogger {
 public:
  /// Creates (or truncates) the file at `path`; InvalidArgument when it cannot be opened.
  explicit CsvLogger(const std::string& path) : m_path(path), m_file(path) {
    if (!m_file) {
      throw InvalidArgument(detail::message("CsvLogger: cannot open '", path,
                                            "' for writing; check that the directory exists and is writable"));
    }
  }

  /// Writes the iteration's row; never stops the loop.
  bool onMetaIteration(const MetaIterationInfo& info) {
    writeRow(info.iteration, info.objective, info.gradientNorm, info.elapsedSeconds, info.metrics);
    return false;
  }

  /// Writes the failed iteration's row (see the class description).
  void onMetaFailure(const MetaFailureInfo& info) {
    writeRow(info.iteration, info.objective, info.gradientNorm, info.elapsedSeconds, info.metrics);
  }

 private:
  void writeRow(Index iteration, double objective, double gradientNorm, double elapsedSeconds,
                const std::map<std::string, double>* metrics) {
    if (!m_headerWritten) {
      m_file << "iteration,objective,gradient_norm,elapsed_s";
      if (metrics)
        for (const auto& kv : *metrics) {
          m_columns.push_back(kv.first);
          m_file << "," << kv.first;
        }
      m_file << "\n";
      m_headerWritten = true;
    }
    m_file << std::setprecision(17) << iteration << "," << objective << "," << gradientNorm << "," << elapsedSeconds;
    for (const std::string& c : m_columns) {
      m_file << ",";
      if (metrics) {
        const auto it = metrics->find(c);
        if (it != metrics->end()) m_file << it->second;
      }
    }
    m_file << "\n" << std::flush;
    if (!m_file) throw InvalidArgument(detail::message("CsvLogger: writing to '", m_path, "' failed"));
  }

  std::string m_path;
  std::ofstream m_file;
  std::vector<std::string> m_columns;
  bool m_headerWritten = false;
};

/// Stops the meta loop when the hypergradient norm explodes — the chaotic regime of large
/// learning rates where hypergradients stop being informative (Maclaurin et al.\ 2015, §5) — or
/// when a monitored value has not improved for `patience` iterations.
///
/// The reference for an explosion is the smallest positive norm seen so far: a norm of 0 (a flat
/// objective, every block frozen) is no reference, since relative to 0 every later norm would be
/// an explosion; until a positive norm is seen nothing counts as one. A NaN or infinite norm
/// (possible when EarlyStopping is driven by another loop; metaOptimize reports those as
/// failures) stops at once.
class EarlyStopping {
 public:
  /// \param explosionFactor stop when ‖∂f/∂x‖ exceeds this multiple of its smallest positive value so far
  /// \param patience        stop after this many iterations without a new best (0: never)
  /// \param metric          the metric to monitor ("" monitors the objective)
  explicit EarlyStopping(double explosionFactor = 100.0, Index patience = 0, std::string metric = "")
      : m_factor(explosionFactor), m_patience(patience), m_metric(std::move(metric)) {
    if (!(explosionFactor > 1.0))
      throw InvalidArgument(detail::message("EarlyStopping: explosionFactor ", explosionFactor, " must be > 1"));
    if (patience < 0) throw InvalidArgument("EarlyStopping: patience must be >= 0");
  }

  /// True (stop) on a non-finite or exploding hypergradient norm, or when patience has run
  /// out; InvalidArgument when the monitored metric is missing from the evaluation.
  bool onMetaIteration(const MetaIterationInfo& info) {
    // Checked first: a NaN compares false with everything below and would never stop the loop.
    if (!std::isfinite(info.gradientNorm)) {
      m_reason = detail::message("hypergradient norm ", info.gradientNorm, " at meta-iteration ", info.iteration,
                                 " is not finite: the training run diverged; lower the learning rates");
      return true;
    }
    if (info.gradientNorm > 0) m_smallestNorm = std::min(m_smallestNorm, info.gradientNorm);
    if (info.gradientNorm > m_factor * m_smallestNorm) {
      m_reason = detail::message("hypergradient norm ", info.gradientNorm, " at meta-iteration ", info.iteration,
                                 " exceeds ", m_factor, "x its smallest value ", m_smallestNorm,
                                 ": the training dynamics look chaotic; lower the learning rates");
      return true;
    }
    double value = info.objective;
    if (!m_metric.empty()) {
      if (!info.metrics || info.metrics->count(m_metric) == 0)
        throw InvalidArgument(detail::message("EarlyStopping: no metric named '", m_metric, "' in the evaluation"));
      value = info.metrics->at(m_metric);
    }
    if (value < m_best) {
      m_best = value;
      m_sinceBest = 0;
    } else if (m_patience > 0 && ++m_sinceBest >= m_patience) {
      m_reason = detail::message(m_metric.empty() ? std::string("objective") : m_metric, " has not improved on ", m_best,
                                 " for ", m_patience, " iterations");
      return true;
    }
    return false;
  }

  /// Why it stopped (empty until it has); metaOptimize copies it into MetaResult::stopReason.
  std::string stopReason() const { return m_reason; }

 private:
  double m_factor;
  Index m_patience;
  std::string m_metric;
  double m_smallestNorm = std::numeric_limits<double>::infinity();
  double m_best = std::numeric_limits<double>::infinity();
  Index m_sinceBest = 0;
  std::string m_reason;
};

}  // namespace hypergrad
