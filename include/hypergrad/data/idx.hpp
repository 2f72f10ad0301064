// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file idx.hpp
/// \brief Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed) and a
/// loader that turns a split of either data set into a hypergrad::Dataset.
///
/// **Linking.** This header calls zlib, so a target that includes it links `hypergrad::data`
/// (= `hypergrad::hypergrad` + `ZLIB::ZLIB`) instead of `hypergrad::hypergrad`. It is not part of
/// `<hypergrad.hpp>`, so users who never read data files never need zlib.
///
/// **The IDX format** (http://yann.lecun.com/exdb/mnist/): a header of two zero bytes, a type
/// code, the number of dimensions d, then d big-endian 32-bit sizes; then the values, big-endian,
/// in row-major order (the last dimension varies fastest).
///
/// | code | type          | bytes |
/// |------|---------------|-------|
/// | 0x08 | unsigned byte | 1     |
/// | 0x09 | signed byte   | 1     |
/// | 0x0B | short         | 2     |
/// | 0x0C | int           | 4     |
/// | 0x0D | float         | 4     |
/// | 0x0E | double        | 8     |
///
/// **Untrusted input.** Every size in a header is checked against the bytes that are actually
/// there before anything of that size is allocated: parseIdx never reads out of bounds and
/// allocates at most 8 bytes per input byte; readIdx decompresses incrementally, so a header that
/// claims more than the file holds is reported as truncated without allocating the claimed size,
/// and a file whose header claims more than `maxBytes` is rejected before any data is read. Every
/// failure is a DataError whose message names the file, what is wrong and what to do.

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "dataset.hpp"

namespace hypergrad {

/// Element type of an IDX file: the third byte of its header.
enum class IdxType : std::uint8_t {
  UnsignedByte = 0x08,  ///< std::uint8_t (MNIST and Fashion-MNIST images and labels)
  SignedByte = 0x09,    ///< std::int8_t
  Short = 0x0B,         ///< std::int16_t, big-endian
  Int = 0x0C,           ///< std::int32_t, big-endian
  Float = 0x0D,         ///< IEEE 754 binary32, big-endian
  Double = 0x0E         ///< IEEE 754 binary64, big-endian
};

/// \brief Name of an IDX element type ("unsigned byte", ...), for messages.
inline const char* idxTypeName(IdxType type) noexcept {
  switch (type) {
    case IdxType::UnsignedByte:
      return "unsigned byte";
    case IdxType::SignedByte:
      return "signed byte";
    case IdxType::Short:
      return "short";
    case IdxType::Int:
      return "int";
    case IdxType::Float:
      return "float";
    case IdxType::Double:
      return "double";
  }
  return "unknown";
}

/// \brief Bytes per element of an IDX type (1, 2, 4 or 8).
inline std::size_t idxElementSize(IdxType type) noexcept {
  switch (type) {
    case IdxType::UnsignedByte:
    case IdxType::SignedByte:
      return 1;
    case IdxType::Short:
      return 2;
    case IdxType::Int:
    case IdxType::Float:
      return 4;
    case IdxType::Double:
      return 8;
  }
  return 1;
}

/// \brief Whether an IDX type holds integers (every type but Float and Double).
inline bool idxTypeIsIntegral(IdxType type) noexcept { return type != IdxType::Float && type != IdxType::Double; }

/// Default cap on the data a header may declare: 2 GiB, 45 times the largest MNIST file. A
/// header declaring more is rejected as corrupt before anything is read or allocated.
inline constexpr std::size_t idxDefaultMaxBytes = std::size_t(1) << 31;

/// \brief The content of an IDX file: its element type, dimensions and values.
///
/// Invariant: exactly one of `bytes` and `values` holds the elements, `size()` of them in
/// row-major order. Unsigned bytes (the MNIST case) stay bytes, so a 60,000-image file costs 47 MB
/// and not 376 MB; every other type is converted to double, which is exact for all of them.
struct IdxArray {
  IdxType type = IdxType::UnsignedByte;  ///< element type read from the header
  std::vector<std::int64_t> dims;        ///< sizes, outermost first (e.g. {count, rows, columns})
  std::vector<std::uint8_t> bytes;       ///< the elements when type == UnsignedByte, else empty
  std::vector<double> values;            ///< the elements for every other type, else empty

  /// Number of elements: the product of `dims`.
  std::size_t size() const noexcept { return type == IdxType::UnsignedByte ? bytes.size() : values.size(); }

