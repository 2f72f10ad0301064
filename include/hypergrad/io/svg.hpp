// SPDX-License-Identifier: MIT
#pragma once

/// \file svg.hpp
/// \brief SvgPlot: dependency-free line plots written as SVG (for examples and quick looks at
/// schedules, learning curves and meta-learning curves).
///
/// Axes with ticks and numbers, a title, axis labels, a legend and one distinct colour per line.
/// Degenerate data is drawn rather than rejected: non-finite points (and, on a log axis,
/// non-positive values) are skipped and break the line there, a constant series gets a small
/// range around its value, a plot without any finite point shows empty axes.
///
/// \code
///   hypergrad::SvgPlot plot("meta-learning curve", "meta-iteration", "training loss");
///   plot.addLine("training", losses);               // x = 0, 1, ..., n-1
///   plot.addLine("validation", iterations, valid);  // explicit x
///   plot.addHorizontalLine("baseline", 0.5, {-1, true});  // dashed reference line
///   plot.setLogY(true);
///   plot.save("curve.svg");                         // throws InvalidArgument if unwritable
/// \endcode

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "hypergrad/errors.hpp"

namespace hypergrad {

/// How one line of an SvgPlot is drawn.
struct LineStyle {
  int colour = -1;      ///< index into the palette; -1: the next unused colour
  bool dashed = false;  ///< dashed stroke (e.g. for reference lines)
  double width = 1.8;   ///< stroke width in pixels
};

/// A line plot rendered as a standalone SVG document. Cheap to build; str() renders.
class SvgPlot {
 public:
  /// An empty plot with a title and axis labels.
  SvgPlot(std::string title, std::string xLabel, std::string yLabel)
      : m_title(std::move(title)), m_xLabel(std::move(xLabel)), m_yLabel(std::move(yLabel)) {}

  /// A line through (x[i], y[i]); x and y must have the same length.
  void addLine(std::string label, const std::vector<double>& x, const std::vector<double>& y,
               LineStyle style = {}) {
    if (x.size() != y.size())
      throw InvalidArgument(detail::message("SvgPlot::addLine('", label, "'): x has ", x.size(),
                                            " values but y has ", y.size()));
    if (style.colour < 0) style.colour = m_nextColour++;
    m_lines.push_back(Line{std::move(label), x, y, style, false});
  }

  /// A line through (i, y[i]) for i = 0 .. n-1.
  void addLine(std::string label, const std::vector<double>& y, LineStyle style = {}) {
    std::vector<double> x(y.size());
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<double>(i);
    addLine(std::move(label), x, y, style);
  }

  /// A horizontal line at y across the whole x range (a reference value, e.g. a heuristic).
  void addHorizontalLine(std::string label, double y, LineStyle style = LineStyle{-1, true, 1.4}) {
    if (style.colour < 0) style.colour = m_nextColour++;
    m_lines.push_back(Line{std::move(label), {}, {y}, style, true});
  }

  /// A logarithmic y axis (for values spanning decades); it leaves out values <= 0.
  void setLogY(bool logY) { m_logY = logY; }
  /// The canvas size in pixels; InvalidArgument below 200 × 150.
  void setSize(int width, int height) {
    if (width < 200 || height < 150)
      throw InvalidArgument(detail::message("SvgPlot::setSize: ", width, " x ", height,
                                            " is too small (at least 200 x 150)"));
    m_width = width;
    m_height = height;
  }

  /// Writes str() to path; throws InvalidArgument naming the path if it cannot be written.
  void save(const std::string& path) const {
    std::ofstream out(path, std::ios::binary);
    if (!out)
      throw InvalidArgument(detail::message("SvgPlot::save: cannot open '", path,
                                            "' for writing (does the directory exist?)"));
    out << str();
    out.flush();
    if (!out) throw InvalidArgument(detail::message("SvgPlot::save: writing '", path, "' failed"));
  }

