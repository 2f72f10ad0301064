// SPDX-License-Identifier: MIT
#pragma once

/// \file learning_curves.hpp
/// \brief Learning-curve extrapolation (Domhan, Springenberg & Hutter 2015): from the first part
/// of a training curve, predict its value at a later step with an uncertainty, and stop a run
/// whose chance of beating the best run so far is small.
///
/// The curve y(x) (x = step ≥ 1, y a loss to minimise or an accuracy to maximise) is fitted by
/// eleven parametric families, each by maximum likelihood under Gaussian noise (nonlinear least
/// squares by Levenberg–Marquardt from several data-driven starts). The families are those of
/// Domhan et al., stated for an improving curve z(x) that rises towards an asymptote:
///
/// | name        | z(x)                                   | parameters        |
/// |-------------|----------------------------------------|-------------------|
/// | pow3        | c − a x^(−α)                           | c, a, α           |
/// | pow4        | c − (a x + b)^(−α)                     | c, a, b, α        |
/// | logPower    | a / (1 + (x / e^b)^c)                  | a, b, c           |
/// | exp3        | c − exp(−a x + b)                      | c, a, b           |
/// | exp4        | c − exp(−a x^α + b)                    | c, a, b, α        |
/// | mmf         | α − (α − β) / (1 + (κ x)^δ)            | α, β, κ, δ        |
/// | janoschek   | α − (α − β) exp(−κ x^δ)                | α, β, κ, δ        |
/// | weibull     | α − (α − β) exp(−(κ x)^δ)              | α, β, κ, δ        |
/// | vaporPressure | exp(a + b / x + c log x)             | a, b, c           |
/// | logLogLinear | log(a log x + b)                      | a, b              |
/// | ilog2       | c − a / log(x + 1)                     | c, a              |
///
/// (ilog2 uses log(x + 1) where Domhan et al. write log x, so that x = 1 is allowed.) Families
/// with an additive constant (pow3, pow4, exp3, exp4, mmf, janoschek, weibull, ilog2) are fitted
/// to z = s y, s = −1 for a loss (Minimize) and +1 for an accuracy (Maximize), so that z rises as
/// in the table; the three without one (logPower, vaporPressure, logLogLinear) are fitted to y
/// itself, which they can describe rising or falling, and need y > 0 (a loss, an accuracy): a
/// shift of y would take them out of their family. Predictions are mapped back to y.
///
/// **Ensemble.** Each family's fit has a log-likelihood ℓ_k (noise variance σ_k² = RSS/n); the
/// families are weighted by their Akaike weights w_k ∝ exp(ℓ_k − p_k) (p_k parameters), the
/// maximum-likelihood answer to "which family, and how sure" that Domhan et al.'s MCMC refines.
/// A fit is rejected (weight 0, with a reason) when it does not converge to finite values, when
/// it predicts a final value worse than its own start (the families describe improving curves),
/// or outside the bounds the caller gives (e.g. a loss ≥ 0, an accuracy ≤ 1). Family k predicts
/// μ_k at the target with scale s_k, s_k² = σ̂_k² (1 + jᵀ (JᵀJ)⁻¹ j), σ̂_k² = RSS/(n − p_k): the
/// noise of one observation plus the parameters' uncertainty by linearisation (j = ∂z(target)/∂p,
/// J the Jacobian at the observations) — as a Student-t with n − p_k degrees of freedom, since σ̂_k
/// is estimated from the same points: a prediction from a handful of points has heavy tails, which
/// is what keeps an early stopping rule from trusting it. The ensemble is the mixture
/// Σ w_k t_{n−p_k}(μ_k, s_k): its mean, a standard deviation (each family's scale s_k counted as
/// its sd), and P(final better than y*) = Σ w_k F_{n−p_k}(±(y* − μ_k)/s_k).
///
/// **Stopping rule** (CurveStopping, a train() callback): every `every` steps, record the user's
/// metric; once `minPoints` are recorded, stop when P(final better than the best so far) falls
/// below `threshold` (Domhan et al.: 5%). A non-finite metric stops the run (it diverged); a curve
/// that no improving family fits is taken to improve no further.
///
/// \code
/// hypergrad::CurvePrediction p = hypergrad::extrapolateCurve(steps, losses, 1000.0);
/// std::printf("final loss %.3f ± %.3f, P(< 0.35) = %.2f\n", p.mean, p.sd, p.probabilityBetterThan(0.35));
/// \endcode

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/QR>
#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"

