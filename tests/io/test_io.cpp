// The plotting and image writers: PNGs decoded with zlib (an independent inflate and CRC), SVG
// content checked for the series, labels and skipped non-finite points.
#include <catch2/catch.hpp>

#include <cstdio>
#include <array>
#include <fstream>
#include <limits>
#include <iterator>
#include <vector>

#include <zlib.h>

#include <hypergrad/data/deflate.hpp>
#include <hypergrad/io/image.hpp>
#include <hypergrad/io/svg.hpp>

using namespace hypergrad;

namespace {
std::vector<unsigned char> readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
std::uint32_t be32(const unsigned char* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | p[3];
}
}  // namespace

TEST_CASE("a greyscale PNG decodes, with zlib's inflate and CRC, to the expected pixels", "[io]") {
  Eigen::MatrixXd img(3, 4);
  img << 0.0, 0.25, 0.5, 1.0,  //
      -1.0, 2.0, 0.75, 0.1,    // out-of-range values are clamped for display
      0.5, 0.5, 0.5, 0.5;
  const std::string path = "test_io_grey.png";
  writePng(path, img, 0.0, 1.0);
  const auto bytes = readAll(path);
  REQUIRE(bytes.size() > 8 + 25);
  const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  CHECK(std::equal(sig, sig + 8, bytes.begin()));
  // Walk the chunks, verifying each CRC with zlib's crc32, collecting IDAT.
  std::size_t pos = 8;
  std::vector<unsigned char> idat;
  std::uint32_t width = 0, height = 0;
  bool sawEnd = false;
  while (pos + 12 <= bytes.size()) {
    const std::uint32_t len = be32(&bytes[pos]);
    const std::string type(bytes.begin() + static_cast<long>(pos) + 4, bytes.begin() + static_cast<long>(pos) + 8);
    const uLong crc = crc32(0L, &bytes[pos + 4], 4 + len);
    CHECK(crc == be32(&bytes[pos + 8 + len]));
    if (type == "IHDR") {
      width = be32(&bytes[pos + 8]);
      height = be32(&bytes[pos + 12]);
    } else if (type == "IDAT") {
      idat.insert(idat.end(), bytes.begin() + static_cast<long>(pos) + 8, bytes.begin() + static_cast<long>(pos + 8 + len));
    } else if (type == "IEND") {
      sawEnd = true;
    }
    pos += 12 + len;
  }
  CHECK(sawEnd);
  CHECK(width == 4);
  CHECK(height == 3);
  std::vector<unsigned char> raw(3 * (1 + 4));
  uLongf rawSize = raw.size();
  REQUIRE(uncompress(raw.data(), &rawSize, idat.data(), idat.size()) == Z_OK);
  REQUIRE(rawSize == raw.size());
  const int expected[3][4] = {{0, 64, 128, 255}, {0, 255, 191, 26}, {128, 128, 128, 128}};
  for (int r = 0; r < 3; ++r) {
    CHECK(raw[static_cast<std::size_t>(r * 5)] == 0);  // filter type none
    for (int c = 0; c < 4; ++c) CHECK(int(raw[static_cast<std::size_t>(r * 5 + 1 + c)]) == expected[r][c]);
  }
  std::remove(path.c_str());
}

namespace {
// A PNG's header fields and inflated scanlines (filter bytes included), chunk CRCs checked.
struct Decoded {
  std::uint32_t width = 0, height = 0;
  int colourType = -1;
  std::vector<unsigned char> raw;
  std::size_t fileSize = 0;
};
Decoded decodePng(const std::string& path, int channels) {
  const auto bytes = readAll(path);
  Decoded d;
  d.fileSize = bytes.size();
  std::vector<unsigned char> idat;
  for (std::size_t pos = 8; pos + 12 <= bytes.size();) {
    const std::uint32_t len = be32(&bytes[pos]);
    const std::string type(bytes.begin() + static_cast<long>(pos) + 4, bytes.begin() + static_cast<long>(pos) + 8);
    CHECK(crc32(0L, &bytes[pos + 4], 4 + len) == be32(&bytes[pos + 8 + len]));
    if (type == "IHDR") {
      d.width = be32(&bytes[pos + 8]);
      d.height = be32(&bytes[pos + 12]);
      d.colourType = bytes[pos + 17];
    } else if (type == "IDAT") {
      idat.insert(idat.end(), bytes.begin() + static_cast<long>(pos) + 8, bytes.begin() + static_cast<long>(pos + 8 + len));
    }
    pos += 12 + len;
  }
  d.raw.resize(std::size_t(d.height) * (1 + std::size_t(d.width) * std::size_t(channels)));
  uLongf size = d.raw.size();
  REQUIRE(uncompress(d.raw.data(), &size, idat.data(), idat.size()) == Z_OK);
  REQUIRE(size == d.raw.size());
  return d;
}
}  // namespace

