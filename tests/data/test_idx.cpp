// Tests of the IDX reader and the MNIST loader (include/hypergrad/data/idx.hpp): round trips of
// every element type, plain and gzip; every malformed-input error with its message; loadMnist on
// synthetic files; resolveDataDirectory's names and where it looks for "mnist"; and, where
// installed, the real Fashion-MNIST / MNIST test sets.
#include <catch2/catch.hpp>

#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <hypergrad/data/idx.hpp>

using namespace hypergrad;
using Catch::Matchers::Contains;
using Bytes = std::vector<std::uint8_t>;

namespace fs = std::filesystem;

namespace {

/// A fresh directory under the system temp directory, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::random_device device;
    const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
    m_path = fs::temp_directory_path() /
             ("hypergrad_test_idx_" + std::to_string(device()) + "_" + std::to_string(stamp));
    fs::create_directories(m_path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(m_path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string dir() const { return m_path.string(); }
  std::string file(const std::string& name) const { return (m_path / name).string(); }

 private:
  fs::path m_path;
};

void appendBigEndian32(Bytes& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(v >> shift));
}

/// An IDX file: header (magic 0 0, type code, dimensions) followed by `payload` as given.
Bytes idxFile(std::uint8_t typeCode, const std::vector<std::uint32_t>& dims, const Bytes& payload) {
  Bytes out = {0, 0, typeCode, static_cast<std::uint8_t>(dims.size())};
  for (std::uint32_t d : dims) appendBigEndian32(out, d);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

void writePlain(const std::string& path, const Bytes& bytes) {
  std::ofstream os(path, std::ios::binary);
  os.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(os.good());
}

void writeGzip(const std::string& path, const Bytes& bytes) {
  gzFile gz = gzopen(path.c_str(), "wb");
  REQUIRE(gz != nullptr);
  if (!bytes.empty()) REQUIRE(gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size())) == int(bytes.size()));
  REQUIRE(gzclose(gz) == Z_OK);
}

Bytes readAll(const std::string& path) {
  std::ifstream is(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(is), std::istreambuf_iterator<char>());
}

/// The message of the DataError `f` throws; fails the test when it throws nothing or another type.
std::string dataErrorMessage(const std::function<void()>& f) {
  try {
    f();
  } catch (const DataError& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected a hypergrad::DataError, got another exception: " << e.what());
  } catch (...) {
    FAIL("expected a hypergrad::DataError, got a non-standard exception");
  }
  FAIL("expected a hypergrad::DataError, nothing was thrown");
  return {};
}

/// Writes an MNIST-format split: `count` images of rows × cols pixels (pixel value = (17 k + j) mod 256
/// for image k, pixel j) and the given labels.
void writeMnistSplit(const TempDir& tmp, const std::string& split, std::uint32_t count, std::uint32_t rows,
                     std::uint32_t cols, const Bytes& labels, bool gzip) {
  Bytes pixels;
  for (std::uint32_t k = 0; k < count; ++k)
    for (std::uint32_t j = 0; j < rows * cols; ++j) pixels.push_back(static_cast<std::uint8_t>((17 * k + j) % 256));
  const std::string suffix = gzip ? ".gz" : "";
  const auto write = gzip ? writeGzip : writePlain;
  write(tmp.file(split + "-images-idx3-ubyte" + suffix), idxFile(0x08, {count, rows, cols}, pixels));
  write(tmp.file(split + "-labels-idx1-ubyte" + suffix),
        idxFile(0x08, {static_cast<std::uint32_t>(labels.size())}, labels));
}

const Bytes kPixels = {0, 1, 2, 127, 128, 254, 255, 7, 8, 9, 10, 11};  // 3 × 2 × 2

}  // namespace

TEST_CASE("readIdx returns the dimensions and bytes of an unsigned-byte file, plain or gzip", "[data][idx]") {
  TempDir tmp;
  const Bytes file = idxFile(0x08, {3, 2, 2}, kPixels);
  writePlain(tmp.file("plain.idx"), file);
  writeGzip(tmp.file("packed.idx.gz"), file);
  writeGzip(tmp.file("packed-without-suffix"), file);  // gzip is recognised by content, not name

  for (const std::string name : {"plain.idx", "packed.idx.gz", "packed-without-suffix"}) {
    INFO(name);
    const IdxArray a = readIdx(tmp.file(name));
    CHECK(a.type == IdxType::UnsignedByte);
    CHECK(a.dims == std::vector<std::int64_t>{3, 2, 2});
    CHECK(a.bytes == kPixels);
    CHECK(a.values.empty());
    CHECK(a.size() == 12);
    CHECK(a.value(6) == 255.0);
  }
  const IdxArray m = parseIdx(file.data(), file.size(), "memory");
  CHECK(m.dims == std::vector<std::int64_t>{3, 2, 2});
  CHECK(m.bytes == kPixels);
}