namespace hypergrad {

/// Whether lower or higher values of a curve are better.
enum class CurveGoal {
  Minimize,  ///< a loss or an error rate
  Maximize   ///< an accuracy
};

/// One parametric curve family: z(x; p) for an improving curve z, and starting points.
struct CurveFamily {
  /// What the start function sees of the data (z: the values the family is fitted to).
  struct Summary {
    double xFirst;  ///< first observed x
    double xMid;    ///< median observed x
    double xLast;   ///< last observed x
    double zFirst;  ///< z at the first observations (mean of up to 3)
    double zLast;   ///< z at the last observations (mean of up to 3)
    double range;                ///< a positive scale of z's observed change
    bool rising;                 ///< whether improving means rising z (always, for additive families)
    const std::vector<double>* x;  ///< all observed x
    const std::vector<double>* z;  ///< all observed z
  };
  std::string name;     ///< the table's name, e.g. "pow3"
  std::string formula;  ///< z(x) as text, for reports
  int numParameters;    ///< p
  bool additive;        ///< whether it has an additive constant (fitted to s y, else to y > 0)
  std::function<double(double x, const double* p)> value;                  ///< z(x; p); NaN where undefined
  std::function<std::vector<std::vector<double>>(const Summary&)> starts;  ///< Levenberg–Marquardt starting points
};

namespace detail {

// The regularised incomplete beta function I_x(a, b) by its continued fraction (modified Lentz).
inline double incompleteBeta(double a, double b, double x) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const auto fraction = [](double p, double q, double v) {
    const double tiny = 1e-300;
    double c = 1, d = 1 - (p + q) * v / (p + 1);
    d = 1 / (std::abs(d) < tiny ? tiny : d);
    double h = d;
    for (int m = 1; m <= 300; ++m) {
      const double m2 = 2.0 * m;
      for (const double aa : {m * (q - m) * v / ((p + m2 - 1) * (p + m2)), -(p + m) * (p + q + m) * v / ((p + m2) * (p + m2 + 1))}) {
        d = 1 + aa * d;
        d = 1 / (std::abs(d) < tiny ? tiny : d);
        c = 1 + aa / c;
        if (std::abs(c) < tiny) c = tiny;
        h *= d * c;
      }
      if (std::abs(d * c - 1) < 1e-15) break;
    }
    return h;
  };
  const double front = std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x));
  return x < (a + 1) / (a + b + 2) ? front * fraction(a, b, x) / a : 1 - front * fraction(b, a, 1 - x) / b;
}

// P(T ≤ t) for Student's t with ν degrees of freedom.
inline double studentTCdf(double t, double nu) {
  const double tail = 0.5 * incompleteBeta(0.5 * nu, 0.5, nu / (nu + t * t));
  return t > 0 ? 1 - tail : tail;
}

// Ordinary least squares of y on the columns of a (small, dense); empty on failure.
inline std::vector<double> leastSquares(const Eigen::MatrixXd& a, const Eigen::VectorXd& y) {
  if (a.rows() < a.cols()) return {};
  const Eigen::VectorXd c = a.colPivHouseholderQr().solve(y);
  if (!c.allFinite()) return {};
  return std::vector<double>(c.data(), c.data() + c.size());
}

