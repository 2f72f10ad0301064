// SPDX-License-Identifier: MIT
#pragma once

/// \file image.hpp
/// \brief Writing matrices as pictures (PGM and PNG) without zlib, and tiling them into a grid:
/// for looking at learned per-weight L2 penalties, hypergradients or learned training images.
///
/// A matrix is an image with row 0 at the top and column 0 at the left. The value range [lo, hi]
/// (or [-absMax, absMax]) maps to the colour scale and values outside it are clamped — **for
/// display only**: this is visualisation, the library itself never clamps a number. NaN is drawn
/// at the low end of the grey scale and white (the midpoint) in the diverging map.
///
/// PNGs are written with stored (uncompressed) deflate blocks, with CRC-32 and Adler-32 computed
/// here, so the files are valid PNGs of about width x height bytes (x3 for colour) without zlib.
/// `PngOptions().withDeflate(hypergrad::zlibDeflate)` (<hypergrad/data/deflate.hpp>, in the
/// `hypergrad::data` target, which links zlib) compresses them instead, and
/// `PngOptions().withScale(k)` draws each value as a k x k block (pictures of 28 x 28 images
/// that a person can see, without upscaling the matrix by hand).
///
/// \code
///   std::vector<Eigen::MatrixXd> digits;                       // e.g. ten 28 x 28 images
///   for (int c = 0; c < 10; ++c) digits.push_back(Eigen::Map<const Eigen::MatrixXd>(
///       pixels.row(c).data(), 28, 28).transpose());            // row-major pixels -> image
///   const Eigen::MatrixXd sheet = hypergrad::imageGrid(digits, 5);  // 2 rows of 5, 1 px gaps
///   hypergrad::writePng("digits.png", sheet, 0.0, 1.0);        // grey, 0 = black, 1 = white
///   hypergrad::writePngDiverging("penalty.png", logPenalty.array() - start, 3.0,   // blue - white - red
///                                hypergrad::PngOptions().withScale(4));
/// \endcode

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "hypergrad/config.hpp"
#include "hypergrad/errors.hpp"