TEST_CASE("readIdx decodes signed bytes, shorts, ints, floats and doubles big-endian and exactly", "[data][idx]") {
  TempDir tmp;
  struct Case {
    std::uint8_t code;
    IdxType type;
    Bytes payload;
    std::vector<double> expected;
  };
  const double pi = 3.141592653589793;
  Bytes doublePayload;
  {
    std::uint64_t bits;
    std::memcpy(&bits, &pi, sizeof bits);
    appendBigEndian32(doublePayload, static_cast<std::uint32_t>(bits >> 32));
    appendBigEndian32(doublePayload, static_cast<std::uint32_t>(bits));
    const double minusTiny = -1e-300;
    std::memcpy(&bits, &minusTiny, sizeof bits);
    appendBigEndian32(doublePayload, static_cast<std::uint32_t>(bits >> 32));
    appendBigEndian32(doublePayload, static_cast<std::uint32_t>(bits));
  }
  const std::vector<Case> cases = {
      {0x09, IdxType::SignedByte, {0x80, 0x7f}, {-128, 127}},
      {0x0B, IdxType::Short, {0x80, 0x00, 0x04, 0xd2}, {-32768, 1234}},
      {0x0C, IdxType::Int, {0x80, 0, 0, 0, 0, 0, 0, 7}, {-2147483648.0, 7}},
      {0x0D, IdxType::Float, {0x3f, 0xc0, 0, 0, 0xbe, 0x80, 0, 0}, {1.5, -0.25}},
      {0x0E, IdxType::Double, doublePayload, {pi, -1e-300}},
  };
  for (const Case& c : cases) {
    INFO(idxTypeName(c.type));
    const Bytes file = idxFile(c.code, {2}, c.payload);
    writeGzip(tmp.file("values.gz"), file);
    const IdxArray a = readIdx(tmp.file("values.gz"));
    CHECK(a.type == c.type);
    CHECK(a.dims == std::vector<std::int64_t>{2});
    CHECK(a.bytes.empty());
    CHECK(a.values == c.expected);
    CHECK(parseIdx(file.data(), file.size(), "memory").values == c.expected);
  }
}

TEST_CASE("readIdx reports a missing file, a directory and corrupt or truncated gzip data", "[data][idx]") {
  TempDir tmp;
  const std::string missing = tmp.file("no-such-file.gz");
  std::string m = dataErrorMessage([&] { readIdx(missing); });
  CHECK_THAT(m, Contains(missing) && Contains("cannot open") && Contains("No such file"));

  m = dataErrorMessage([&] { readIdx(tmp.dir()); });
  CHECK_THAT(m, Contains(tmp.dir()) && Contains("directory"));

  const std::string garbage = tmp.file("garbage.gz");
  writePlain(garbage, {0x1f, 0x8b, 0xff, 0xff, 0x00, 0x13, 0x37, 0x42, 0x42, 0x42, 0x42, 0x42});
  m = dataErrorMessage([&] { readIdx(garbage); });
  CHECK_THAT(m, Contains(garbage) && Contains("corrupt gzip"));

  // A gzip stream cut in the middle.
  Bytes pixels(5000);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<std::uint8_t>(i * 7919 % 251);
  const std::string whole = tmp.file("whole.gz");
  writeGzip(whole, idxFile(0x08, {50, 10, 10}, pixels));
  Bytes compressed = readAll(whole);
  REQUIRE(compressed.size() > 100);
  const std::string cut = tmp.file("cut.gz");
  writePlain(cut, Bytes(compressed.begin(), compressed.begin() + static_cast<std::ptrdiff_t>(compressed.size() / 2)));
  m = dataErrorMessage([&] { readIdx(cut); });
  CHECK_THAT(m, Contains(cut) && Contains("corrupt gzip") && Contains("truncated"));

  // A damaged CRC in the gzip trailer (the data themselves decompress).
  Bytes badCrc = compressed;
  badCrc[badCrc.size() - 6] ^= 0xff;
  const std::string crc = tmp.file("bad-crc.gz");
  writePlain(crc, badCrc);
  m = dataErrorMessage([&] { readIdx(crc); });
  CHECK_THAT(m, Contains(crc) && Contains("corrupt gzip"));
}