  /// Element `i` (row-major) as a double; `i < size()` is the caller's to ensure.
  double value(std::size_t i) const noexcept {
    HYPERGRAD_ASSERT(i < size());
    return type == IdxType::UnsignedByte ? static_cast<double>(bytes[i]) : values[i];
  }
};

namespace detail {
namespace idx {

/// What a validated header says: type, dimensions, and where and how long the data are.
struct Header {
  IdxType type = IdxType::UnsignedByte;
  std::vector<std::int64_t> dims;
  std::size_t headerBytes = 0;  ///< 4 + 4 · dims.size()
  std::size_t dataBytes = 0;    ///< product of dims · element size (≤ maxBytes)
};

inline std::uint32_t readBigEndian32(const std::uint8_t* p) noexcept {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | std::uint32_t(p[3]);
}

inline std::string hexByte(std::uint8_t b) {
  static const char digits[] = "0123456789abcdef";
  return std::string("0x") + digits[b >> 4] + digits[b & 15];
}

inline std::string dimsText(const std::vector<std::int64_t>& dims) {
  std::string text;
  for (std::size_t k = 0; k < dims.size(); ++k) text += (k ? " x " : "") + std::to_string(dims[k]);
  return text.empty() ? "none" : text;
}

/// Validates the header at the start of `data` (the first `size` bytes of the file) and returns
/// it. Reads only bytes below `size`; throws DataError when the header is incomplete, its magic or
/// type code is wrong, it has no dimensions, or its data would exceed `maxBytes`.
inline Header parseHeader(const std::uint8_t* data, std::size_t size, const std::string& name, std::size_t maxBytes) {
  const std::string where = "IDX file '" + name + "': ";
  if (size == 0) {
    throw DataError(where + "the file is empty (truncated: an IDX file starts with a 4-byte header); fetch it again");
  }
  if (data[0] != 0 || (size > 1 && data[1] != 0)) {
    throw DataError(detail::message(where, "wrong magic number: the first two bytes are ", hexByte(data[0]),
                                    size > 1 ? " " + hexByte(data[1]) : std::string(),
                                    ", they must be 0 in an IDX file; this is not an IDX file (or a compressed "
                                    "file in another format than gzip)"));
  }
  if (size < 4) {
    throw DataError(detail::message(where, "truncated header: the file has ", size,
                                    " bytes, an IDX header needs at least 4; fetch the file again"));
  }
  const std::uint8_t code = data[2];
  switch (code) {
    case 0x08:
    case 0x09:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x0E:
      break;
    default:
      throw DataError(detail::message(where, "unsupported type code ", hexByte(code),
                                      " (third byte); IDX files use 0x08 (unsigned byte), 0x09 (signed byte), 0x0B "
                                      "(short), 0x0C (int), 0x0D (float) or 0x0E (double)"));
  }
  Header header;
  header.type = static_cast<IdxType>(code);
  const std::size_t numDims = data[3];
  if (numDims == 0) {
    throw DataError(where + "the header declares 0 dimensions (fourth byte); an IDX array has at least 1");
  }
  header.headerBytes = 4 + 4 * numDims;
  if (size < header.headerBytes) {
    throw DataError(detail::message(where, "truncated header: ", numDims, " dimensions need a ", header.headerBytes,
                                    "-byte header, the file has ", size, " bytes; fetch the file again"));
  }
  // Product of the sizes, checked against the cap before every multiplication so it can neither
  // overflow nor lead to a huge allocation; a zero size makes the array empty (valid IDX).
  const std::size_t elementSize = idxElementSize(header.type);
  // The cap is also kept below half the address space so header + data + 1 cannot wrap.
  const std::size_t maxElements = std::min(maxBytes, std::numeric_limits<std::size_t>::max() / 2) / elementSize;
  std::size_t elements = 1;
  bool tooLarge = false;
  header.dims.resize(numDims);
  for (std::size_t k = 0; k < numDims; ++k) {
    const std::uint32_t d = readBigEndian32(data + 4 + 4 * k);
    header.dims[k] = static_cast<std::int64_t>(d);
    if (d == 0) {
      elements = 0;
    } else if (!tooLarge && elements > maxElements / d) {
      tooLarge = true;
    } else if (!tooLarge) {
      elements *= d;
    }
  }
  if (tooLarge && elements != 0) {
    throw DataError(detail::message(where, "the header declares dimensions ", dimsText(header.dims), " of ",
                                    idxTypeName(header.type), "s, too large: more than the limit of ", maxBytes,
                                    " bytes of data; the header is corrupt (or pass a larger maxBytes)"));
  }
  header.dataBytes = elements * elementSize;
  return header;
}

/// Decodes the `count` big-endian elements at `p` (which holds count · element size bytes).
inline void decode(IdxType type, const std::uint8_t* p, std::size_t count, std::vector<double>& out) {
  static_assert(std::numeric_limits<float>::is_iec559 && std::numeric_limits<double>::is_iec559,
                "IDX float and double elements are IEEE 754; this platform's float/double are not");
  out.resize(count);
  for (std::size_t i = 0; i < count; ++i) {
    switch (type) {
      case IdxType::UnsignedByte:
        out[i] = p[i];
        break;
      case IdxType::SignedByte:
        out[i] = static_cast<std::int8_t>(p[i]);
        break;
      case IdxType::Short:
        out[i] = static_cast<std::int16_t>(static_cast<std::uint16_t>((p[2 * i] << 8) | p[2 * i + 1]));
        break;
      case IdxType::Int:
        out[i] = static_cast<std::int32_t>(readBigEndian32(p + 4 * i));
        break;
      case IdxType::Float: {
        const std::uint32_t bits = readBigEndian32(p + 4 * i);
        float f;
        std::memcpy(&f, &bits, sizeof f);
        out[i] = f;
        break;
      }
      case IdxType::Double: {
        const std::uint64_t bits = (std::uint64_t(readBigEndian32(p + 8 * i)) << 32) | readBigEndian32(p + 8 * i + 4);
        double d;
        std::memcpy(&d, &bits, sizeof d);
        out[i] = d;
        break;
      }
    }
  }
}

/// Checks that the file holds exactly the data its header declares.
inline void checkDataSize(const Header& header, std::size_t size, const std::string& name) {
  const std::size_t got = size - header.headerBytes;
  if (got < header.dataBytes) {
    throw DataError(detail::message("IDX file '", name, "': truncated: dimensions ", dimsText(header.dims), " of ",
                                    idxTypeName(header.type), "s: expected ", header.dataBytes,
                                    " bytes of data after the ", header.headerBytes, "-byte header, got ", got,
                                    "; the file is incomplete, fetch it again"));
  }
  if (got > header.dataBytes) {
    throw DataError(detail::message("IDX file '", name, "': dimensions ", dimsText(header.dims), " of ",
                                    idxTypeName(header.type), "s: expected ", header.dataBytes,
                                    " bytes of data after the ", header.headerBytes,
                                    "-byte header, found more data than the header declares; the header does not "
                                    "match the file"));
  }
}

/// Parses a whole file already in `buffer`, reusing the buffer's storage for unsigned bytes.
inline IdxArray parseOwned(std::vector<std::uint8_t>&& buffer, const std::string& name, std::size_t maxBytes) {
  Header header = parseHeader(buffer.data(), buffer.size(), name, maxBytes);
  checkDataSize(header, buffer.size(), name);
  IdxArray array;
  array.type = header.type;
  array.dims = std::move(header.dims);
  if (array.type == IdxType::UnsignedByte) {
    buffer.erase(buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(header.headerBytes));
    array.bytes = std::move(buffer);
  } else {
    decode(array.type, buffer.data() + header.headerBytes, header.dataBytes / idxElementSize(array.type),
           array.values);
  }
  return array;
}

/// A file opened for reading, through zlib when it starts with the gzip magic 0x1f 0x8b.
class Input {
 public:
  explicit Input(const std::string& path) : m_path(path) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
      throw DataError("IDX file '" + path + "': is a directory, not a file; give the path of an IDX file");
    }
    std::FILE* file = std::fopen(path.c_str(), "rb");
    if (file == nullptr) {
      const int error = errno;
      throw DataError("IDX file '" + path + "': cannot open it (" + std::strerror(error) + ")" +
                      (error == ENOENT ? "; check the path (for Fashion-MNIST: install Debian's dataset-fashion-mnist, "
                                         "which puts the files in /usr/share/datasets/fashion-mnist)"
                                       : std::string()));
    }
    unsigned char magic[2] = {0, 0};
    const std::size_t got = std::fread(magic, 1, 2, file);
    m_gzip = got == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
    if (!m_gzip) {
      std::rewind(file);
      m_file = file;
      return;
    }
    std::fclose(file);
    m_gz = gzopen(path.c_str(), "rb");
    if (m_gz == nullptr) {
      throw DataError("IDX file '" + path + "': cannot open it through zlib (" + std::strerror(errno) + ")");
    }
    gzbuffer(m_gz, 1u << 17);
  }
  ~Input() {
    if (m_file != nullptr) std::fclose(m_file);
    if (m_gz != nullptr) gzclose_r(m_gz);
  }
  Input(const Input&) = delete;
  Input& operator=(const Input&) = delete;