namespace hypergrad {

/// How a PNG is written: the pixels per value and the compressor.
struct PngOptions {
  /// Each matrix value becomes a scale x scale block of pixels (nearest neighbour), scale >= 1.
  Index scale = 1;
  /// Compresses the scanlines into a zlib stream (the IDAT content); empty: stored blocks.
  std::function<std::vector<std::uint8_t>(const std::vector<std::uint8_t>&)> deflate;
  /// A copy with `k` pixels per value.
  PngOptions withScale(Index k) const {
    PngOptions o = *this;
    o.scale = k;
    return o;
  }
  /// A copy compressing with `f` (e.g. hypergrad::zlibDeflate from <hypergrad/data/deflate.hpp>).
  template <class F>
  PngOptions withDeflate(F&& f) const {
    PngOptions o = *this;
    o.deflate = std::forward<F>(f);
    return o;
  }
};

/// Tiles equally sized images row by row into a grid with `columns` columns, separated (and
/// framed) by `padding` pixels of `padValue`. Throws InvalidArgument for no tiles, columns < 1,
/// padding < 0 or tiles of different sizes.
inline Eigen::MatrixXd imageGrid(const std::vector<Eigen::MatrixXd>& tiles, Index columns, Index padding = 1,
                                 double padValue = 0.0) {
  if (tiles.empty()) throw InvalidArgument("imageGrid: no tiles given");
  if (columns < 1) throw InvalidArgument(detail::message("imageGrid: columns must be >= 1, got ", columns));
  if (padding < 0) throw InvalidArgument(detail::message("imageGrid: padding must be >= 0, got ", padding));
  const Index h = tiles[0].rows(), w = tiles[0].cols();
  for (std::size_t i = 0; i < tiles.size(); ++i)
    if (tiles[i].rows() != h || tiles[i].cols() != w)
      throw InvalidArgument(detail::message("imageGrid: tile ", i, " is ", tiles[i].rows(), " x ", tiles[i].cols(),
                                            " but tile 0 is ", h, " x ", w, " (all tiles must match)"));
  const Index n = static_cast<Index>(tiles.size());
  const Index cols = std::min(columns, n), rows = (n + columns - 1) / columns;
  Eigen::MatrixXd grid =
      Eigen::MatrixXd::Constant(rows * h + (rows + 1) * padding, cols * w + (cols + 1) * padding, padValue);
  for (Index i = 0; i < n; ++i) {
    const Index r = i / columns, c = i % columns;
    grid.block(padding + r * (h + padding), padding + c * (w + padding), h, w) = tiles[static_cast<std::size_t>(i)];
  }
  return grid;
}

namespace detail {

inline void checkImage(const char* who, const std::string& path, const Eigen::MatrixXd& image) {
  if (image.rows() < 1 || image.cols() < 1)
    throw InvalidArgument(message(who, "('", path, "'): the image is empty (", image.rows(), " x ", image.cols(), ")"));
  if (image.rows() > 0x7fffffff || image.cols() > 0x7fffffff)
    throw InvalidArgument(message(who, "('", path, "'): the image is too large"));
}

inline void checkRange(const char* who, const std::string& path, double lo, double hi) {
  if (!(std::isfinite(lo) && std::isfinite(hi) && lo < hi))
    throw InvalidArgument(message(who, "('", path, "'): the display range needs finite lo < hi, got [", lo, ", ",
                                  hi, "]"));
}

/// Maps v to 0..255 over [lo, hi], clamped (display only); NaN -> 0.
inline std::uint8_t greyLevel(double v, double lo, double hi) {
  if (std::isnan(v)) return 0;
  const double u = std::clamp((v - lo) / (hi - lo), 0.0, 1.0);
  return static_cast<std::uint8_t>(std::lround(u * 255.0));
}

inline void writeFile(const char* who, const std::string& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw InvalidArgument(message(who, ": cannot open '", path, "' for writing (does the directory exist?)"));
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  out.flush();
  if (!out) throw InvalidArgument(message(who, ": writing '", path, "' failed"));
}

inline std::uint32_t crc32(const std::uint8_t* data, std::size_t size, std::uint32_t crc = 0) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t n = 0; n < 256; ++n) {
      std::uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

inline std::uint32_t adler32(const std::uint8_t* data, std::size_t size) {
  std::uint32_t a = 1, b = 0;
  for (std::size_t i = 0; i < size; ++i) {
    a = (a + data[i]) % 65521u;
    b = (b + a) % 65521u;
  }
  return (b << 16) | a;
}

inline void putBigEndian32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>(v >> s));
}

inline void pngChunk(std::vector<std::uint8_t>& out, const char type[4], const std::vector<std::uint8_t>& data) {
  putBigEndian32(out, static_cast<std::uint32_t>(data.size()));
  const std::size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  putBigEndian32(out, crc32(out.data() + start, out.size() - start));
}

/// A zlib stream of `raw` in stored (uncompressed) deflate blocks: what a PNG needs, without zlib.
inline std::vector<std::uint8_t> storedZlib(const std::vector<std::uint8_t>& raw) {
  std::vector<std::uint8_t> z = {0x78, 0x01};  // zlib header: deflate, 32K window, no dictionary
  std::size_t pos = 0;
  do {
    const std::size_t len = std::min<std::size_t>(65535, raw.size() - pos);
    const bool last = pos + len == raw.size();
    z.push_back(last ? 1 : 0);  // BFINAL, BTYPE = 00 (stored)
    z.push_back(static_cast<std::uint8_t>(len & 0xFF));
    z.push_back(static_cast<std::uint8_t>(len >> 8));
    z.push_back(static_cast<std::uint8_t>(~len & 0xFF));
    z.push_back(static_cast<std::uint8_t>((~len >> 8) & 0xFF));
    z.insert(z.end(), raw.begin() + std::ptrdiff_t(pos), raw.begin() + std::ptrdiff_t(pos + len));
    pos += len;
  } while (pos < raw.size());
  putBigEndian32(z, adler32(raw.data(), raw.size()));
  return z;
}