TEST_CASE("readIdx and parseIdx reject malformed headers and data with messages naming the file",
          "[data][idx]") {
  TempDir tmp;
  struct Case {
    const char* what;
    Bytes file;
    const char* phrase;
  };
  const std::vector<Case> cases = {
      {"empty file", {}, "empty"},
      {"wrong magic", {0x50, 0x4b, 0x03, 0x04, 0, 0, 0, 1, 0}, "wrong magic number: the first two bytes are 0x50 0x4b"},
      {"wrong second magic byte", idxFile(0x08, {1}, {1}), ""},  // replaced below
      {"unsupported type code", idxFile(0x0A, {1}, {1}), "unsupported type code 0x0a"},
      {"no dimensions", {0, 0, 0x08, 0}, "0 dimensions"},
      {"header shorter than 4 bytes", {0, 0, 0x08}, "truncated header"},
      {"header shorter than its dimensions", {0, 0, 0x08, 3, 0, 0, 0, 3, 0, 0}, "truncated header"},
      {"truncated data", idxFile(0x08, {3, 2, 2}, Bytes(kPixels.begin(), kPixels.begin() + 10)),
       "expected 12 bytes of data after the 16-byte header, got 10"},
      {"truncated shorts", idxFile(0x0B, {3}, {0, 1, 0, 2, 0}), "expected 6 bytes of data after the 8-byte header, got 5"},
      {"header claims MNIST size, file holds 100 bytes", idxFile(0x08, {60000, 28, 28}, Bytes(100)),
       "expected 47040000 bytes of data after the 16-byte header, got 100"},
      {"extra data", idxFile(0x08, {2}, {1, 2, 3}), "more data than the header declares"},
      {"absurd dimensions", idxFile(0x0E, {0xffffffffu, 0xffffffffu, 0xffffffffu}, Bytes(64)), "too large"},
      {"dimensions beyond the cap", idxFile(0x08, {65536, 65536}, Bytes(64)), "too large"},
  };
  for (Case c : cases) {
    if (std::string(c.what) == "wrong second magic byte") {
      c.file[1] = 0x03;
      c.phrase = "wrong magic number: the first two bytes are 0x00 0x03";
    }
    INFO(c.what);
    const std::string plain = tmp.file("bad.idx");
    const std::string packed = tmp.file("bad.idx.gz");
    writePlain(plain, c.file);
    writeGzip(packed, c.file);
    for (const std::string& path : {plain, packed}) {
      INFO(path);
      const std::string m = dataErrorMessage([&] { readIdx(path); });
      CHECK_THAT(m, Contains("'" + path + "'") && Contains(c.phrase));
    }
    const std::string m = dataErrorMessage([&] { parseIdx(c.file.data(), c.file.size(), "in-memory.idx"); });
    CHECK_THAT(m, Contains("'in-memory.idx'") && Contains(c.phrase));
  }

  // The cap is a parameter: 12 bytes of data against a limit of 11.
  const Bytes file = idxFile(0x08, {3, 2, 2}, kPixels);
  writePlain(tmp.file("capped.idx"), file);
  std::string m = dataErrorMessage([&] { readIdx(tmp.file("capped.idx"), 11); });
  CHECK_THAT(m, Contains("too large") && Contains("limit of 11 bytes"));
  CHECK(readIdx(tmp.file("capped.idx"), 12).bytes == kPixels);
  m = dataErrorMessage([&] { parseIdx(file.data(), file.size(), "x", 11); });
  CHECK_THAT(m, Contains("too large"));

  // A zero dimension is a valid empty array, whatever the other sizes.
  const Bytes empty = idxFile(0x08, {0, 0xffffffffu, 0xffffffffu}, {});
  const IdxArray a = parseIdx(empty.data(), empty.size(), "empty");
  CHECK(a.size() == 0);
  CHECK(a.dims == std::vector<std::int64_t>{0, 0xffffffffLL, 0xffffffffLL});
}

TEST_CASE("parseIdx throws DataError, never crashes, on every prefix and on random corruptions of valid files",
          "[data][idx]") {
  std::vector<Bytes> valid = {idxFile(0x08, {3, 2, 2}, kPixels), idxFile(0x0B, {2, 2}, {0, 1, 0, 2, 0, 3, 0, 4}),
                              idxFile(0x0E, {1}, {0x40, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18})};
  for (const Bytes& file : valid) {
    for (std::size_t n = 0; n < file.size(); ++n) {
      // Copy the prefix to a buffer of exactly n bytes, so ASan sees any read past its end.
      const std::unique_ptr<std::uint8_t[]> prefix(new std::uint8_t[n == 0 ? 1 : n]);
      if (n > 0) std::memcpy(prefix.get(), file.data(), n);
      CHECK_THROWS_AS(parseIdx(n == 0 ? nullptr : prefix.get(), n, "prefix"), DataError);
    }
  }
  std::mt19937 rng(12345);
  int parsed = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    Bytes file = valid[static_cast<std::size_t>(trial) % valid.size()];
    const int flips = 1 + trial % 3;
    for (int f = 0; f < flips; ++f) file[rng() % file.size()] = static_cast<std::uint8_t>(rng());
    try {
      const IdxArray a = parseIdx(file.data(), file.size(), "mutated");
      ++parsed;
      CHECK(a.size() * idxElementSize(a.type) <= file.size());
    } catch (const DataError&) {
    }
  }
  CHECK(parsed > 0);  // some mutations only touch values and must still parse
}