  bool gzip() const noexcept { return m_gzip; }

  /// Reads up to `n` bytes into `dst`; returns fewer only at the end of the (decompressed) file.
  /// Throws DataError on a read error or on corrupt or truncated gzip data.
  std::size_t read(std::uint8_t* dst, std::size_t n) {
    std::size_t total = 0;
    while (total < n) {
      const std::size_t want = std::min<std::size_t>(n - total, std::size_t(1) << 20);
      if (m_file != nullptr) {
        const std::size_t got = std::fread(dst + total, 1, want, m_file);
        total += got;
        if (got < want) {
          if (std::ferror(m_file)) {
            throw DataError("IDX file '" + m_path + "': read error (" + std::strerror(errno) + ")");
          }
          break;
        }
      } else {
        const int got = gzread(m_gz, dst + total, static_cast<unsigned>(want));
        int errnum = Z_OK;
        const char* zmessage = gzerror(m_gz, &errnum);
        if (got < 0 || (errnum != Z_OK && errnum != Z_BUF_ERROR)) {
          throw DataError(std::string("IDX file '") + m_path + "': corrupt gzip data (zlib: " +
                          (zmessage ? zmessage : "unknown error") + "); the file is damaged, fetch it again");
        }
        total += static_cast<std::size_t>(got);
        if (static_cast<std::size_t>(got) < want) {
          // zlib reports a stream that stops before its end as Z_BUF_ERROR and returns short reads.
          if (errnum == Z_BUF_ERROR) {
            throw DataError(std::string("IDX file '") + m_path + "': corrupt gzip data: the compressed stream is " +
                            "truncated (zlib: " + (zmessage ? zmessage : "unexpected end of file") +
                            "); the file is incomplete, fetch it again");
          }
          break;
        }
      }
    }
    return total;
  }