  /// The SVG document.
  std::string str() const {
    const double left = 78, top = 40, bottom = 52;
    const double legendWidth = legendColumnWidth();
    const double right = legendWidth > 0 ? legendWidth + 24 : 20;
    const double pw = std::max(40.0, m_width - left - right), ph = std::max(40.0, m_height - top - bottom);

    Range xr, yr;
    bool any = false;
    for (const Line& l : m_lines) {
      if (l.horizontal) {
        if (usable(l.y[0])) yr.add(ty(l.y[0])), any = true;
        continue;
      }
      for (std::size_t i = 0; i < l.x.size(); ++i)
        if (std::isfinite(l.x[i]) && usable(l.y[i])) xr.add(l.x[i]), yr.add(ty(l.y[i])), any = true;
    }
    if (!xr.valid()) xr = Range{0, 1};
    if (!yr.valid()) yr = m_logY ? Range{-1, 1} : Range{0, 1};
    xr.widenIfFlat(0.5);
    yr.widenIfFlat(m_logY ? 0.1 : std::max(1e-12, 0.05 * std::abs(yr.lo)));
    const double pad = 0.04 * (yr.hi - yr.lo);
    yr.lo -= pad;
    yr.hi += pad;

    auto sx = [&](double x) { return left + (x - xr.lo) / (xr.hi - xr.lo) * pw; };
    auto sy = [&](double yt) { return top + ph - (yt - yr.lo) / (yr.hi - yr.lo) * ph; };

    std::ostringstream os;
    os << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
       << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << m_width << "\" height=\"" << m_height
       << "\" viewBox=\"0 0 " << m_width << ' ' << m_height
       << "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
       << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    os << "<text x=\"" << num(left + pw / 2) << "\" y=\"24\" text-anchor=\"middle\" font-size=\"15\" "
       << "font-weight=\"bold\">" << escape(m_title) << "</text>\n";

    // Grid and ticks.
    const std::vector<double> xt = linearTicks(xr.lo, xr.hi, std::max(2, int(pw / 80)));
    for (double v : xt) {
      const double px = sx(v);
      os << "<line x1=\"" << num(px) << "\" y1=\"" << num(top) << "\" x2=\"" << num(px) << "\" y2=\""
         << num(top + ph) << "\" stroke=\"#e4e4e4\"/>\n"
         << "<line x1=\"" << num(px) << "\" y1=\"" << num(top + ph) << "\" x2=\"" << num(px) << "\" y2=\""
         << num(top + ph + 5) << "\" stroke=\"black\"/>\n"
         << "<text x=\"" << num(px) << "\" y=\"" << num(top + ph + 18) << "\" text-anchor=\"middle\">"
         << tickLabel(v, xt) << "</text>\n";
    }
    std::vector<std::pair<double, std::string>> yticks = yTicks(yr, std::max(2, int(ph / 45)));
    for (const auto& [yt, label] : yticks) {
      const double py = sy(yt);
      os << "<line x1=\"" << num(left) << "\" y1=\"" << num(py) << "\" x2=\"" << num(left + pw) << "\" y2=\""
         << num(py) << "\" stroke=\"#e4e4e4\"/>\n"
         << "<line x1=\"" << num(left - 5) << "\" y1=\"" << num(py) << "\" x2=\"" << num(left) << "\" y2=\""
         << num(py) << "\" stroke=\"black\"/>\n"
         << "<text x=\"" << num(left - 8) << "\" y=\"" << num(py + 4) << "\" text-anchor=\"end\">" << label
         << "</text>\n";
    }
    os << "<rect x=\"" << num(left) << "\" y=\"" << num(top) << "\" width=\"" << num(pw) << "\" height=\""
       << num(ph) << "\" fill=\"none\" stroke=\"black\"/>\n";
    os << "<text x=\"" << num(left + pw / 2) << "\" y=\"" << num(m_height - 10.0)
       << "\" text-anchor=\"middle\">" << escape(m_xLabel) << "</text>\n";
    os << "<text transform=\"translate(16," << num(top + ph / 2) << ") rotate(-90)\" text-anchor=\"middle\">"
       << escape(m_yLabel) << (m_logY ? " (log scale)" : "") << "</text>\n";
    if (!any)
      os << "<text x=\"" << num(left + pw / 2) << "\" y=\"" << num(top + ph / 2)
         << "\" text-anchor=\"middle\" fill=\"#888\">no finite data</text>\n";

    // Lines, clipped to the plot area.
    os << "<clipPath id=\"plotarea\"><rect x=\"" << num(left) << "\" y=\"" << num(top) << "\" width=\""
       << num(pw) << "\" height=\"" << num(ph) << "\"/></clipPath>\n<g clip-path=\"url(#plotarea)\" "
       << "fill=\"none\" stroke-linejoin=\"round\" stroke-linecap=\"round\">\n";
    for (const Line& l : m_lines) {
      const std::string stroke = strokeAttributes(l.style);
      if (l.horizontal) {
        if (!usable(l.y[0])) continue;
        os << "<line x1=\"" << num(left) << "\" y1=\"" << num(sy(ty(l.y[0]))) << "\" x2=\"" << num(left + pw)
           << "\" y2=\"" << num(sy(ty(l.y[0]))) << "\"" << stroke << "/>\n";
        continue;
      }
      // Split at unusable points; a lone point becomes a dot.
      std::vector<std::pair<double, double>> seg;
      auto flush = [&]() {
        if (seg.size() == 1) {
          os << "<circle cx=\"" << num(seg[0].first) << "\" cy=\"" << num(seg[0].second) << "\" r=\"2.5\" fill=\""
             << colour(l.style.colour) << "\" stroke=\"none\"/>\n";
        } else if (seg.size() > 1) {
          os << "<polyline points=\"";
          for (const auto& [px, py] : seg) os << num(px) << ',' << num(py) << ' ';
          os << "\"" << stroke << "/>\n";
        }
        seg.clear();
      };
      for (std::size_t i = 0; i < l.x.size(); ++i) {
        if (std::isfinite(l.x[i]) && usable(l.y[i]))
          seg.emplace_back(sx(l.x[i]), sy(ty(l.y[i])));
        else
          flush();
      }
      flush();
    }
    os << "</g>\n";

    // Legend.
    if (legendWidth > 0) {
      const double lx = left + pw + 14;
      double ly = top + 4;
      const double rowHeight = legendRowHeight();
      for (const Line& l : m_lines) {
        os << "<line x1=\"" << num(lx) << "\" y1=\"" << num(ly + 6) << "\" x2=\"" << num(lx + 22) << "\" y2=\""
           << num(ly + 6) << "\"" << strokeAttributes(l.style) << "/>\n"
           << "<text x=\"" << num(lx + 28) << "\" y=\"" << num(ly + 10) << "\" font-size=\"11\">"
           << escape(l.label) << "</text>\n";
        ly += rowHeight;
      }
    }
    os << "</svg>\n";
    return os.str();
  }