inline std::vector<CurveFamily> makeCurveFamilies() {
  using S = CurveFamily::Summary;
  using Starts = std::vector<std::vector<double>>;
  // Asymptote guesses: a little and a lot above the last value.
  const auto asymptotes = [](const S& s) { return std::array<double, 3>{s.zLast + 0.05 * s.range, s.zLast + 0.3 * s.range, s.zLast + s.range}; };
  std::vector<CurveFamily> f;
  f.push_back({"pow3", "c - a x^(-alpha)", 3, true, [](double x, const double* p) { return p[0] - p[1] * std::pow(x, -p[2]); },
               [asymptotes](const S& s) {
                 Starts r;
                 for (double c : asymptotes(s))
                   for (double alpha : {0.3, 1.0, 2.0}) r.push_back({c, (c - s.zFirst) * std::pow(s.xFirst, alpha), alpha});
                 return r;
               }});
  f.push_back({"pow4", "c - (a x + b)^(-alpha)", 4, true,
               [](double x, const double* p) {
                 const double base = p[1] * x + p[2];
                 return base > 0 ? p[0] - std::pow(base, -p[3]) : std::numeric_limits<double>::quiet_NaN();
               },
               [asymptotes](const S& s) {
                 Starts r;
                 for (double c : asymptotes(s))
                   for (double alpha : {0.5, 1.0}) {
                     const double a = std::pow(c - s.zFirst, -1.0 / alpha) / s.xFirst;  // (a x1)^(-α) = c − z1
                     r.push_back({c, a, 0.0, alpha});
                     r.push_back({c, 0.5 * a, 0.5 * a * s.xFirst, alpha});
                   }
                 return r;
               }});
  f.push_back({"logPower", "a / (1 + (x / e^b)^c)", 3, false,
               [](double x, const double* p) { return p[0] / (1.0 + std::pow(x / std::exp(p[1]), p[2])); },
               [asymptotes](const S& s) {
                 // Rising: a is the asymptote, c < 0; falling: a is the value near x = 0, c > 0.
                 Starts r;
                 const std::array<double, 3> as = s.rising ? asymptotes(s) : std::array<double, 3>{s.zFirst, 1.5 * s.zFirst, 3 * s.zFirst};
                 for (double a : as)
                   for (double c : {0.5, 1.0, 2.0}) r.push_back({a, std::log(s.xMid), s.rising ? -c : c});
                 return r;
               }});
  f.push_back({"exp3", "c - exp(-a x + b)", 3, true, [](double x, const double* p) { return p[0] - std::exp(-p[1] * x + p[2]); },
               [asymptotes](const S& s) {
                 Starts r;
                 for (double c : asymptotes(s))
                   for (double k : {0.5, 2.0, 8.0}) {
                     const double a = k / s.xLast;
                     r.push_back({c, a, std::log(c - s.zFirst) + a * s.xFirst});
                   }
                 return r;
               }});
  f.push_back({"exp4", "c - exp(-a x^alpha + b)", 4, true,
               [](double x, const double* p) { return p[0] - std::exp(-p[1] * std::pow(x, p[3]) + p[2]); },
               [asymptotes](const S& s) {
                 Starts r;
                 for (double c : asymptotes(s))
                   for (double alpha : {0.3, 0.6, 1.0})
                     for (double k : {1.0, 4.0}) {
                       const double a = k / std::pow(s.xLast, alpha);
                       r.push_back({c, a, std::log(c - s.zFirst) + a * std::pow(s.xFirst, alpha), alpha});
                     }
                 return r;
               }});
  // The three four-parameter saturating families share their starts: asymptote α, start β,
  // rate κ about 1/x_mid, shape δ.
  const auto sigmoidStarts = [asymptotes](bool kappaPowered) {
    return [asymptotes, kappaPowered](const S& s) {
      Starts r;
      const double beta = s.zFirst - 0.1 * s.range;
      for (double alpha : asymptotes(s))
        for (double delta : {0.5, 1.0, 2.0})
          for (double k : {0.3, 1.0, 3.0}) {
            const double kappa = kappaPowered ? k / std::pow(s.xMid, delta) : k / s.xMid;
            r.push_back({alpha, beta, kappa, delta});
          }
      return r;
    };
  };
  f.push_back({"mmf", "alpha - (alpha - beta) / (1 + (kappa x)^delta)", 4, true,
               [](double x, const double* p) { return p[0] - (p[0] - p[1]) / (1.0 + std::pow(p[2] * x, p[3])); },
               sigmoidStarts(false)});
  f.push_back({"janoschek", "alpha - (alpha - beta) exp(-kappa x^delta)", 4, true,
               [](double x, const double* p) { return p[0] - (p[0] - p[1]) * std::exp(-p[2] * std::pow(x, p[3])); },
               sigmoidStarts(true)});
  f.push_back({"weibull", "alpha - (alpha - beta) exp(-(kappa x)^delta)", 4, true,
               [](double x, const double* p) { return p[0] - (p[0] - p[1]) * std::exp(-std::pow(p[2] * x, p[3])); },
               sigmoidStarts(false)});
  // Families linear in their parameters after a transform start from that linear fit.
  f.push_back({"vaporPressure", "exp(a + b / x + c log x)", 3, false,
               [](double x, const double* p) { return std::exp(p[0] + p[1] / x + p[2] * std::log(x)); },
               [](const S& s) {
                 const Index n = static_cast<Index>(s.x->size());
                 Eigen::MatrixXd a(n, 3);
                 Eigen::VectorXd y(n);
                 for (Index i = 0; i < n; ++i) {
                   const double x = (*s.x)[static_cast<std::size_t>(i)];
                   a.row(i) << 1.0, 1.0 / x, std::log(x);
                   y(i) = std::log((*s.z)[static_cast<std::size_t>(i)]);
                 }
                 Starts r{{std::log(s.zLast), 0.0, 0.0}};
                 if (auto c = leastSquares(a, y); !c.empty()) r.push_back(c);
                 return r;
               }});
  f.push_back({"logLogLinear", "log(a log x + b)", 2, false,
               [](double x, const double* p) {
                 const double arg = p[0] * std::log(x) + p[1];
                 return arg > 0 ? std::log(arg) : std::numeric_limits<double>::quiet_NaN();
               },
               [](const S& s) {
                 const Index n = static_cast<Index>(s.x->size());
                 Eigen::MatrixXd a(n, 2);
                 Eigen::VectorXd y(n);
                 for (Index i = 0; i < n; ++i) {
                   a.row(i) << std::log((*s.x)[static_cast<std::size_t>(i)]), 1.0;
                   y(i) = std::exp((*s.z)[static_cast<std::size_t>(i)]);
                 }
                 Starts r{{0.0, std::exp(s.zLast)}};
                 if (auto c = leastSquares(a, y); !c.empty()) r.push_back(c);
                 return r;
               }});
  f.push_back({"ilog2", "c - a / log(x + 1)", 2, true, [](double x, const double* p) { return p[0] - p[1] / std::log(x + 1.0); },
               [](const S& s) {
                 const Index n = static_cast<Index>(s.x->size());
                 Eigen::MatrixXd a(n, 2);
                 Eigen::VectorXd y(n);
                 for (Index i = 0; i < n; ++i) {
                   a.row(i) << 1.0, -1.0 / std::log((*s.x)[static_cast<std::size_t>(i)] + 1.0);
                   y(i) = (*s.z)[static_cast<std::size_t>(i)];
                 }
                 Starts r{{s.zLast, 0.0}};
                 if (auto c = leastSquares(a, y); !c.empty()) r.push_back(c);
                 return r;
               }});
  return f;
}

}  // namespace detail