TEST_CASE("loadMnist reads synthetic splits: one image per row, scaled to [0, 1], first k examples",
          "[data][mnist]") {
  TempDir tmp;
  const Bytes labels = {3, 0, 9, 1, 7};
  writeMnistSplit(tmp, "train", 5, 2, 3, labels, /*gzip=*/true);
  writeMnistSplit(tmp, "t10k", 5, 2, 3, labels, /*gzip=*/false);

  for (const std::string split : {"train", "t10k"}) {
    INFO(split);
    const Dataset d = loadMnist(tmp.dir(), split);
    REQUIRE(d.numExamples() == 5);
    REQUIRE(d.numFeatures() == 6);
    CHECK(d.numClasses == 10);
    for (Index k = 0; k < 5; ++k) {
      CHECK(d.labels(k) == labels[static_cast<std::size_t>(k)]);
      for (Index j = 0; j < 6; ++j) CHECK(d.inputs(k, j) == static_cast<double>((17 * k + j) % 256) / 255.0);
    }
    CHECK(d.inputs.minCoeff() >= 0.0);
    CHECK(d.inputs.maxCoeff() <= 1.0);
    CHECK_NOTHROW(d.validate());

    const Dataset first = loadMnist(tmp.dir(), split, 3, /*scaleTo01=*/false);
    REQUIRE(first.numExamples() == 3);
    CHECK(first.labels == Eigen::Vector3i(3, 0, 9));
    CHECK(first.inputs(2, 5) == 39.0);  // 17·2 + 5
    CHECK(loadMnist(tmp.dir(), split, 1000).numExamples() == 5);
  }
  // The gzip file wins when both exist.
  writePlain(tmp.file("train-labels-idx1-ubyte"), idxFile(0x08, {5}, {0, 0, 0, 0, 0}));
  CHECK(loadMnist(tmp.dir(), "train").labels(0) == 3);

  CHECK_THROWS_AS(loadMnist(tmp.dir(), "test"), InvalidArgument);
  CHECK_THROWS_AS(loadMnist(tmp.dir(), "train", 0), InvalidArgument);
  CHECK_THROWS_AS(loadMnist(tmp.dir(), "train", -2), InvalidArgument);

  CHECK(findDataDirectory({tmp.file("nowhere"), "", tmp.dir()}) == tmp.dir());
  CHECK(findDataDirectory({tmp.file("nowhere")}).empty());
  CHECK(defaultDataDirectory() == "/usr/share/datasets/fashion-mnist");
}

TEST_CASE("loadMnist reports missing files, wrong shapes, count mismatches and labels out of range",
          "[data][mnist]") {
  TempDir tmp;
  const std::string nowhere = tmp.file("nowhere");
  std::string m = dataErrorMessage([&] { loadMnist(nowhere, "t10k"); });
  CHECK_THAT(m, Contains(nowhere + "/t10k-images-idx3-ubyte") && Contains("missing file") &&
                    Contains("does not exist") && Contains("dataset-fashion-mnist") && Contains("--data"));

  writeMnistSplit(tmp, "t10k", 4, 2, 2, {1, 2, 3, 4}, true);
  const std::string images = tmp.file("t10k-images-idx3-ubyte.gz");
  const std::string labels = tmp.file("t10k-labels-idx1-ubyte.gz");
  fs::remove(labels);
  m = dataErrorMessage([&] { loadMnist(tmp.dir(), "t10k"); });
  CHECK_THAT(m, Contains(tmp.file("t10k-labels-idx1-ubyte")) && Contains("missing file"));

  writeGzip(labels, idxFile(0x08, {3}, {1, 2, 3}));
  m = dataErrorMessage([&] { loadMnist(tmp.dir(), "t10k"); });
  CHECK_THAT(m, Contains(images) && Contains(labels) && Contains("count mismatch") && Contains("4 images") &&
                    Contains("3 labels"));

  writeGzip(labels, idxFile(0x08, {4}, {1, 2, 10, 4}));
  m = dataErrorMessage([&] { loadMnist(tmp.dir(), "t10k"); });
  CHECK_THAT(m, Contains(labels) && Contains("label of example 2 is 10") && Contains("out of range [0, 10)"));

  writeGzip(labels, idxFile(0x09, {4}, {1, 2, 0xff, 4}));  // signed byte −1
  m = dataErrorMessage([&] { loadMnist(tmp.dir(), "t10k"); });
  CHECK_THAT(m, Contains(labels) && Contains("is -1") && Contains("out of range"));

  writeGzip(labels, idxFile(0x0D, {1}, {0x3f, 0x80, 0, 0}));
  m = dataErrorMessage([&] { loadMnist(tmp.dir(), "t10k"); });
  CHECK_THAT(m, Contains(labels) && Contains("must be integers"));

  writeGzip(labels, idxFile(0x08, {2, 2}, {1, 2, 3, 4}));
  m = dataErrorMessage([&] { loadMnist(tmp.dir(), "t10k"); });
  CHECK_THAT(m, Contains(labels) && Contains("labels must be 1-D") && Contains("2 dimensions"));

  writeGzip(labels, idxFile(0x08, {4}, {1, 2, 3, 4}));
  writeGzip(images, idxFile(0x08, {4, 4}, Bytes(16)));
  m = dataErrorMessage([&] { loadMnist(tmp.dir(), "t10k"); });
  CHECK_THAT(m, Contains(images) && Contains("images must be 3-D") && Contains("2 dimensions"));

  writeGzip(images, idxFile(0x08, {4, 0, 28}, {}));
  m = dataErrorMessage([&] { loadMnist(tmp.dir(), "t10k"); });
  CHECK_THAT(m, Contains(images) && Contains("no pixels"));

  writeGzip(images, idxFile(0x08, {4, 2, 2}, Bytes(15)));
  m = dataErrorMessage([&] { loadMnist(tmp.dir(), "t10k"); });
  CHECK_THAT(m, Contains(images) && Contains("expected 16 bytes of data") && Contains("got 15"));
}