 private:
  struct Line {
    std::string label;
    std::vector<double> x, y;
    LineStyle style;
    bool horizontal;
  };
  struct Range {
    double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
    void add(double v) { lo = std::min(lo, v), hi = std::max(hi, v); }
    bool valid() const { return lo <= hi; }
    void widenIfFlat(double by) {
      if (hi - lo <= 1e-12 * std::max(1.0, std::abs(lo))) lo -= by, hi += by;
    }
  };

  bool usable(double y) const { return std::isfinite(y) && (!m_logY || y > 0); }
  double ty(double y) const { return m_logY ? std::log10(y) : y; }

  static std::string colour(int index) {
    static const char* palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
                                    "#e377c2", "#17becf", "#7f7f7f", "#bcbd22", "#393b79", "#637939",
                                    "#843c39", "#7b4173", "#3182bd", "#e6550d"};
    return palette[static_cast<std::size_t>(index) % (sizeof(palette) / sizeof(palette[0]))];
  }
  static std::string strokeAttributes(const LineStyle& s) {
    std::string a = " stroke=\"" + colour(s.colour) + "\" stroke-width=\"" + num(s.width) + "\"";
    if (s.dashed) a += " stroke-dasharray=\"6,4\"";
    return a;
  }

  double legendColumnWidth() const {
    std::size_t longest = 0;
    for (const Line& l : m_lines) longest = std::max(longest, l.label.size());
    if (m_lines.empty() || longest == 0) return 0;
    return 34 + 6.1 * static_cast<double>(std::min<std::size_t>(longest, 40));  // ~6 px per char at 11 px
  }
  double legendRowHeight() const {
    const double available = m_height - 40 - 52;
    return std::clamp(available / static_cast<double>(std::max<std::size_t>(1, m_lines.size())), 9.0, 17.0);
  }

  static std::string num(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", v);
    return buf;
  }