/// The eleven families of the table in learning_curves.hpp, in its order.
inline const std::vector<CurveFamily>& curveFamilies() {
  static const std::vector<CurveFamily> families = detail::makeCurveFamilies();
  return families;
}

/// Options of extrapolateCurve().
struct CurveExtrapolationOptions {
  CurveGoal goal = CurveGoal::Minimize;  ///< a loss (default) or an accuracy
  /// Bounds on the final value in y's units: a family predicting outside them is rejected
  /// (e.g. 0 for a loss, 1 for an accuracy).
  double lowerBound = -std::numeric_limits<double>::infinity();
  double upperBound = std::numeric_limits<double>::infinity();  ///< see lowerBound
  std::vector<std::string> families;  ///< names to use; empty = all eleven
  int maxIterations = 100;            ///< Levenberg–Marquardt iterations per start (from the 3 best starts)

  /// Sets the goal.
  CurveExtrapolationOptions& withGoal(CurveGoal g) { goal = g; return *this; }
  /// Sets both bounds.
  CurveExtrapolationOptions& withBounds(double lower, double upper) { lowerBound = lower; upperBound = upper; return *this; }
  /// Restricts the ensemble to the named families.
  CurveExtrapolationOptions& withFamilies(std::vector<std::string> names) { families = std::move(names); return *this; }
};

/// One family's maximum-likelihood fit and its prediction (y units).
struct CurveFit {
  std::string family;              ///< the family's name
  std::vector<double> parameters;  ///< fitted parameters (z units, the table's order)
  double noiseSd = 0;              ///< σ̂ = √(RSS / (n − p)), y units
  double dof = 0;                  ///< n − p, the degrees of freedom of σ̂ and of the Student-t prediction
  double logLikelihood = -std::numeric_limits<double>::infinity();  ///< ℓ at σ² = RSS / n
  double weight = 0;               ///< Akaike weight in the ensemble (0 if rejected)
  double mean = std::numeric_limits<double>::quiet_NaN();  ///< predicted y at the target
  double sd = std::numeric_limits<double>::quiet_NaN();    ///< its scale s (Student-t with `dof` degrees of freedom)
  std::string rejected;            ///< why the fit is not in the ensemble; empty if it is
};

/// What extrapolateCurve() predicts for the curve's value at `target`.
struct CurvePrediction {
  double target = 0;   ///< the x predicted at
  CurveGoal goal = CurveGoal::Minimize;  ///< direction of improvement
  double mean = 0;     ///< the ensemble mixture's mean (y units)
  double sd = 0;       ///< the mixture's standard deviation, with each family's scale s as its sd
  std::vector<CurveFit> fits;  ///< every family tried, in the table's order

  /// P(the value at the target is better than `best`: below it for Minimize, above for Maximize).
  double probabilityBetterThan(double best) const {
    double p = 0;
    for (const CurveFit& f : fits) {
      if (f.weight <= 0) continue;
      const double d = goal == CurveGoal::Minimize ? best - f.mean : f.mean - best;
      p += f.weight * (f.sd > 0 ? detail::studentTCdf(d / f.sd, f.dof) : (d > 0 ? 1.0 : 0.0));
    }
    return p;
  }
  /// The fit with the largest weight.
  const CurveFit& bestFit() const {
    return *std::max_element(fits.begin(), fits.end(), [](const CurveFit& a, const CurveFit& b) { return a.weight < b.weight; });
  }
};