TEST_CASE("PngOptions: scale draws each value as a block; zlibDeflate compresses to the same pixels", "[io]") {
  Eigen::MatrixXd img(2, 3);
  img << 0.0, 0.5, 1.0,  //
      1.0, 0.25, 0.0;
  const std::string stored = "test_io_scaled_stored.png", deflated = "test_io_scaled_deflated.png";
  writePng(stored, img, 0.0, 1.0, PngOptions().withScale(3));
  writePng(deflated, img, 0.0, 1.0, PngOptions().withScale(3).withDeflate(zlibDeflate));
  const Decoded a = decodePng(stored, 1), b = decodePng(deflated, 1);
  CHECK(a.width == 9);
  CHECK(a.height == 6);
  CHECK(a.raw == b.raw);
  CHECK(b.fileSize < a.fileSize);
  const int level[2][3] = {{0, 128, 255}, {255, 64, 0}};
  for (int y = 0; y < 6; ++y) {
    CHECK(a.raw[std::size_t(y) * 10] == 0);
    for (int x = 0; x < 9; ++x) CHECK(int(a.raw[std::size_t(y) * 10 + 1 + std::size_t(x)]) == level[y / 3][x / 3]);
  }
  CHECK_THROWS_AS(writePng(stored, img, 0.0, 1.0, PngOptions().withScale(0)), InvalidArgument);
  std::remove(stored.c_str());
  std::remove(deflated.c_str());
}

TEST_CASE("the diverging map runs through RdBu's stops and tints small values", "[io]") {
  Eigen::MatrixXd img(1, 5);
  img << -2.0, -1.0, 0.0, 0.1, std::numeric_limits<double>::quiet_NaN();
  const std::string path = "test_io_diverging.png";
  writePngDiverging(path, img, 1.0, PngOptions().withDeflate(zlibDeflate));
  const Decoded d = decodePng(path, 3);
  REQUIRE(d.colourType == 2);
  const auto pixel = [&](int x) {
    const std::size_t at = 1 + 3 * std::size_t(x);
    return std::array<int, 3>{d.raw[at], d.raw[at + 1], d.raw[at + 2]};
  };
  CHECK(pixel(0) == std::array<int, 3>{5, 48, 97});     // clamped at −absMax: the darkest blue
  CHECK(pixel(1) == std::array<int, 3>{5, 48, 97});
  CHECK(pixel(2) == std::array<int, 3>{247, 247, 247});  // zero: the middle stop
  CHECK(pixel(3) == std::array<int, 3>{250, 233, 223});  // a tenth of absMax is visibly red
  CHECK(pixel(4) == std::array<int, 3>{247, 247, 247});  // NaN: the middle
  CHECK(divergingColour(1.0) == std::array<std::uint8_t, 3>{103, 0, 31});
  std::remove(path.c_str());
}

TEST_CASE("image grids tile row by row with padding", "[io]") {
  std::vector<Eigen::MatrixXd> tiles;
  for (int k = 0; k < 5; ++k) tiles.push_back(Eigen::MatrixXd::Constant(2, 3, k + 1.0));
  const Eigen::MatrixXd grid = imageGrid(tiles, 3, 1, -1.0);
  CHECK(grid.rows() == 2 * 2 + 1 * 3);  // 2 rows of tiles, padding around and between
  CHECK(grid.cols() == 3 * 3 + 1 * 4);
  CHECK(grid(1, 1) == 1.0);
  CHECK(grid(1, 5) == 2.0);
  CHECK(grid(4, 1) == 4.0);
  CHECK(grid(0, 0) == -1.0);
  CHECK_THROWS_AS(imageGrid({}, 3), InvalidArgument);
}

TEST_CASE("an SVG plot holds its title, labels and series and skips non-finite points", "[io]") {
  SvgPlot plot("Learning rate", "iteration", "alpha");
  plot.addLine("layer 1", {0, 1, 2, 3}, {0.1, 0.2, std::nan(""), 0.4});
  plot.addLine("layer 2", {0.3, 0.3, 0.3});
  const std::string svg = plot.str();
  CHECK(svg.find("<svg") != std::string::npos);
  CHECK(svg.find("</svg>") != std::string::npos);
  for (const char* s : {"Learning rate", "iteration", "alpha", "layer 1", "layer 2"}) CHECK(svg.find(s) != std::string::npos);
  CHECK(svg.find("nan") == std::string::npos);
  CHECK_THROWS_WITH(plot.save("/nonexistent-dir/p.svg"), Catch::Contains("/nonexistent-dir/p.svg"));
}