 private:
  std::string m_path;
  std::FILE* m_file = nullptr;
  gzFile m_gz = nullptr;
  bool m_gzip = false;
};

inline bool isFile(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

/// `<directory>/<stem>.gz` if it exists, else `<directory>/<stem>` if it exists, else "".
inline std::string findFile(const std::string& directory, const std::string& stem) {
  std::string plain = (std::filesystem::path(directory) / stem).string();
  if (isFile(plain + ".gz")) return plain + ".gz";
  if (isFile(plain)) return plain;
  return std::string();
}

}  // namespace idx
}  // namespace detail

/// \brief Parses an IDX file held in memory (already decompressed).
///
/// Safe on any input: reads only `data[0, size)`, checks the declared dimensions against `size`
/// (and `maxBytes`) before allocating, and reports every problem as a DataError.
/// \param data the bytes of the file (may be null when `size` is 0).
/// \param size number of bytes at `data`.
/// \param name the file's name, used in error messages.
/// \param maxBytes the most data (product of the dimensions × element size) a header may declare.
/// \return the type, dimensions and values; the file must hold exactly the data its header declares.
/// \throws DataError on a wrong magic number, an unsupported type code, no dimensions, sizes
///         above `maxBytes`, or data shorter (truncated) or longer than the header declares.
inline IdxArray parseIdx(const std::uint8_t* data, std::size_t size, const std::string& name,
                         std::size_t maxBytes = idxDefaultMaxBytes) {
  const detail::idx::Header header = detail::idx::parseHeader(data, size, name, maxBytes);
  detail::idx::checkDataSize(header, size, name);
  IdxArray array;
  array.type = header.type;
  array.dims = header.dims;
  const std::uint8_t* payload = data + header.headerBytes;
  if (array.type == IdxType::UnsignedByte) {
    array.bytes.assign(payload, payload + header.dataBytes);
  } else {
    detail::idx::decode(array.type, payload, header.dataBytes / idxElementSize(array.type), array.values);
  }
  return array;
}

/// \brief Reads an IDX file, gzip-compressed (recognised by its first bytes 0x1f 0x8b, whatever
/// its name) or plain.
///
/// The data are decompressed incrementally: a header that declares more than the file holds is
/// reported as truncated after reading what is there, never by allocating the declared size.
/// \param path the file.
/// \param maxBytes the most data a header may declare (default 2 GiB); more is rejected as corrupt.
/// \throws DataError naming `path`: the file is missing or unreadable, its gzip data are corrupt
///         or truncated, or its content is not a valid IDX array (see parseIdx).
inline IdxArray readIdx(const std::string& path, std::size_t maxBytes = idxDefaultMaxBytes) {
  detail::idx::Input input(path);
  // Header first (magic, then the dimensions it announces), validated before the data are read.
  std::vector<std::uint8_t> buffer(4);
  std::size_t got = input.read(buffer.data(), 4);
  if (got == 4) {
    buffer.resize(4 + 4 * std::size_t(buffer[3]));
    got += input.read(buffer.data() + 4, buffer.size() - 4);
  }
  buffer.resize(got);
  const detail::idx::Header header = detail::idx::parseHeader(buffer.data(), buffer.size(), path, maxBytes);
  // Then the data, in chunks, up to one byte past the declared end (to notice extra data): the
  // buffer grows with what the file really holds, not with what the header claims.
  const std::size_t wanted = header.headerBytes + header.dataBytes + 1;
  const std::size_t chunk = std::size_t(1) << 22;
  buffer.reserve(std::min(wanted, chunk));
  while (buffer.size() < wanted) {
    const std::size_t old = buffer.size();
    const std::size_t want = std::min(chunk, wanted - old);
    buffer.resize(old + want);
    const std::size_t n = input.read(buffer.data() + old, want);
    buffer.resize(old + n);
    if (n < want) break;
  }
  return detail::idx::parseOwned(std::move(buffer), path, maxBytes);
}

/// \brief Where Debian's `dataset-fashion-mnist` package installs Fashion-MNIST:
/// "/usr/share/datasets/fashion-mnist".
inline std::string defaultDataDirectory() { return "/usr/share/datasets/fashion-mnist"; }

/// \brief The first of `candidates` that holds an MNIST-format image file
/// (`train-images-idx3-ubyte` or `t10k-images-idx3-ubyte`, gzip-compressed or not), or an empty
/// string when none does.
inline std::string findDataDirectory(const std::vector<std::string>& candidates) {
  for (const std::string& directory : candidates) {
    if (directory.empty()) continue;
    if (!detail::idx::findFile(directory, "train-images-idx3-ubyte").empty() ||
        !detail::idx::findFile(directory, "t10k-images-idx3-ubyte").empty()) {
      return directory;
    }
  }
  return std::string();
}

/// \brief True when `directory` holds `<split>-images-idx3-ubyte`, gzip-compressed or not
/// (split "train" or "t10k").
inline bool hasMnistSplit(const std::string& directory, const std::string& split) {
  return !detail::idx::findFile(directory, split + "-images-idx3-ubyte").empty();
}

/// Environment variable naming the directory of the MNIST files, the first place
/// resolveDataDirectory("mnist") looks: the way to point a clone without `../shared` (or an
/// installed program) at a copy of MNIST, without changing any command line.
inline constexpr const char* mnistDirectoryVariable = "HYPERGRAD_MNIST_DIR";

