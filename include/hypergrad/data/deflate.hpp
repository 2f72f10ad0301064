// SPDX-License-Identifier: MIT
#pragma once

/// \file deflate.hpp
/// \brief zlibDeflate: zlib's compressor for the PNG writers (io/image.hpp),
/// `writePng(path, image, lo, hi, PngOptions().withDeflate(hypergrad::zlibDeflate))`.
///
/// **Linking.** This header calls zlib, so a target that includes it links `hypergrad::data`
/// (as for the IDX reader); the writers themselves need no zlib and store blocks uncompressed.

#include <cstdint>
#include <string>
#include <vector>

#include <zlib.h>

#include "../errors.hpp"

namespace hypergrad {

/// `raw` as a zlib stream (header, deflate at the best compression, Adler-32): what a PNG's IDAT
/// holds. Throws InvalidState when zlib fails (out of memory).
inline std::vector<std::uint8_t> zlibDeflate(const std::vector<std::uint8_t>& raw) {
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  std::vector<std::uint8_t> out(size);
  const int rc = compress2(out.data(), &size, raw.data(), static_cast<uLong>(raw.size()), Z_BEST_COMPRESSION);
  if (rc != Z_OK) throw InvalidState("zlibDeflate: zlib's compress2 failed with code " + std::to_string(rc));
  out.resize(size);
  return out;
}

}  // namespace hypergrad
