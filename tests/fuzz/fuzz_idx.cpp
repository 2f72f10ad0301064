// SPDX-License-Identifier: MIT
//
// libFuzzer target for the IDX reader: parseIdx on any bytes either returns an array consistent
// with its header or throws hypergrad::DataError; it never crashes, never reads outside
// data[0, size) (ASan) and never allocates what the input does not hold. Any other exception
// type, an ASan / UBSan report or a violated check below is a failure. Build and run with
// tests/fuzz/run.sh.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <hypergrad/data/idx.hpp>

namespace {
[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_idx: property violated: %s\n", what);
  std::fflush(stderr);
  __builtin_trap();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Copy into an exactly sized heap block so that ASan catches a read one byte past the end
  // (libFuzzer's own buffer is exact too, but this keeps the property independent of it).
  const std::vector<std::uint8_t> bytes(data, data + size);
  const std::uint8_t* p = bytes.empty() ? nullptr : bytes.data();
  try {
    const hypergrad::IdxArray array = hypergrad::parseIdx(p, bytes.size(), "fuzz.idx");
    // Accepted: the header's dimensions account for the data, which hold exactly size() values.
    if (array.dims.empty()) fail("accepted an array without dimensions");
    std::size_t count = 1;
    for (std::int64_t dim : array.dims) {
      if (dim < 0) fail("negative dimension");
      count *= static_cast<std::size_t>(dim);
    }
    if (count != array.size()) fail("size() differs from the product of the dimensions");
    const std::size_t element = hypergrad::idxElementSize(array.type);
    if (size != 4 + 4 * array.dims.size() + count * element) fail("accepted a file of the wrong length");
    if (array.type == hypergrad::IdxType::UnsignedByte ? !array.values.empty() : !array.bytes.empty())
      fail("both bytes and values hold elements");
    volatile double sink = 0.0;
    for (std::size_t i = 0; i < array.size(); ++i) sink = sink + array.value(i);
    (void)sink;
  } catch (const hypergrad::DataError& e) {
    if (std::string(e.what()).empty()) fail("a DataError without a message");
  }
  // Anything else (std::bad_alloc, std::length_error, another hypergrad::Error) escapes and
  // libFuzzer reports it as a crash.
  return 0;
}