/// \brief Where resolveDataDirectory("mnist") looks, in order: `$HYPERGRAD_MNIST_DIR` when it is
/// set and not empty; `<a>/../shared/data/mnist` for `a` = the working directory and up to four of
/// its ancestors; then `/usr/share/datasets/mnist`.
///
/// Why the walk up: a checkout whose sibling is `shared/` (this project's CI layout) runs its
/// examples from the checkout and its tests from build folders one to three levels below it
/// (`build/native/tests`), and all of them should find the same copy without a flag. The paths
/// are absolute and lexically normal (no `..`), so messages say exactly where the files were
/// looked for; duplicates (near the file-system root) are dropped.
inline std::vector<std::string> mnistDirectoryCandidates() {
  std::vector<std::string> candidates;
  const auto add = [&candidates](const std::filesystem::path& path) {
    const std::string text = path.lexically_normal().string();
    if (std::find(candidates.begin(), candidates.end(), text) == candidates.end()) candidates.push_back(text);
  };
  if (const char* value = std::getenv(mnistDirectoryVariable); value != nullptr && *value != '\0') add(value);
  std::error_code ec;
  std::filesystem::path ancestor = std::filesystem::current_path(ec);
  if (!ec) {
    for (int level = 0; level <= 4; ++level, ancestor = ancestor.parent_path()) {
      add(ancestor.parent_path() / "shared" / "data" / "mnist");
      if (ancestor == ancestor.parent_path()) break;  // the root: nothing further up
    }
  }
  add("/usr/share/datasets/mnist");
  return candidates;
}

/// \brief The directory a `--data` argument means: a data set's name, or a directory.
///
/// - "fashion-mnist": defaultDataDirectory() (Debian's dataset-fashion-mnist).
/// - "mnist": the first of mnistDirectoryCandidates() that holds MNIST-format images (train or
///   t10k, gzip-compressed or not; see findDataDirectory). This lets the examples run on the
///   paper's data set by name wherever a copy sits, e.g. the 10,000-image test set in
///   `../shared/data/mnist`, without each of them knowing the layout.
/// - anything else: returned unchanged, as a directory path (the behaviour before names existed;
///   loadMnist reports a missing or empty one). To use a directory called `mnist` in the working
///   directory, pass `./mnist`.
///
/// The names are matched exactly (lowercase). Nothing is read but directory entries.
/// \throws DataError for "mnist" when no candidate holds the files; the message lists every
///         directory tried and says what to do (pass the directory itself, or set
///         HYPERGRAD_MNIST_DIR).
inline std::string resolveDataDirectory(const std::string& nameOrDirectory) {
  if (nameOrDirectory == "fashion-mnist") return defaultDataDirectory();
  if (nameOrDirectory != "mnist") return nameOrDirectory;
  const std::vector<std::string> candidates = mnistDirectoryCandidates();
  std::string found = findDataDirectory(candidates);
  if (!found.empty()) return found;
  std::string tried;
  for (const std::string& directory : candidates) tried += "\n  " + directory;
  const char* variable = std::getenv(mnistDirectoryVariable);
  throw DataError(std::string("resolveDataDirectory: no MNIST files for \"mnist\": none of these directories holds "
                              "t10k-images-idx3-ubyte[.gz] or train-images-idx3-ubyte[.gz] (") +
                  mnistDirectoryVariable + (variable != nullptr && *variable != '\0' ? " is set" : " is not set") +
                  "):" + tried + "\nPass the directory holding the MNIST files instead of the name (--data DIR), or " +
                  "set " + mnistDirectoryVariable + "=DIR; get the files (train-/t10k-images-idx3-ubyte.gz and " +
                  "-labels-idx1-ubyte.gz) from http://yann.lecun.com/exdb/mnist/ or a mirror");
}

namespace detail {
namespace idx {

/// MD5 (RFC 1321), streaming: only to compare files with published manifests, not for security.
class Md5 {
 public:
  void update(const std::uint8_t* data, std::size_t n) {
    m_length += n;
    while (n > 0) {
      const std::size_t take = std::min(n, std::size_t(64) - m_fill);
      std::memcpy(m_block + m_fill, data, take);
      m_fill += take;
      data += take;
      n -= take;
      if (m_fill == 64) {
        compress(m_block);
        m_fill = 0;
      }
    }
  }
  /// The digest as 32 lowercase hexadecimal digits (as md5sum prints it); ends the stream.
  std::string hex() {
    const std::uint64_t bits = m_length * 8;
    const std::uint8_t one = 0x80, zero = 0;
    update(&one, 1);
    while (m_fill != 56) update(&zero, 1);
    std::uint8_t length[8];
    for (int k = 0; k < 8; ++k) length[k] = static_cast<std::uint8_t>(bits >> (8 * k));
    update(length, 8);
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (std::uint32_t word : m_state)
      for (int k = 0; k < 4; ++k) {
        const auto byte = static_cast<std::uint8_t>(word >> (8 * k));
        out += digits[byte >> 4];
        out += digits[byte & 15];
      }
    return out;
  }

 private:
  static std::uint32_t rotateLeft(std::uint32_t x, int s) noexcept { return (x << s) | (x >> (32 - s)); }