namespace detail {

// A value for a stop reason: 4 significant digits (messages elsewhere carry all 17).
inline std::string curveNumber(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.4g", v);
  return buffer;
}

struct LmResult {
  std::vector<double> p;
  double rss = std::numeric_limits<double>::infinity();
};

// The residual sum of squares at p (infinite where it is not finite); with `values`, also z(x_i; p).
inline double curveRss(const CurveFamily& fam, const std::vector<double>& x, const std::vector<double>& z, const double* p,
                       Eigen::VectorXd* values = nullptr) {
  double rss = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double v = fam.value(x[i], p);
    if (values) (*values)(static_cast<Index>(i)) = v;
    const double r = z[i] - v;
    rss += r * r;
  }
  return std::isfinite(rss) ? rss : std::numeric_limits<double>::infinity();
}

// Jacobian of z(x_i; p) (rows: points) by central differences, or forward differences from the
// values `base` (half the evaluations, enough to steer Levenberg–Marquardt); false if any entry is
// not finite.
inline bool curveJacobian(const CurveFamily& fam, const std::vector<double>& x, const std::vector<double>& p, Eigen::MatrixXd& jac,
                          const Eigen::VectorXd* base = nullptr) {
  const Index n = static_cast<Index>(x.size()), k = fam.numParameters;
  jac.resize(n, k);
  std::vector<double> q = p;
  for (Index j = 0; j < k; ++j) {
    const std::size_t sj = static_cast<std::size_t>(j);
    const double h = (base ? 1e-7 : 1e-6) * std::max(std::abs(p[sj]), 1e-4);
    for (Index i = 0; i < n; ++i) {
      const double xi = x[static_cast<std::size_t>(i)];
      q[sj] = p[sj] + h;
      const double up = fam.value(xi, q.data());
      if (base) {
        jac(i, j) = (up - (*base)(i)) / h;
      } else {
        q[sj] = p[sj] - h;
        jac(i, j) = (up - fam.value(xi, q.data())) / (2 * h);
      }
    }
    q[sj] = p[sj];
  }
  return jac.allFinite();
}

// Levenberg–Marquardt (Marquardt's diagonal scaling) from one start.
inline LmResult levenbergMarquardt(const CurveFamily& fam, const std::vector<double>& x, const std::vector<double>& z,
                                   std::vector<double> p, int maxIterations) {
  LmResult out;
  // `values` holds z(x_i; p) for the current p: computed with its RSS, kept from the accepted trial.
  Eigen::VectorXd values(static_cast<Index>(x.size())), trialValues(values.size());
  double rss = curveRss(fam, x, z, p.data(), &values);
  if (!std::isfinite(rss)) return out;
  const Index k = fam.numParameters;
  Eigen::MatrixXd jac;
  Eigen::VectorXd r(static_cast<Index>(x.size()));
  double lambda = 1e-3;
  for (int it = 0; it < maxIterations; ++it) {
    if (!curveJacobian(fam, x, p, jac, &values)) break;
    for (std::size_t i = 0; i < x.size(); ++i) r(static_cast<Index>(i)) = z[i] - values(static_cast<Index>(i));
    const Eigen::MatrixXd a = jac.transpose() * jac;
    const Eigen::VectorXd g = jac.transpose() * r;
    bool improved = false;
    while (lambda < 1e12) {
      Eigen::MatrixXd damped = a;
      for (Index j = 0; j < k; ++j) damped(j, j) += lambda * (a(j, j) + 1e-12);
      const Eigen::VectorXd step = damped.ldlt().solve(g);
      std::vector<double> trial = p;
      for (Index j = 0; j < k; ++j) trial[static_cast<std::size_t>(j)] += step(j);
      const double trialRss =
          step.allFinite() ? curveRss(fam, x, z, trial.data(), &trialValues) : std::numeric_limits<double>::infinity();
      if (trialRss < rss) {
        const double gain = rss - trialRss;
        p = std::move(trial);
        values.swap(trialValues);
        rss = trialRss;
        lambda = std::max(lambda / 3, 1e-12);
        improved = true;
        if (gain <= 1e-10 * rss || gain <= 1e-300) it = maxIterations;  // converged
        break;
      }
      lambda *= 4;
    }
    if (!improved) break;
  }
  out.p = std::move(p);
  out.rss = rss;
  return out;
}

// Refuses options that no curve could satisfy: empty bounds, unknown family names.
inline void checkCurveOptions(const CurveExtrapolationOptions& options, const char* who) {
  if (!(options.lowerBound < options.upperBound))
    throw InvalidArgument(detail::message(who, ": lower bound ", options.lowerBound, " is not below the upper bound ", options.upperBound));
  for (const std::string& name : options.families) {
    const auto& all = curveFamilies();
    if (std::none_of(all.begin(), all.end(), [&](const CurveFamily& f) { return f.name == name; }))
      throw InvalidArgument(std::string(who) + ": no curve family '" + name +
                            "'; the families are pow3, pow4, logPower, exp3, exp4, mmf, janoschek, weibull, vaporPressure, "
                            "logLogLinear, ilog2");
  }
}