namespace {

/// Loads the t10k split from `directory` and checks it against the published set; skips (with a
/// warning) when the files are not there.
void checkRealTestSet(const std::string& directory, const char* name, double minMean, double maxMean,
                      int firstLabel) {
  if (detail::idx::findFile(directory, "t10k-images-idx3-ubyte").empty() ||
      detail::idx::findFile(directory, "t10k-labels-idx1-ubyte").empty()) {
    WARN("skipped: " << name << " t10k files not found in " << directory);
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  const Dataset d = loadMnist(directory, "t10k");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(name << " t10k from " << directory << " loaded in " << seconds << " s");
  REQUIRE(d.numExamples() == 10000);
  REQUIRE(d.numFeatures() == 784);
  CHECK(d.numClasses == 10);
  CHECK_NOTHROW(d.validate());
  CHECK(d.labels(0) == firstLabel);
  for (int c = 0; c < 10; ++c) CHECK((d.labels.array() == c).count() > 800);
  CHECK(d.inputs.minCoeff() == 0.0);
  CHECK(d.inputs.maxCoeff() == 1.0);
  const double mean = d.inputs.mean();
  CHECK(mean > minMean);
  CHECK(mean < maxMean);
}

}  // namespace

TEST_CASE("loadMnist reads the real Fashion-MNIST and MNIST test sets where installed (else skips)",
          "[data][mnist][real]") {
  // Published pixel means: Fashion-MNIST ≈ 0.286, MNIST ≈ 0.133. First test labels: 9 (ankle
  // boot) and 7.
  checkRealTestSet(defaultDataDirectory(), "Fashion-MNIST", 0.27, 0.30, 9);
#ifdef HYPERGRAD_SHARED_DATA_DIR
  checkRealTestSet(HYPERGRAD_SHARED_DATA_DIR, "MNIST", 0.12, 0.145, 7);
#endif
}

// Hidden (run with `test_data "[.train]"`): the 60,000-example training set costs 376 MB.
TEST_CASE("loadMnist reads the Fashion-MNIST training set where installed", "[.train]") {
  const std::string directory = defaultDataDirectory();
  if (detail::idx::findFile(directory, "train-images-idx3-ubyte").empty()) {
    WARN("skipped: Fashion-MNIST train files not found in " << directory);
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  const Dataset d = loadMnist(directory, "train");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  WARN("Fashion-MNIST train (60,000 x 784) loaded in " << seconds << " s");
  REQUIRE(d.numExamples() == 60000);
  REQUIRE(d.numFeatures() == 784);
  for (int c = 0; c < 10; ++c) CHECK((d.labels.array() == c).count() == 6000);
}

TEST_CASE("subset takes a contiguous range of examples and rejects ranges outside the data", "[data]") {
  hypergrad::Dataset d;
  d.inputs = Eigen::MatrixXd::NullaryExpr(5, 3, [](Eigen::Index i, Eigen::Index j) { return 10.0 * i + j; });
  d.labels = (Eigen::VectorXi(5) << 0, 1, 2, 0, 1).finished();
  d.numClasses = 3;
  const hypergrad::Dataset s = hypergrad::subset(d, 1, 3);
  CHECK(s.numExamples() == 3);
  CHECK(s.inputs(0, 2) == 12.0);
  CHECK(s.labels(2) == 0);
  CHECK(s.numClasses == 3);
  CHECK_THROWS_WITH(hypergrad::subset(d, 3, 3), Catch::Contains("[3, 6)") && Catch::Contains("5 examples"));
  CHECK_THROWS_AS(hypergrad::subset(d, -1, 2), hypergrad::InvalidArgument);
  CHECK_FALSE(hypergrad::hasMnistSplit("/nonexistent-dir", "train"));
}

namespace {

Bytes bytesOf(const std::string& text) { return Bytes(text.begin(), text.end()); }

/// Test content whose MD5 and CRC-32 were computed independently (Python's hashlib and zlib):
/// byte i = ((i² + 7i) >> 3) mod 256.
Bytes patternBytes(std::size_t n) {
  Bytes out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>(((i * i + 7 * i) >> 3) & 255);
  return out;
}

/// The little-endian 32-bit word at `p`.
std::uint32_t littleEndian32(const std::uint8_t* p) {
  return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) | (std::uint32_t(p[3]) << 24);
}

}  // namespace

TEST_CASE("checksumFile gives the standard MD5 and CRC-32 of a file's bytes and of its decompressed content",
          "[data][checksum]") {
  TempDir tmp;
  // The CRC-32 check value and the RFC 1321 test suite, then lengths around the 56- and 64-byte
  // padding boundaries and a file longer than the 1 MiB read chunk.
  struct Known {
    Bytes content;
    const char* md5;
    std::uint32_t crc;
  };
  const std::vector<Known> known = {
      {bytesOf("123456789"), "25f9e794323b453885f5181f1b624d0b", 0xcbf43926u},
      {bytesOf(""), "d41d8cd98f00b204e9800998ecf8427e", 0x00000000u},
      {bytesOf("a"), "0cc175b9c0f1b6a831c399e269772661", 0xe8b7be43u},
      {bytesOf("abc"), "900150983cd24fb0d6963f7d28e17f72", 0x352441c2u},
      {bytesOf("message digest"), "f96b697d7cb7938d525a2f31aaf161d0", 0x20159d7fu},
      {bytesOf("abcdefghijklmnopqrstuvwxyz"), "c3fcd3d76192e4007dfb496cca67e13b", 0x4c2750bdu},
      {bytesOf("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"), "d174ab98d277d9f5a5611c2c9f419d9f",
       0x1fc2e6d2u},
      {bytesOf("12345678901234567890123456789012345678901234567890123456789012345678901234567890"),
       "57edf4a22be3c955ac49da2e2107b67a", 0x7ca94a72u},
      {patternBytes(55), "4270cf61575b6216a5026514b5c8e1ea", 0xf5ef0ac4u},
      {patternBytes(56), "bc8c2f6516683526673cb440e662ac87", 0x78fd4cd8u},
      {patternBytes(63), "facb243a4a6883c41c59b0f6cc8e9885", 0xf0a57266u},
      {patternBytes(64), "f9bc3ab86ac48282749df4994757c577", 0xd3293bf9u},
      {patternBytes(65), "194fa90f68f2b0d74c484770fdfc796c", 0x3eb23490u},
      {patternBytes(3000001), "f4f7a674ed0c82f1b58492f445e7ed50", 0xc0231be3u},
  };
  for (std::size_t k = 0; k < known.size(); ++k) {
    CAPTURE(k, known[k].content.size());
    const std::string plain = tmp.file("plain" + std::to_string(k)), gz = plain + ".gz";
    writePlain(plain, known[k].content);
    writeGzip(gz, known[k].content);
    const FileChecksums p = checksumFile(plain);
    CHECK(p.path == plain);
    CHECK_FALSE(p.gzip);
    CHECK(p.fileBytes == known[k].content.size());
    CHECK(p.fileMd5 == known[k].md5);
    CHECK(p.fileCrc32 == known[k].crc);
    CHECK(p.contentBytes == p.fileBytes);
    CHECK(p.contentMd5 == p.fileMd5);
    CHECK(p.contentCrc32 == p.fileCrc32);
    // Compressed: the same content checksums; the file's own are those of the .gz bytes, and the
    // content CRC-32 and size are what the gzip trailer records.
    const FileChecksums z = checksumFile(gz);
    const Bytes gzBytes = readAll(gz);
    REQUIRE(gzBytes.size() >= 18);
    CHECK(z.gzip);
    CHECK(z.contentBytes == known[k].content.size());
    CHECK(z.contentMd5 == known[k].md5);
    CHECK(z.contentCrc32 == known[k].crc);
    CHECK(z.fileBytes == gzBytes.size());
    CHECK(z.fileCrc32 == crc32(crc32(0L, nullptr, 0), gzBytes.data(), static_cast<uInt>(gzBytes.size())));
    CHECK(z.fileMd5 != z.contentMd5);
    CHECK(z.contentCrc32 == littleEndian32(gzBytes.data() + gzBytes.size() - 8));
    CHECK(z.contentBytes == littleEndian32(gzBytes.data() + gzBytes.size() - 4));
  }

  // Errors: a missing file, a directory, damaged gzip data (a flipped CRC-32 in the trailer), a
  // truncated gzip file.
  std::string m = dataErrorMessage([&] { checksumFile(tmp.file("absent.gz")); });
  CHECK_THAT(m, Contains(tmp.file("absent.gz")) && Contains("cannot open"));
  m = dataErrorMessage([&] { checksumFile(tmp.dir()); });
  CHECK_THAT(m, Contains("directory"));
  Bytes damaged = readAll(tmp.file("plain0.gz"));
  damaged[damaged.size() - 8] ^= 0x01;
  writePlain(tmp.file("damaged.gz"), damaged);
  m = dataErrorMessage([&] { checksumFile(tmp.file("damaged.gz")); });
  CHECK_THAT(m, Contains(tmp.file("damaged.gz")) && Contains("corrupt gzip data"));
  Bytes truncated = readAll(tmp.file("plain13.gz"));
  truncated.resize(truncated.size() / 2);
  writePlain(tmp.file("truncated.gz"), truncated);
  m = dataErrorMessage([&] { checksumFile(tmp.file("truncated.gz")); });
  CHECK_THAT(m, Contains(tmp.file("truncated.gz")) && Contains("truncated"));
}

TEST_CASE("findMnistFiles returns the files loadMnist reads, and checksumFile verifies them", "[data][checksum]") {
  TempDir tmp;
  writeMnistSplit(tmp, "t10k", 4, 2, 2, {0, 1, 2, 3}, true);
  writeMnistSplit(tmp, "train", 3, 2, 2, {1, 2, 3}, false);
  const MnistFiles test = findMnistFiles(tmp.dir(), "t10k");
  CHECK(test.images == tmp.file("t10k-images-idx3-ubyte.gz"));
  CHECK(test.labels == tmp.file("t10k-labels-idx1-ubyte.gz"));
  const MnistFiles train = findMnistFiles(tmp.dir(), "train");
  CHECK(train.images == tmp.file("train-images-idx3-ubyte"));
  CHECK(train.labels == tmp.file("train-labels-idx1-ubyte"));
  // The label file's content is the 9-byte IDX file 00 00 08 01 00 00 00 04 + labels 0 1 2 3.
  const FileChecksums labels = checksumFile(test.labels);
  const Bytes expected = idxFile(0x08, {4}, {0, 1, 2, 3});
  CHECK(labels.contentCrc32 == crc32(crc32(0L, nullptr, 0), expected.data(), static_cast<uInt>(expected.size())));
  CHECK(labels.contentBytes == 12);

  CHECK_THROWS_AS(findMnistFiles(tmp.dir(), "test"), InvalidArgument);
  fs::remove(tmp.file("t10k-labels-idx1-ubyte.gz"));
  const std::string m = dataErrorMessage([&] { findMnistFiles(tmp.dir(), "t10k"); });
  CHECK_THAT(m, Contains("findMnistFiles: missing file") && Contains("t10k-labels-idx1-ubyte") &&
                    Contains("dataset-fashion-mnist"));
}

TEST_CASE("checksumFile matches the published MD5s of the MNIST test files where present (else skips)",
          "[data][checksum][real]") {
#ifdef HYPERGRAD_SHARED_DATA_DIR
  const std::string directory = HYPERGRAD_SHARED_DATA_DIR;
  if (!hasMnistSplit(directory, "t10k") || detail::idx::findFile(directory, "t10k-images-idx3-ubyte") !=
                                               (fs::path(directory) / "t10k-images-idx3-ubyte.gz").string()) {
    WARN("skipped: MNIST t10k .gz files not found in " << directory);
    return;
  }
  // The MD5s torchvision's MNIST dataset lists for the original files.
  const MnistFiles files = findMnistFiles(directory, "t10k");
  const FileChecksums images = checksumFile(files.images), labels = checksumFile(files.labels);
  CHECK(images.fileMd5 == "9fb629c4189551a2d022fa330f9573f3");
  CHECK(labels.fileMd5 == "ec29112dd5afa0611ce80d1b7f02629c");
  CHECK(images.contentBytes == 16 + 10000 * 784);
  CHECK(labels.contentBytes == 8 + 10000);
#else
  WARN("skipped: HYPERGRAD_SHARED_DATA_DIR not defined");
#endif
}

namespace {

/// Sets (or, given nullptr, unsets) an environment variable for one scope, then restores it.
class ScopedEnvironment {
 public:
  ScopedEnvironment(const char* name, const char* value) : m_name(name) {
    if (const char* old = std::getenv(name)) m_old = old, m_had = true;
    if (value != nullptr) ::setenv(name, value, 1);
    else ::unsetenv(name);
  }
  ~ScopedEnvironment() {
    if (m_had) ::setenv(m_name.c_str(), m_old.c_str(), 1);
    else ::unsetenv(m_name.c_str());
  }
  ScopedEnvironment(const ScopedEnvironment&) = delete;
  ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