  void compress(const std::uint8_t* block) noexcept {
    // K[i] = floor(2^32 |sin(i + 1)|) and the per-round shifts, as RFC 1321 defines them.
    static constexpr std::uint32_t K[64] = {
        0xd76aa478u, 0xe8c7b756u, 0x242070dbu, 0xc1bdceeeu, 0xf57c0fafu, 0x4787c62au, 0xa8304613u, 0xfd469501u,
        0x698098d8u, 0x8b44f7afu, 0xffff5bb1u, 0x895cd7beu, 0x6b901122u, 0xfd987193u, 0xa679438eu, 0x49b40821u,
        0xf61e2562u, 0xc040b340u, 0x265e5a51u, 0xe9b6c7aau, 0xd62f105du, 0x02441453u, 0xd8a1e681u, 0xe7d3fbc8u,
        0x21e1cde6u, 0xc33707d6u, 0xf4d50d87u, 0x455a14edu, 0xa9e3e905u, 0xfcefa3f8u, 0x676f02d9u, 0x8d2a4c8au,
        0xfffa3942u, 0x8771f681u, 0x6d9d6122u, 0xfde5380cu, 0xa4beea44u, 0x4bdecfa9u, 0xf6bb4b60u, 0xbebfbc70u,
        0x289b7ec6u, 0xeaa127fau, 0xd4ef3085u, 0x04881d05u, 0xd9d4d039u, 0xe6db99e5u, 0x1fa27cf8u, 0xc4ac5665u,
        0xf4292244u, 0x432aff97u, 0xab9423a7u, 0xfc93a039u, 0x655b59c3u, 0x8f0ccc92u, 0xffeff47du, 0x85845dd1u,
        0x6fa87e4fu, 0xfe2ce6e0u, 0xa3014314u, 0x4e0811a1u, 0xf7537e82u, 0xbd3af235u, 0x2ad7d2bbu, 0xeb86d391u};
    static constexpr int S[4][4] = {{7, 12, 17, 22}, {5, 9, 14, 20}, {4, 11, 16, 23}, {6, 10, 15, 21}};
    std::uint32_t m[16];
    for (int j = 0; j < 16; ++j) {
      const std::uint8_t* p = block + 4 * static_cast<std::ptrdiff_t>(j);  // little-endian words
      m[j] = std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) | (std::uint32_t(p[3]) << 24);
    }
    std::uint32_t a = m_state[0], b = m_state[1], c = m_state[2], d = m_state[3];
    for (int i = 0; i < 64; ++i) {
      const int round = i / 16;
      std::uint32_t f;
      int g;
      if (round == 0) {
        f = (b & c) | (~b & d);
        g = i;
      } else if (round == 1) {
        f = (d & b) | (~d & c);
        g = (5 * i + 1) % 16;
      } else if (round == 2) {
        f = b ^ c ^ d;
        g = (3 * i + 5) % 16;
      } else {
        f = c ^ (b | ~d);
        g = (7 * i) % 16;
      }
      f += a + K[i] + m[g];
      a = d;
      d = c;
      c = b;
      b += rotateLeft(f, S[round][i % 4]);
    }
    m_state[0] += a;
    m_state[1] += b;
    m_state[2] += c;
    m_state[3] += d;
  }

  std::uint32_t m_state[4] = {0x67452301u, 0xefcdab89u, 0x98badcfeu, 0x10325476u};
  std::uint8_t m_block[64] = {};
  std::size_t m_fill = 0;
  std::uint64_t m_length = 0;
};

/// loadMnist's file lookup: the path of `<directory>/<stem>[.gz]`, or a DataError saying how to
/// get the data.
inline std::string locateMnistFile(const std::string& directory, const std::string& stem, const char* fn) {
  std::string path = findFile(directory, stem);
  if (!path.empty()) return path;
  const std::string plain = (std::filesystem::path(directory) / stem).string();
  std::error_code ec;
  throw DataError(std::string(fn) + ": missing file: neither '" + plain + ".gz' nor '" + plain + "' exists" +
                  (std::filesystem::is_directory(directory, ec) ? std::string()
                                                                : " (the directory '" + directory +
                                                                      "' does not exist)") +
                  ". Install Debian's dataset-fashion-mnist (apt install dataset-fashion-mnist; files in " +
                  defaultDataDirectory() +
                  "), or pass the directory holding the MNIST or Fashion-MNIST files (--data DIR)");
}

}  // namespace idx
}  // namespace detail

/// \brief The two files of an MNIST-format split, as loadMnist finds them.
struct MnistFiles {
  std::string images;  ///< `<directory>/<split>-images-idx3-ubyte.gz`, or the same name without `.gz`
  std::string labels;  ///< `<directory>/<split>-labels-idx1-ubyte.gz`, or the same name without `.gz`
};

/// \brief The paths loadMnist(directory, split) reads (the `.gz` file when both exist), e.g. to
/// checksum them with checksumFile().
/// \throws InvalidArgument for a split other than "train" / "t10k".
/// \throws DataError when a file is missing (the same message as loadMnist's).
inline MnistFiles findMnistFiles(const std::string& directory, const std::string& split) {
  if (split != "train" && split != "t10k") {
    throw InvalidArgument("findMnistFiles: split is '" + split +
                          "'; use \"train\" (60,000 examples) or \"t10k\" (10,000, the test set)");
  }
  MnistFiles files;
  files.images = detail::idx::locateMnistFile(directory, split + "-images-idx3-ubyte", "findMnistFiles");
  files.labels = detail::idx::locateMnistFile(directory, split + "-labels-idx1-ubyte", "findMnistFiles");
  return files;
}