// extrapolateCurve() without its last check: when no family fits, every fit carries its reason,
// every weight is 0 and mean and sd are NaN (CurveStopping judges that case itself).
inline CurvePrediction fitCurves(const std::vector<double>& x, const std::vector<double>& y, double target,
                                 const CurveExtrapolationOptions& options) {
  const std::size_t n = x.size();
  if (y.size() != n) throw InvalidArgument(detail::message("extrapolateCurve: ", n, " steps but ", y.size(), " values; give one value per step"));
  if (n < 3) throw InvalidArgument(detail::message("extrapolateCurve: ", n, " points; at least 3 are needed to fit a curve"));
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i]))
      throw InvalidArgument(detail::message("extrapolateCurve: point ", i, " is (", x[i], ", ", y[i], "); steps and values must be finite"));
    if (x[i] < 1 || (i > 0 && x[i] <= x[i - 1]))
      throw InvalidArgument(detail::message("extrapolateCurve: steps must be >= 1 and strictly increasing; point ", i, " has step ", x[i]));
  }
  if (!(target > x.back()))
    throw InvalidArgument(detail::message("extrapolateCurve: target step ", target, " is not beyond the last observed step ", x.back()));
  checkCurveOptions(options, "extrapolateCurve");

  // z = s y for additive families, y itself for the others (see the file comment).
  const double s = options.goal == CurveGoal::Minimize ? -1.0 : 1.0;
  const auto [lowest, highest] = std::minmax_element(y.begin(), y.end());
  const double range = *highest > *lowest ? *highest - *lowest : std::max(1e-8, 1e-6 * std::abs(*highest));
  const bool positive = *lowest > 0;
  std::vector<double> zAdditive(n);
  for (std::size_t i = 0; i < n; ++i) zAdditive[i] = s * y[i];
  const auto summarise = [&](const std::vector<double>& z, bool rising) {
    const std::size_t m = std::min<std::size_t>(3, n);
    CurveFamily::Summary summary{};
    summary.xFirst = x.front();
    summary.xMid = x[n / 2];
    summary.xLast = x.back();
    for (std::size_t i = 0; i < m; ++i) {
      summary.zFirst += z[i] / static_cast<double>(m);
      summary.zLast += z[n - 1 - i] / static_cast<double>(m);
    }
    summary.range = range;
    summary.rising = rising;
    summary.x = &x;
    summary.z = &z;
    return summary;
  };
  const CurveFamily::Summary additiveSummary = summarise(zAdditive, true), rawSummary = summarise(y, s > 0);

  CurvePrediction out;
  out.target = target;
  out.goal = options.goal;
  const double nd = static_cast<double>(n);
  double bestScore = -std::numeric_limits<double>::infinity();
  std::vector<double> scores;
  for (const CurveFamily& fam : curveFamilies()) {
    if (!options.families.empty() && std::find(options.families.begin(), options.families.end(), fam.name) == options.families.end())
      continue;
    CurveFit fit;
    fit.family = fam.name;
    const Index k = fam.numParameters;
    const std::vector<double>& z = fam.additive ? zAdditive : y;
    const double sign = fam.additive ? s : 1.0;  // y = sign z
    if (static_cast<Index>(n) <= k + 1) {
      fit.rejected = detail::message(n, " points are too few for ", k, " parameters and a noise level");
    } else if (!fam.additive && !positive) {
      fit.rejected = "it needs positive values (it has no additive constant)";
    } else {
      // Levenberg–Marquardt from the three starts that fit best as they are.
      std::vector<std::pair<double, std::vector<double>>> starts;
      for (std::vector<double>& start : fam.starts(fam.additive ? additiveSummary : rawSummary))
        if (static_cast<Index>(start.size()) == k) starts.emplace_back(detail::curveRss(fam, x, z, start.data()), std::move(start));
      std::sort(starts.begin(), starts.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      detail::LmResult best;
      for (std::size_t i = 0; i < std::min<std::size_t>(3, starts.size()); ++i) {
        detail::LmResult r = detail::levenbergMarquardt(fam, x, z, starts[i].second, options.maxIterations);
        if (r.rss < best.rss) best = std::move(r);
      }
      Eigen::MatrixXd jac, jTarget;
      if (!std::isfinite(best.rss)) {
        fit.rejected = "no start converged to finite values";
      } else if (!detail::curveJacobian(fam, x, best.p, jac) || !detail::curveJacobian(fam, {target}, best.p, jTarget)) {
        fit.rejected = "the fitted curve's derivatives are not finite";
      } else {
        fit.parameters = best.p;
        const double rss = std::max(best.rss, 1e-30 * range * range * nd);  // a perfect fit still has a noise floor
        const double sigma2 = rss / (nd - static_cast<double>(k));
        fit.logLikelihood = -0.5 * nd * (std::log(2 * 3.14159265358979323846 * rss / nd) + 1);
        const double zTarget = fam.value(target, best.p.data());
        const double zStart = fam.value(x.front(), best.p.data());
        // jᵀ (JᵀJ)⁻¹ j by a damped solve: an unidentifiable direction makes it large, as it should.
        Eigen::MatrixXd a = jac.transpose() * jac;
        for (Index j = 0; j < k; ++j) a(j, j) += 1e-12 * (a(j, j) + 1e-300);
        const Eigen::VectorXd jt = jTarget.row(0).transpose();
        const double leverage = jt.dot(a.ldlt().solve(jt));
        fit.noiseSd = std::sqrt(sigma2);
        fit.dof = nd - static_cast<double>(k);
        fit.mean = sign * zTarget;
        fit.sd = std::sqrt(sigma2 * (1 + std::max(0.0, leverage)));
        if (!std::isfinite(fit.mean) || !std::isfinite(fit.sd))
          fit.rejected = "its prediction is not finite";
        else if (s * sign * (zTarget - zStart) < 0)
          fit.rejected = "it predicts a final value worse than its own start";
        else if (fit.mean < options.lowerBound || fit.mean > options.upperBound)
          fit.rejected = detail::message("its prediction ", fit.mean, " is outside [", options.lowerBound, ", ", options.upperBound, "]");
      }
    }
    const double score = fit.rejected.empty() ? fit.logLikelihood - static_cast<double>(k) : -std::numeric_limits<double>::infinity();
    bestScore = std::max(bestScore, score);
    scores.push_back(score);
    out.fits.push_back(std::move(fit));
  }
  if (!std::isfinite(bestScore)) {
    out.mean = out.sd = std::numeric_limits<double>::quiet_NaN();
    return out;
  }
  double total = 0;
  for (const double score : scores) total += std::isfinite(score) ? std::exp(score - bestScore) : 0.0;
  double mean = 0, second = 0;
  for (std::size_t i = 0; i < scores.size(); ++i) {
    CurveFit& f = out.fits[i];
    f.weight = std::isfinite(scores[i]) ? std::exp(scores[i] - bestScore) / total : 0.0;
    if (f.weight > 0) {
      mean += f.weight * f.mean;
      second += f.weight * (f.sd * f.sd + f.mean * f.mean);
    }
  }
  out.mean = mean;
  out.sd = std::sqrt(std::max(0.0, second - mean * mean));
  return out;
}

}  // namespace detail