/// A PNG of `width` x `height` pixels with `channels` = 1 (grey) or 3 (RGB) 8-bit samples per
/// pixel, row-major in `pixels`, compressed by options.deflate (stored deflate blocks without one).
inline std::vector<std::uint8_t> encodePng(const std::vector<std::uint8_t>& pixels, std::uint32_t width,
                                           std::uint32_t height, int channels, const PngOptions& options = PngOptions()) {
  const std::size_t stride = std::size_t(width) * std::size_t(channels);
  std::vector<std::uint8_t> raw;  // scanlines, each led by filter type 0 (none)
  raw.reserve((stride + 1) * height);
  for (std::uint32_t y = 0; y < height; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), pixels.begin() + std::ptrdiff_t(y * stride), pixels.begin() + std::ptrdiff_t((y + 1) * stride));
  }
  std::vector<std::uint8_t> z = options.deflate ? options.deflate(raw) : storedZlib(raw);

  std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<std::uint8_t> ihdr;
  putBigEndian32(ihdr, width);
  putBigEndian32(ihdr, height);
  ihdr.push_back(8);                                          // bit depth
  ihdr.push_back(static_cast<std::uint8_t>(channels == 3 ? 2 : 0));  // colour type: RGB or grey
  ihdr.push_back(0);                                          // compression: deflate
  ihdr.push_back(0);                                          // filter method 0
  ihdr.push_back(0);                                          // no interlace
  pngChunk(png, "IHDR", ihdr);
  pngChunk(png, "IDAT", z);
  pngChunk(png, "IEND", {});
  return png;
}

inline void checkScale(const char* who, const std::string& path, const Eigen::MatrixXd& image, Index scale) {
  if (scale < 1 || image.cols() * scale > 0x7fffffff || image.rows() * scale > 0x7fffffff)
    throw InvalidArgument(detail::message(who, "('", path, "'): scale ", scale, " for a ", image.rows(), " x ",
                                          image.cols(), " image; give a scale >= 1 that keeps it below 2^31 pixels a side"));
}

/// `pixels` (width x height, `channels` bytes each) with every pixel repeated as a k x k block.
inline std::vector<std::uint8_t> scalePixels(const std::vector<std::uint8_t>& pixels, Index width, Index height,
                                             int channels, Index k) {
  if (k == 1) return pixels;
  const auto ch = static_cast<std::size_t>(channels);
  std::vector<std::uint8_t> out;
  out.reserve(pixels.size() * static_cast<std::size_t>(k * k));
  std::vector<std::uint8_t> row;  // one scaled scanline, repeated k times
  for (Index y = 0; y < height; ++y) {
    row.clear();
    for (Index x = 0; x < width; ++x) {
      const auto at = pixels.begin() + std::ptrdiff_t(static_cast<std::size_t>(y * width + x) * ch);
      for (Index r = 0; r < k; ++r) row.insert(row.end(), at, at + std::ptrdiff_t(ch));
    }
    for (Index r = 0; r < k; ++r) out.insert(out.end(), row.begin(), row.end());
  }
  return out;
}

inline std::vector<std::uint8_t> greyPixels(const Eigen::MatrixXd& image, double lo, double hi) {
  std::vector<std::uint8_t> px;
  px.reserve(std::size_t(image.size()));
  for (Index r = 0; r < image.rows(); ++r)
    for (Index c = 0; c < image.cols(); ++c) px.push_back(greyLevel(image(r, c), lo, hi));
  return px;
}

}  // namespace detail

/// Writes an 8-bit binary PGM (P5): [lo, hi] maps to black..white, values outside are clamped
/// for display only. Throws InvalidArgument naming the path if it cannot be written.
inline void writePgm(const std::string& path, const Eigen::MatrixXd& image, double lo, double hi) {
  detail::checkImage("writePgm", path, image);
  detail::checkRange("writePgm", path, lo, hi);
  const std::string header = "P5\n" + std::to_string(image.cols()) + " " + std::to_string(image.rows()) + "\n255\n";
  std::vector<std::uint8_t> bytes(header.begin(), header.end());
  const std::vector<std::uint8_t> px = detail::greyPixels(image, lo, hi);
  bytes.insert(bytes.end(), px.begin(), px.end());
  detail::writeFile("writePgm", path, bytes);
}