/// \brief Checksums of a file as stored and of its content (decompressed when it is gzip).
///
/// Which to compare with what: a manifest of the downloaded `.gz` files (Fashion-MNIST's README,
/// torchvision's MNIST and FashionMNIST lists) gives MD5s of the files as stored: compare
/// `fileMd5`. A re-packaged copy has other `.gz` bytes for the same data (Debian's
/// dataset-fashion-mnist stores its files without the original gzip file-name field, so none of
/// their MD5s matches Fashion-MNIST's list): compare `contentMd5` with `zcat FILE | md5sum` of a
/// trusted copy. The CRC-32s (zlib's crc32, the one gzip uses) are quick checks of the same
/// bytes; for a gzip file `contentCrc32` is what its trailer records (`gzip -lv FILE` prints it),
/// and zlib has already checked it while decompressing. SHA-256 is not offered: compute it with
/// `sha256sum FILE` or `zcat FILE | sha256sum`.
struct FileChecksums {
  std::string path;                ///< the file
  bool gzip = false;               ///< compressed: the file starts with the gzip magic 0x1f 0x8b
  std::uint64_t fileBytes = 0;     ///< size as stored
  std::string fileMd5;             ///< MD5 of the bytes as stored, 32 lowercase hex digits (`md5sum FILE`)
  std::uint32_t fileCrc32 = 0;     ///< CRC-32 of the bytes as stored
  std::uint64_t contentBytes = 0;  ///< decompressed size (fileBytes for a plain file)
  std::string contentMd5;          ///< MD5 of the decompressed bytes (`zcat FILE | md5sum`; = fileMd5 if plain)
  std::uint32_t contentCrc32 = 0;  ///< CRC-32 of the decompressed bytes (= fileCrc32 if plain)
};

/// \brief Reads `path` (any file; gzip recognised by its first bytes, as readIdx does) and returns
/// the checksums of its stored and decompressed bytes. Streams in 1 MiB chunks: memory does not
/// grow with the file. About 0.45 s for the 26 MB Fashion-MNIST training images (MD5 and CRC-32
/// of 26 + 47 MB, decompression included; 0.06 s for a test-set image file).
/// \throws DataError naming `path`: missing, a directory, unreadable, or corrupt or truncated gzip
///         data (including a trailer whose CRC-32 or length does not match the data).
inline FileChecksums checksumFile(const std::string& path) {
  FileChecksums out;
  out.path = path;
  std::vector<std::uint8_t> chunk(std::size_t(1) << 20);
  {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
      throw DataError("checksumFile: '" + path + "' is a directory, not a file; give the path of a file");
    }
    std::FILE* file = std::fopen(path.c_str(), "rb");
    if (file == nullptr) {
      const int error = errno;
      throw DataError("checksumFile: cannot open '" + path + "' (" + std::strerror(error) + "); check the path");
    }
    detail::idx::Md5 md5;
    uLong crc = crc32(0L, nullptr, 0);
    int error = 0;
    for (;;) {
      const std::size_t got = std::fread(chunk.data(), 1, chunk.size(), file);
      if (out.fileBytes == 0 && got >= 2) out.gzip = chunk[0] == 0x1f && chunk[1] == 0x8b;
      md5.update(chunk.data(), got);
      crc = crc32(crc, chunk.data(), static_cast<uInt>(got));
      out.fileBytes += got;
      if (got < chunk.size()) {
        if (std::ferror(file)) error = errno != 0 ? errno : EIO;
        break;
      }
    }
    std::fclose(file);
    if (error != 0) throw DataError("checksumFile: read error in '" + path + "' (" + std::strerror(error) + ")");
    out.fileMd5 = md5.hex();
    out.fileCrc32 = static_cast<std::uint32_t>(crc);
  }
  if (!out.gzip) {
    out.contentBytes = out.fileBytes;
    out.contentMd5 = out.fileMd5;
    out.contentCrc32 = out.fileCrc32;
    return out;
  }
  detail::idx::Input input(path);  // zlib, which checks each gzip member's CRC-32 and length
  detail::idx::Md5 md5;
  uLong crc = crc32(0L, nullptr, 0);
  for (;;) {
    const std::size_t got = input.read(chunk.data(), chunk.size());
    md5.update(chunk.data(), got);
    crc = crc32(crc, chunk.data(), static_cast<uInt>(got));
    out.contentBytes += got;
    if (got < chunk.size()) break;
  }
  out.contentMd5 = md5.hex();
  out.contentCrc32 = static_cast<std::uint32_t>(crc);
  return out;
}

/// \brief Examples [begin, begin + count) of `data` (inputs, labels, numClasses), e.g.\ to split
/// one loaded file into training and validation sets. Throws InvalidArgument when the range is
/// not inside the data set.
inline Dataset subset(const Dataset& data, Index begin, Index count) {
  if (begin < 0 || count < 0 || begin + count > data.numExamples()) {
    throw InvalidArgument(detail::message("subset: examples [", begin, ", ", begin + count,
                                          ") are not inside the data set's ", data.numExamples(), " examples"));
  }
  Dataset out;
  out.inputs = data.inputs.middleRows(begin, count);
  out.labels = data.labels.segment(begin, count);
  out.numClasses = data.numClasses;
  return out;
}