/// Fits the families to (x, y) and predicts y at `target` (see learning_curves.hpp for the
/// model). \throws InvalidArgument for x and y of different sizes, fewer than 3 points, x not
/// strictly increasing or below 1, non-finite values, target not beyond the last x, unknown
/// family names, empty bounds (lower ≥ upper), or when no family fits (the message gives each
/// family's reason: e.g. a curve that does not improve).
inline CurvePrediction extrapolateCurve(const std::vector<double>& x, const std::vector<double>& y, double target,
                                        const CurveExtrapolationOptions& options = {}) {
  CurvePrediction out = detail::fitCurves(x, y, target, options);
  if (std::none_of(out.fits.begin(), out.fits.end(), [](const CurveFit& f) { return f.weight > 0; })) {
    std::string why;
    for (const CurveFit& f : out.fits) why += "\n  " + f.family + ": " + f.rejected;
    throw InvalidArgument("extrapolateCurve: no curve family fits these " + std::to_string(x.size()) +
                          " points (is the curve improving, and are the bounds right?):" + why);
  }
  return out;
}

/// A train() callback that records a metric along a run, extrapolates it to the run's last step
/// and stops the run once P(final metric better than `best`) < `threshold` (learning_curves.hpp).
/// `Metric` is callable as `double metric(const Opt& opt, Index t)` (opt holds w_{t+1}). With
/// `best` infinite (no run finished yet) it only records.
template <class Metric>
class CurveStopping {
 public:
  /// Settings of the stopping rule.
  struct Settings {
    Index finalStep = 0;    ///< the step the run would end at (x of the prediction)
    double best = std::numeric_limits<double>::infinity();  ///< best final value so far (± infinity: none)
    Index every = 1;        ///< record the metric after every `every` steps
    Index minPoints = 5;    ///< recorded points before the first prediction
    double threshold = 0.05;  ///< stop when P(better than best) falls below it
    CurveExtrapolationOptions curve;  ///< goal, bounds, families
  };