  static std::string escape(const std::string& s) {
    std::string out;
    for (char c : s) {
      switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&quot;"; break;
        default: out += c;
      }
    }
    return out;
  }

  /// "Nice" step (1, 2 or 5 times a power of ten) giving about `target` intervals over span.
  static double niceStep(double span, int target) {
    const double raw = span / std::max(1, target);
    const double p = std::pow(10.0, std::floor(std::log10(raw)));
    const double m = raw / p;
    return (m <= 1 + 1e-9 ? 1 : m <= 2 + 1e-9 ? 2 : m <= 2.5 + 1e-9 ? 2.5 : m <= 5 + 1e-9 ? 5 : 10) * p;  // <= target intervals
  }
  static std::vector<double> linearTicks(double lo, double hi, int target) {
    const double step = niceStep(hi - lo, target);
    std::vector<double> ticks;
    for (double k = std::ceil(lo / step - 1e-9); k * step <= hi + 1e-9 * step && ticks.size() < 100; k += 1)
      ticks.push_back(std::abs(k * step) < 1e-12 * step ? 0.0 : k * step);
    return ticks;
  }
  /// A label with as many decimals as the tick spacing needs; scientific for very large/small.
  static std::string tickLabel(double v, const std::vector<double>& ticks) {
    double step = ticks.size() > 1 ? std::abs(ticks[1] - ticks[0]) : std::max(std::abs(v), 1.0);
    double mag = 0;
    for (double t : ticks) mag = std::max(mag, std::abs(t));
    char buf[48];
    if (mag >= 1e6 || (mag > 0 && mag < 1e-3)) {
      const int digits = std::max(0, int(std::ceil(std::log10(mag / step) - 1e-9)));
      std::snprintf(buf, sizeof buf, "%.*e", std::min(digits, 6), v);
    } else {
      // Enough decimals to show the step itself (a step of 0.025 needs 3, not 2).
      int decimals = std::max(0, int(-std::floor(std::log10(step) + 1e-9)));
      while (decimals < 10) {
        const double scaled = step * std::pow(10.0, decimals);
        if (std::abs(scaled - std::round(scaled)) <= 1e-6 * scaled) break;
        ++decimals;
      }
      std::snprintf(buf, sizeof buf, "%.*f", std::min(decimals, 10), v);
    }
    return buf;
  }
  /// Ticks in transformed coordinates with their labels in data units.
  std::vector<std::pair<double, std::string>> yTicks(const Range& r, int target) const {
    std::vector<std::pair<double, std::string>> out;
    if (!m_logY) {
      const std::vector<double> t = linearTicks(r.lo, r.hi, target);
      for (double v : t) out.emplace_back(v, tickLabel(v, t));
      return out;
    }
    auto label = [](double k, double m) {  // m x 10^k
      char buf[32];
      if (k >= -3 && k <= 4)
        std::snprintf(buf, sizeof buf, "%g", m * std::pow(10.0, k));
      else if (m == 1)
        std::snprintf(buf, sizeof buf, "1e%d", int(k));
      else
        std::snprintf(buf, sizeof buf, "%ge%d", m, int(k));
      return std::string(buf);
    };
    if (r.hi - r.lo >= 1 && r.hi - r.lo < 4) {  // 1, 2, 5 per decade
      for (double k = std::floor(r.lo); k <= std::ceil(r.hi); k += 1)
        for (double m : {1.0, 2.0, 5.0}) {
          const double y = k + std::log10(m);
          if (y >= r.lo - 1e-9 && y <= r.hi + 1e-9) out.emplace_back(y, label(k, m));
        }
      return out;
    }
    if (r.hi - r.lo >= 4) {  // decades
      const double lo = std::ceil(r.lo - 1e-9), hi = std::floor(r.hi + 1e-9);
      const double every = std::max(1.0, std::ceil((hi - lo + 1) / std::max(2, target)));
      for (double k = lo; k <= hi; k += every) out.emplace_back(k, label(k, 1.0));
      return out;
    }
    // Under a decade: nice ticks in data units, positioned by their logarithm.
    const double vlo = std::pow(10.0, r.lo), vhi = std::pow(10.0, r.hi);
    std::vector<double> t = linearTicks(vlo, vhi, target);
    t.erase(std::remove_if(t.begin(), t.end(), [](double v) { return v <= 0; }), t.end());
    for (double v : t) out.emplace_back(std::log10(v), tickLabel(v, t));
    return out;
  }

  std::string m_title, m_xLabel, m_yLabel;
  std::vector<Line> m_lines;
  int m_nextColour = 0;
  bool m_logY = false;
  int m_width = 760, m_height = 440;
};

}  // namespace hypergrad
