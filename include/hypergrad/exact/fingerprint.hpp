// SPDX-License-Identifier: MIT
#pragma once

/// \file fingerprint.hpp
/// \brief 64-bit fingerprints of double vectors, for the run record: each forward step stores the
/// fingerprint of the gradient g_t it used (8 bytes per step), and the reverse pass compares the
/// recomputed gradient's fingerprint before it touches the state, so that a reverse run with
/// another objective, data set, seed or batch schedule is reported at the first step where it
/// differs instead of corrupting the state.

#include <cstdint>
#include <cstring>

#include "../config.hpp"

namespace hypergrad {

/// Fingerprint of the bits of x[0 .. n): four interleaved lanes (short dependency chains, about
/// 0.3 ns per element), each h ← rotl((h ⊕ bits) · K, 29) — a bijection of h, so two vectors of
/// the same length that differ in one element always differ — then mixed with the length by a
/// splitmix64 finaliser. Bits, not values: +0.0 and −0.0 differ, as they may in the next step.
inline std::uint64_t fingerprint(const double* x, Index n) noexcept {
  constexpr std::uint64_t K = 0x9E3779B97F4A7C15ull;
  std::uint64_t h[4] = {0x243F6A8885A308D3ull, 0x13198A2E03707344ull, 0xA4093822299F31D0ull, 0x082EFA98EC4E6C89ull};
  auto mix = [](std::uint64_t lane, double value) {
    std::uint64_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    lane = (lane ^ bits) * K;
    return (lane << 29) | (lane >> 35);
  };
  Index i = 0;
  for (; i + 4 <= n; i += 4) {
    h[0] = mix(h[0], x[i]);
    h[1] = mix(h[1], x[i + 1]);
    h[2] = mix(h[2], x[i + 2]);
    h[3] = mix(h[3], x[i + 3]);
  }
  // The last n mod 4 values, into lanes 0, 1, 2 (i is a multiple of 4: lane (i + r) & 3 = r).
  // Written with r < 4 so that GCC's loop analysis does not warn about a huge n.
  const Index rest = n - i;
  for (Index r = 0; r < rest && r < 4; ++r) h[r] = mix(h[r], x[i + r]);
  std::uint64_t z = static_cast<std::uint64_t>(n);
  for (std::uint64_t lane : h) {
    z = (z ^ lane) * K;
    z ^= z >> 31;
  }
  z ^= z >> 30;
  z *= 0xBF58476D1CE4E5B9ull;
  z ^= z >> 27;
  z *= 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace hypergrad