 private:
  std::string m_name, m_old;
  bool m_had = false;
};

/// Makes `directory` (created if needed) the working directory for one scope, then restores the old one.
/// Declare it after the TempDir it points into, so the old directory is back before that one is removed.
class ScopedWorkingDirectory {
 public:
  explicit ScopedWorkingDirectory(const fs::path& directory) : m_old(fs::current_path()) {
    fs::create_directories(directory);
    fs::current_path(directory);
  }
  ~ScopedWorkingDirectory() {
    std::error_code ec;
    fs::current_path(m_old, ec);
  }
  ScopedWorkingDirectory(const ScopedWorkingDirectory&) = delete;
  ScopedWorkingDirectory& operator=(const ScopedWorkingDirectory&) = delete;

 private:
  fs::path m_old;
};

/// A two-image MNIST-format t10k split (gzip) in `<tmp>/<subdirectory>`, created if needed.
void writeTinyT10k(const TempDir& tmp, const std::string& subdirectory) {
  fs::create_directories(tmp.file(subdirectory));
  writeMnistSplit(tmp, subdirectory + "/t10k", 2, 28, 28, {7, 2}, true);
}

bool sameDirectory(const std::string& a, const std::string& b) {
  std::error_code ec;
  return fs::equivalent(a, b, ec);
}

}  // namespace

TEST_CASE("resolveDataDirectory returns a directory path unchanged and maps \"fashion-mnist\" to the default",
          "[data][resolve]") {
  // Paths are not checked here (loadMnist reports a missing one); only the two names are special.
  for (const std::string path : {"/nonexistent/hypergrad-data", "data/mnist", "./mnist", "MNIST", "mnist/", ""}) {
    INFO("'" << path << "'");
    CHECK(resolveDataDirectory(path) == path);
  }
  CHECK(resolveDataDirectory("fashion-mnist") == defaultDataDirectory());
  CHECK(resolveDataDirectory("fashion-mnist") == "/usr/share/datasets/fashion-mnist");
}

TEST_CASE("resolveDataDirectory(\"mnist\") looks in $HYPERGRAD_MNIST_DIR first", "[data][resolve]") {
  TempDir tmp;
  writeTinyT10k(tmp, "my-mnist");
  const ScopedEnvironment variable(mnistDirectoryVariable, tmp.file("my-mnist").c_str());
  CHECK(std::string(mnistDirectoryVariable) == "HYPERGRAD_MNIST_DIR");
  REQUIRE_FALSE(mnistDirectoryCandidates().empty());
  CHECK(mnistDirectoryCandidates().front() == tmp.file("my-mnist"));
  const std::string directory = resolveDataDirectory("mnist");
  CHECK(directory == tmp.file("my-mnist"));  // before ../shared/data/mnist, wherever the tests run
  const Dataset d = loadMnist(directory, "t10k");
  CHECK(d.numExamples() == 2);
  CHECK(d.labels(0) == 7);
}

TEST_CASE("resolveDataDirectory(\"mnist\") finds ../shared/data/mnist from the working directory and up to four "
          "levels below it",
          "[data][resolve]") {
  // The CI layout: a checkout whose sibling is shared/, tests run from build folders below it.
  TempDir tmp;
  writeTinyT10k(tmp, "shared/data/mnist");
  const ScopedEnvironment variable(mnistDirectoryVariable, nullptr);
  const std::string shared = tmp.file("shared/data/mnist");
  for (const std::string below : {"checkout", "checkout/build", "checkout/build/native/tests", "checkout/a/b/c/d"}) {
    INFO("working directory " << below);
    const ScopedWorkingDirectory cd(tmp.file(below));
    const std::vector<std::string> candidates = mnistDirectoryCandidates();
    CHECK(std::find(candidates.begin(), candidates.end(), shared) != candidates.end());
    CHECK(candidates.back() == "/usr/share/datasets/mnist");
    CHECK(sameDirectory(resolveDataDirectory("mnist"), shared));
  }
  // Five levels below the checkout the walk stops short of its sibling.
  const ScopedWorkingDirectory cd(tmp.file("checkout/a/b/c/d/e"));
  const std::vector<std::string> candidates = mnistDirectoryCandidates();
  CHECK(std::find(candidates.begin(), candidates.end(), shared) == candidates.end());
  CHECK(std::find(candidates.begin(), candidates.end(), tmp.file("checkout/a/shared/data/mnist")) !=
        candidates.end());
  // An empty variable counts as unset; every candidate is absolute and without "..".
  const ScopedEnvironment empty(mnistDirectoryVariable, "");
  CHECK(mnistDirectoryCandidates() == candidates);
  for (const std::string& c : candidates) {
    INFO(c);
    CHECK(fs::path(c).is_absolute());
    CHECK(c.find("..") == std::string::npos);
  }
}

TEST_CASE("resolveDataDirectory(\"mnist\") throws a DataError naming every directory it tried and what to do",
          "[data][resolve]") {
  if (!findDataDirectory({"/usr/share/datasets/mnist"}).empty()) {
    WARN("skipped: /usr/share/datasets/mnist holds MNIST, so \"mnist\" always resolves on this machine");
    return;
  }
  TempDir tmp;
  fs::create_directories(tmp.file("empty"));
  const ScopedWorkingDirectory cd(tmp.file("nowhere/below"));  // no shared/ beside any ancestor
  {
    // A variable that points at a directory without the files is passed over, and said to be set.
    const ScopedEnvironment variable(mnistDirectoryVariable, tmp.file("empty").c_str());
    const std::vector<std::string> candidates = mnistDirectoryCandidates();
    REQUIRE(candidates.size() >= 3);
    CHECK(candidates.front() == tmp.file("empty"));
    const std::string m = dataErrorMessage([] { resolveDataDirectory("mnist"); });
    for (const std::string& c : candidates) CHECK_THAT(m, Contains("\n  " + c));
    CHECK_THAT(m, Contains(tmp.file("nowhere/shared/data/mnist")) && Contains("/usr/share/datasets/mnist") &&
                      Contains("t10k-images-idx3-ubyte") && Contains("HYPERGRAD_MNIST_DIR is set") &&
                      Contains("--data DIR") && Contains("set HYPERGRAD_MNIST_DIR=DIR"));
  }
  const ScopedEnvironment variable(mnistDirectoryVariable, nullptr);
  const std::string m = dataErrorMessage([] { resolveDataDirectory("mnist"); });
  CHECK_THAT(m, Contains("HYPERGRAD_MNIST_DIR is not set") && Contains(tmp.file("nowhere/shared/data/mnist")));
  CHECK_THAT(m, !Contains(tmp.file("empty")));
}

TEST_CASE("resolveDataDirectory(\"mnist\") finds the shared MNIST test set from inside the checkout (else skips)",
          "[data][resolve][real]") {
#ifdef HYPERGRAD_SHARED_DATA_DIR
  const std::string shared = HYPERGRAD_SHARED_DATA_DIR;  // <checkout>/../shared/data/mnist
  if (!hasMnistSplit(shared, "t10k")) {
    WARN("skipped: MNIST t10k files not found in " << shared);
    return;
  }
  const fs::path checkout = fs::path(shared).parent_path().parent_path().parent_path().parent_path();
  const ScopedEnvironment variable(mnistDirectoryVariable, nullptr);
  const ScopedWorkingDirectory cd(checkout / "include" / "hypergrad" / "data");  // three levels down
  const std::string directory = resolveDataDirectory("mnist");
  CHECK(sameDirectory(directory, shared));
  const Dataset d = loadMnist(directory, "t10k", 3);
  CHECK(d.labels(0) == 7);  // MNIST's first test digit
#else
  WARN("skipped: HYPERGRAD_SHARED_DATA_DIR not defined");
#endif
}