  /// \throws InvalidArgument for finalStep < 1, every < 1, minPoints < 3, a threshold outside
  /// [0, 1], or curve options extrapolateCurve() would refuse (empty bounds, unknown families).
  CurveStopping(Metric metric, Settings settings) : m_metric(std::move(metric)), m_settings(std::move(settings)) {
    if (m_settings.finalStep < 1 || m_settings.every < 1 || m_settings.minPoints < 3 ||
        !(m_settings.threshold >= 0 && m_settings.threshold <= 1))
      throw InvalidArgument(detail::message("CurveStopping: finalStep ", m_settings.finalStep, ", every ", m_settings.every, ", minPoints ",
                                    m_settings.minPoints, ", threshold ", m_settings.threshold,
                                    "; need finalStep >= 1, every >= 1, minPoints >= 3, threshold in [0, 1]"));
    detail::checkCurveOptions(m_settings.curve, "CurveStopping");
  }

  /// Records the metric after every `every` steps; true = stop (see the class comment).
  template <class Opt>
  bool onForwardStep(const Opt& opt, Index t, const Eigen::VectorXd& /*g*/) {
    const Index step = t + 1;
    if (step % m_settings.every != 0) return false;
    return observe(step, m_metric(opt, t));
  }

  /// The rule without an optimizer: records (step, value) and says whether to stop. Two cases
  /// the families cannot judge: a value that is not finite (the run diverged) stops the run; a
  /// curve that no improving family fits (e.g. a loss rising since the first record) is taken to
  /// improve no further, so the run stops unless its best recorded value already beats `best`.
  /// \throws InvalidArgument (recording nothing) for a step below 1 or not after the last one.
  bool observe(Index step, double value) {
    if (step < 1 || (!m_steps.empty() && static_cast<double>(step) <= m_steps.back()))
      throw InvalidArgument(detail::message("CurveStopping::observe: step ", step, " after step ",
                                            m_steps.empty() ? 0.0 : m_steps.back(), "; steps must be >= 1 and increase"));
    m_steps.push_back(static_cast<double>(step));
    m_values.push_back(value);
    if (!std::isfinite(value)) {
      m_stoppedAt = step;
      m_probability = 0;
      m_reason = "learning curve: the metric is " + detail::curveNumber(value) + " at step " + std::to_string(step) +
                 " (the run diverged)";
      return true;
    }
    if (!std::isfinite(m_settings.best) || static_cast<Index>(m_steps.size()) < m_settings.minPoints ||
        step >= m_settings.finalStep)
      return false;
    const bool minimise = m_settings.curve.goal == CurveGoal::Minimize;
    m_prediction = detail::fitCurves(m_steps, m_values, static_cast<double>(m_settings.finalStep), m_settings.curve);
    if (std::isfinite(m_prediction.mean)) {
      m_probability = m_prediction.probabilityBetterThan(m_settings.best);
      m_reason = "learning curve: P(final value better than " + detail::curveNumber(m_settings.best) +
                 ") = " + detail::curveNumber(m_probability) + " < " + detail::curveNumber(m_settings.threshold) + " at step " +
                 std::to_string(step) + " (predicted " + detail::curveNumber(m_prediction.mean) + " +- " +
                 detail::curveNumber(m_prediction.sd) + ")";
    } else {  // no improving family fits: the run is taken to improve no further
      const double runBest = minimise ? *std::min_element(m_values.begin(), m_values.end())
                                      : *std::max_element(m_values.begin(), m_values.end());
      m_probability = (minimise ? runBest < m_settings.best : runBest > m_settings.best) ? 1.0 : 0.0;
      m_reason = "learning curve: no improving curve family fits the run at step " + std::to_string(step) +
                 " and its best value so far, " + detail::curveNumber(runBest) + ", does not beat " +
                 detail::curveNumber(m_settings.best);
    }
    if (m_probability < m_settings.threshold) {
      m_stoppedAt = step;
      return true;
    }
    return false;
  }

  /// Why train() stopped.
  std::string stopReason() const { return m_reason; }

  const std::vector<double>& steps() const { return m_steps; }    ///< recorded steps
  const std::vector<double>& values() const { return m_values; }  ///< recorded metric values
  const CurvePrediction& lastPrediction() const { return m_prediction; }  ///< the latest prediction made
  double lastProbability() const { return m_probability; }  ///< P(better than best) at the latest check; 1 before any
  Index stoppedAt() const { return m_stoppedAt; }  ///< the step the rule stopped at; 0 if it did not
  const Settings& settings() const { return m_settings; }  ///< the settings

 private:
  Metric m_metric;
  Settings m_settings;
  std::vector<double> m_steps, m_values;
  CurvePrediction m_prediction;
  double m_probability = 1.0;
  Index m_stoppedAt = 0;
  std::string m_reason;
};

}  // namespace hypergrad