/// \brief Loads a split of MNIST or Fashion-MNIST (same format) as a Dataset.
///
/// Reads `<directory>/<split>-images-idx3-ubyte.gz` and `<split>-labels-idx1-ubyte.gz` (or the
/// same names without `.gz`). The result has one image per row: numExamples × (rows · columns)
/// inputs (× 784 for MNIST), pixels in row-major order; labels in [0, 10); numClasses = 10.
/// \param directory the folder holding the files, e.g. defaultDataDirectory().
/// \param split "train" (60,000 examples) or "t10k" (10,000).
/// \param maxExamples keep the first `maxExamples` examples (all when -1 or more than the files hold).
/// \param scaleTo01 divide the pixel values by 255, mapping unsigned bytes to [0, 1]; else keep 0..255.
/// \throws InvalidArgument for a split other than "train" / "t10k" or maxExamples of 0 or below -1.
/// \throws DataError naming the file: a file is missing (the message says how to get the data),
///         unreadable or malformed (see readIdx), the images are not 3-D or the labels not 1-D,
///         the two files disagree on the number of examples, a label is outside [0, 10), or a
///         pixel is not finite.
inline Dataset loadMnist(const std::string& directory, const std::string& split, Index maxExamples = -1,
                         bool scaleTo01 = true) {
  if (split != "train" && split != "t10k") {
    throw InvalidArgument("loadMnist: split is '" + split +
                          "'; use \"train\" (60,000 examples) or \"t10k\" (10,000, the test set)");
  }
  if (maxExamples == 0 || maxExamples < -1) {
    throw InvalidArgument(detail::message("loadMnist: maxExamples is ", maxExamples,
                                          "; give the number of examples to keep (>= 1), or -1 for all"));
  }
  const std::string imagePath = detail::idx::locateMnistFile(directory, split + "-images-idx3-ubyte", "loadMnist");
  const std::string labelPath = detail::idx::locateMnistFile(directory, split + "-labels-idx1-ubyte", "loadMnist");
  const IdxArray images = readIdx(imagePath);
  const IdxArray labels = readIdx(labelPath);

  if (images.dims.size() != 3) {
    throw DataError(detail::message("IDX file '", imagePath, "': images must be 3-D (count x rows x columns), the file ",
                                    "has ", images.dims.size(), " dimensions (", detail::idx::dimsText(images.dims),
                                    "); is it an image file?"));
  }
  if (labels.dims.size() != 1) {
    throw DataError(detail::message("IDX file '", labelPath, "': labels must be 1-D (count), the file has ",
                                    labels.dims.size(), " dimensions (", detail::idx::dimsText(labels.dims),
                                    "); is it a label file?"));
  }
  if (!idxTypeIsIntegral(labels.type)) {
    throw DataError(detail::message("IDX file '", labelPath, "': labels are ", idxTypeName(labels.type),
                                    "s; class labels must be integers (type 0x08, 0x09, 0x0B or 0x0C)"));
  }
  if (images.dims[0] != labels.dims[0]) {
    throw DataError(detail::message("loadMnist: count mismatch: '", imagePath, "' holds ", images.dims[0],
                                    " images but '", labelPath, "' holds ", labels.dims[0],
                                    " labels; the two files must come from the same split"));
  }
  // With a non-zero count, the header check bounds rows · columns by the data size, so the
  // product cannot overflow; a zero count is rejected first.
  if (images.size() == 0) {
    throw DataError(detail::message("IDX file '", imagePath, "': holds no pixels (dimensions ",
                                    detail::idx::dimsText(images.dims), "); a data set needs at least one image"));
  }
  const Index features = static_cast<Index>(images.dims[1] * images.dims[2]);
  Index count = static_cast<Index>(images.dims[0]);
  if (maxExamples > 0) count = std::min(count, maxExamples);

  Dataset data;
  data.numClasses = 10;
  data.labels.resize(count);
  for (Index k = 0; k < count; ++k) {
    const double label = labels.value(static_cast<std::size_t>(k));
    if (!(label >= 0 && label < 10)) {
      throw DataError(detail::message("IDX file '", labelPath, "': label of example ", k, " is ", label,
                                      ", out of range [0, 10); MNIST-format labels are digits 0-9"));
    }
    data.labels(k) = static_cast<int>(label);
  }
  using RowMajorBytes = Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using RowMajorDoubles = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  if (images.type == IdxType::UnsignedByte) {
    data.inputs = Eigen::Map<const RowMajorBytes>(images.bytes.data(), count, features).cast<double>();
  } else {
    data.inputs = Eigen::Map<const RowMajorDoubles>(images.values.data(), count, features);
    if (!data.inputs.allFinite()) {
      throw DataError("IDX file '" + imagePath + "': holds a NaN or infinite pixel; pixels must be finite");
    }
  }
  if (scaleTo01) data.inputs /= 255.0;
  return data;
}

}  // namespace hypergrad