/// Writes an 8-bit greyscale PNG: [lo, hi] maps to black..white, values outside are clamped for
/// display only; `options` sets the pixels per value and the compressor. Throws InvalidArgument
/// naming the path if it cannot be written or the scale is below 1.
inline void writePng(const std::string& path, const Eigen::MatrixXd& image, double lo, double hi,
                     const PngOptions& options = PngOptions()) {
  detail::checkImage("writePng", path, image);
  detail::checkRange("writePng", path, lo, hi);
  detail::checkScale("writePng", path, image, options.scale);
  const Index k = options.scale;
  detail::writeFile("writePng", path,
                    detail::encodePng(detail::scalePixels(detail::greyPixels(image, lo, hi), image.cols(), image.rows(), 1, k),
                                      std::uint32_t(image.cols() * k), std::uint32_t(image.rows() * k), 1, options));
}

/// Writes an 8-bit RGB PNG from `rgb` (3 bytes per pixel, row-major, `height` rows of `width`),
/// each pixel drawn as options.scale x options.scale.
inline void writePngRgb(const std::string& path, const std::vector<std::uint8_t>& rgb, Index width, Index height,
                        const PngOptions& options = PngOptions()) {
  if (width < 1 || height < 1 || width > 0x7fffffff || height > 0x7fffffff ||
      rgb.size() != std::size_t(width) * std::size_t(height) * 3)
    throw InvalidArgument(detail::message("writePngRgb('", path, "'): ", rgb.size(), " bytes do not make a ", width,
                                          " x ", height, " RGB image (3 bytes per pixel)"));
  detail::checkScale("writePngRgb", path, Eigen::MatrixXd(height, width), options.scale);
  const Index k = options.scale;
  detail::writeFile("writePngRgb", path,
                    detail::encodePng(detail::scalePixels(rgb, width, height, 3, k), std::uint32_t(width * k),
                                      std::uint32_t(height * k), 3, options));
}

/// The diverging colour of u in [−1, 1] (clamped; NaN is the midpoint): ColorBrewer's 11-class
/// RdBu, dark blue at −1 through near-white at 0 to dark red at +1, interpolated linearly between
/// its stops — small values already take a visible tint, where a straight line from white to a
/// single end colour leaves them white.
inline std::array<std::uint8_t, 3> divergingColour(double u) {
  static constexpr std::uint8_t stops[11][3] = {{5, 48, 97},    {33, 102, 172}, {67, 147, 195}, {146, 197, 222},
                                                {209, 229, 240}, {247, 247, 247}, {253, 219, 199}, {244, 165, 130},
                                                {214, 96, 77},   {178, 24, 43},   {103, 0, 31}};
  const double x = std::isnan(u) ? 5.0 : 5.0 * (std::clamp(u, -1.0, 1.0) + 1.0);  // 0 … 10
  const int lower = std::min(9, static_cast<int>(x));
  const double f = x - lower;
  std::array<std::uint8_t, 3> c{};
  for (int k = 0; k < 3; ++k)
    c[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(
        std::lround(stops[lower][k] + f * (stops[lower + 1][k] - stops[lower][k])));
  return c;
}

/// Writes a PNG with a diverging colour map for signed data (divergingColour): −absMax dark blue,
/// 0 near-white, +absMax dark red, clamped beyond ±absMax for display only; NaN is the midpoint.
/// Subtract a centre first to show departures from it (e.g. learned log-penalties minus their
/// starting value); a high quantile of |values| as absMax (rather than the maximum) keeps a few
/// outliers from washing out the structure.
inline void writePngDiverging(const std::string& path, const Eigen::MatrixXd& image, double absMax,
                              const PngOptions& options = PngOptions()) {
  detail::checkImage("writePngDiverging", path, image);
  if (!(std::isfinite(absMax) && absMax > 0))
    throw InvalidArgument(detail::message("writePngDiverging('", path, "'): absMax must be finite and > 0, got ",
                                          absMax, " (an all-zero image? use any positive value)"));
  std::vector<std::uint8_t> rgb;
  rgb.reserve(std::size_t(image.size()) * 3);
  for (Index r = 0; r < image.rows(); ++r)
    for (Index c = 0; c < image.cols(); ++c) {
      const std::array<std::uint8_t, 3> colour = divergingColour(image(r, c) / absMax);
      rgb.insert(rgb.end(), colour.begin(), colour.end());
    }
  writePngRgb(path, rgb, image.cols(), image.rows(), options);
}

}  // namespace hypergrad
