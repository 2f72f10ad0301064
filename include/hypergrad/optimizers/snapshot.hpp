// SPDX-License-Identifier: MIT
#pragma once

/// \file snapshot.hpp
/// \brief Saving a run to a file and loading it in another process, to reverse it later or to
/// resume training: saveRun(opt, path) / loadRun(opt, path) for a ReversibleOptimizer.
///
/// What is saved: the fixed-point state and its exact start snapshot, the information buffer,
/// the run record (gradient fingerprints, iteration, half-step flag), and what identifies the
/// configuration — the rule, the fixed-point format, the rounding policy, the ratio and coder
/// bits, the parameter layout and a 64-bit fingerprint of the schedules' values. loadRun()
/// requires an optimizer constructed the same way (same rule, template arguments, layout, block
/// size and schedules; the same buffer layout unless OptimizerOptions::lanes is 0, the default,
/// which takes either) and checks each of these, naming the first that differs.
///
/// **Format** (version 1, or 2 for a buffer in the lane layout), little-endian throughout: the
/// 8-byte magic "HGRUN\r\n\x1a", a u32 version, then the fields in the order above (strings as u64
/// length + bytes, vectors as u64 count + items), then a u64 checksum of every byte before it.
/// Version 2 adds one u32 after the buffer's block size, its stacks per block
/// (OptimizerOptions::lanes), and lists the stacks (lanes per block) instead of the blocks; runs
/// with one stack per block are still written as version 1, so files of earlier releases and of
/// this one are interchangeable. A file that is truncated, whose
/// magic, version or checksum is wrong, or whose fields are inconsistent raises DataError naming
/// the problem; a well-formed file for another configuration raises InvalidArgument naming the
/// mismatch. Either way the optimizer is left exactly as it was: the file is parsed completely
/// and validated before anything is replaced.

#include <array>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <istream>
#include <iterator>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../errors.hpp"
#include "../layout.hpp"
#include "../random.hpp"

namespace hypergrad {
namespace detail {

inline constexpr char kRunMagic[8] = {'H', 'G', 'R', 'U', 'N', '\r', '\n', '\x1a'};
inline constexpr std::uint32_t kRunVersion = 1;       // one stack per block
inline constexpr std::uint32_t kRunVersionLanes = 2;  // adds the stacks per block

/// Appends little-endian fields to a byte string and keeps a running checksum.
class RunWriter {
 public:
  void bytes(const void* p, std::size_t n) { m_bytes.append(static_cast<const char*>(p), n); }
  void u64(std::uint64_t x) {
    unsigned char b[8];
    for (int k = 0; k < 8; ++k) b[k] = static_cast<unsigned char>(x >> (8 * k));
    bytes(b, 8);
  }
  void u32(std::uint32_t x) {
    unsigned char b[4];
    for (int k = 0; k < 4; ++k) b[k] = static_cast<unsigned char>(x >> (8 * k));
    bytes(b, 4);
  }
  void i64(std::int64_t x) { u64(static_cast<std::uint64_t>(x)); }
  void str(const std::string& s) {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  const std::string& data() const noexcept { return m_bytes; }

 private:
  std::string m_bytes;
};

/// 64-bit checksum of a byte string (8-byte words through a bijective mix, then the length).
inline std::uint64_t runChecksum(const char* p, std::size_t n) noexcept {
  std::uint64_t h = 0x243F6A8885A308D3ull;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w = 0;
    for (int k = 0; k < 8; ++k) w |= std::uint64_t(static_cast<unsigned char>(p[i + static_cast<std::size_t>(k)])) << (8 * k);
    h = mix64(h ^ w);
  }
  std::uint64_t tail = 0;
  for (int k = 0; i < n; ++i, ++k) tail |= std::uint64_t(static_cast<unsigned char>(p[i])) << (8 * k);
  return mix64(h ^ tail ^ (std::uint64_t(n) << 3));
}

/// Reads the fields back, throwing DataError at the first byte past the end.
class RunReader {
 public:
  RunReader(const char* p, std::size_t n, std::string source) : m_p(p), m_n(n), m_source(std::move(source)) {}
  void bytes(void* out, std::size_t n, const char* what) {
    need(n, what);
    std::memcpy(out, m_p + m_pos, n);
    m_pos += n;
  }
  std::uint64_t u64(const char* what) {
    need(8, what);
    std::uint64_t x = 0;
    for (int k = 0; k < 8; ++k) x |= std::uint64_t(static_cast<unsigned char>(m_p[m_pos + static_cast<std::size_t>(k)])) << (8 * k);
    m_pos += 8;
    return x;
  }
  std::uint32_t u32(const char* what) {
    need(4, what);
    std::uint32_t x = 0;
    for (int k = 0; k < 4; ++k) x |= std::uint32_t(static_cast<unsigned char>(m_p[m_pos + static_cast<std::size_t>(k)])) << (8 * k);
    m_pos += 4;
    return x;
  }
  std::int64_t i64(const char* what) { return static_cast<std::int64_t>(u64(what)); }
  std::string str(const char* what) {
    const std::uint64_t n = count(what, 1);
    std::string s(static_cast<std::size_t>(n), '\0');
    bytes(s.data(), s.size(), what);
    return s;
  }
  /// A count of items of `itemBytes` each, checked against the bytes left (so a corrupt count
  /// cannot trigger a huge allocation).
  std::uint64_t count(const char* what, std::size_t itemBytes) {
    const std::uint64_t n = u64(what);
    if (itemBytes > 0 && n > (m_n - m_pos) / itemBytes)
      throw error(detail::message(what, ": count ", n, " exceeds the ", m_n - m_pos, " bytes left"));
    return n;
  }
  std::size_t position() const noexcept { return m_pos; }
  DataError error(const std::string& text) const {
    return DataError(detail::message("loadRun: ", m_source, ": ", text, " (at byte ", m_pos, ")"));
  }

 private:
  void need(std::size_t n, const char* what) const {
    if (n > m_n - m_pos) throw error(detail::message("truncated: the file ends inside ", what));
  }
  const char* m_p;
  std::size_t m_n;
  std::size_t m_pos = 0;
  std::string m_source;
};

}  // namespace detail

/// Writes the run of `opt` (started) to `out` in the format of the file comment.
template <class Optimizer>
void saveRun(const Optimizer& opt, std::ostream& out) {
  using Rule = typename Optimizer::RuleType;
  const typename Optimizer::RunState run = opt.exportRun();
  detail::RunWriter w;
  const auto& buf = run.buffer;
  w.bytes(detail::kRunMagic, sizeof detail::kRunMagic);
  w.u32(buf.lanes() == 1 ? detail::kRunVersion : detail::kRunVersionLanes);
  w.str(Rule::name);
  w.u32(static_cast<std::uint32_t>(Optimizer::FixedFormatType::radixBits));
  w.str(Optimizer::RoundingPolicy::name);
  w.u32(static_cast<std::uint32_t>(Optimizer::RatioType::denominatorBits));
  w.u32(static_cast<std::uint32_t>(Optimizer::Buffer::precisionBits));
  w.u32(static_cast<std::uint32_t>(Rule::numStates));
  w.u64(static_cast<std::uint64_t>(opt.layout().numGroups()));
  for (const ParameterGroup& g : opt.layout().groups()) {
    w.str(g.name);
    w.i64(g.size);
  }
  w.u64(opt.schedules().fingerprint());
  w.i64(opt.numIterations());
  w.i64(run.iteration);
  w.u32(run.halfStep ? 1u : 0u);
  for (const auto* vectors : {&run.state, &run.start})
    for (const auto& x : *vectors) {
      w.u64(static_cast<std::uint64_t>(x.size()));
      for (Index i = 0; i < x.size(); ++i) w.i64(x[i]);
    }
  w.u64(run.fingerprints.size());
  for (std::uint64_t f : run.fingerprints) w.u64(f);
  w.i64(buf.blockSize());
  if (buf.lanes() != 1) w.u32(static_cast<std::uint32_t>(buf.lanes()));
  w.u64(static_cast<std::uint64_t>(buf.size()));
  for (std::uint64_t x : buf.states()) w.u64(x);
  w.u64(static_cast<std::uint64_t>(buf.numStacks()));
  for (Index k = 0; k < buf.numStacks(); ++k) {
    const std::vector<std::uint32_t> words = buf.stackWords(k);
    w.u64(words.size());
    for (std::uint32_t x : words) w.u32(x);
  }
  const std::uint64_t sum = detail::runChecksum(w.data().data(), w.data().size());
  w.u64(sum);
  out.write(w.data().data(), static_cast<std::streamsize>(w.data().size()));
  if (!out) throw DataError("saveRun: writing the run failed (disk full, or the stream is not writable)");
}

/// Writes the run of `opt` to the file `path` (replaced if it exists).
template <class Optimizer>
void saveRun(const Optimizer& opt, const std::string& path) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) throw DataError(detail::message("saveRun: cannot open '", path, "' for writing"));
  saveRun(opt, file);
  file.close();
  if (!file) throw DataError(detail::message("saveRun: writing '", path, "' failed"));
}

/// Replaces the run of `opt` by the one read from `in`; `opt` must be configured as the saving
/// optimizer was (see the file comment). DataError for a malformed stream, InvalidArgument for a
/// run of another configuration; `opt` is unchanged when either is thrown. `source` names the
/// stream in messages.
template <class Optimizer>
void loadRun(Optimizer& opt, std::istream& in, const std::string& source = "stream") {
  using Rule = typename Optimizer::RuleType;
  using Fixed = typename Optimizer::Fixed;
  using Buffer = typename Optimizer::Buffer;
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw DataError(detail::message("loadRun: ", source, ": reading failed"));
  detail::RunReader r(all.data(), all.size(), source);
  char magic[8];
  r.bytes(magic, 8, "the magic number");
  if (std::memcmp(magic, detail::kRunMagic, 8) != 0)
    throw r.error("not a hypergrad run file (wrong magic number)");
  const std::uint32_t version = r.u32("the version");
  if (version != detail::kRunVersion && version != detail::kRunVersionLanes)
    throw r.error(detail::message("format version ", version, "; this library reads versions ", detail::kRunVersion,
                                  " and ", detail::kRunVersionLanes));
  if (all.size() < 8 + 8 + 4) throw r.error("truncated: no room for the checksum");
  std::uint64_t stored = 0;
  for (int k = 0; k < 8; ++k)
    stored |= std::uint64_t(static_cast<unsigned char>(all[all.size() - 8 + static_cast<std::size_t>(k)])) << (8 * k);
  if (detail::runChecksum(all.data(), all.size() - 8) != stored)
    throw r.error("checksum mismatch: the file is corrupt or truncated");
  detail::RunReader body(all.data(), all.size() - 8, source);
  body.bytes(magic, 8, "the magic number");
  body.u32("the version");

  // Configuration: each mismatch is named.
  auto mismatch = [&](const std::string& what, const std::string& saved, const std::string& here) {
    return InvalidArgument(detail::message("loadRun: ", source, ": the saved run's ", what, " is ", saved,
                                           " but this optimizer's is ", here,
                                           "; construct the optimizer as the saving one was"));
  };
  const std::string rule = body.str("the rule name");
  if (rule != Rule::name) throw mismatch("update rule", "'" + rule + "'", std::string("'") + Rule::name + "'");
  const std::uint32_t radix = body.u32("the fixed-point format");
  if (radix != static_cast<std::uint32_t>(Optimizer::FixedFormatType::radixBits))
    throw mismatch("fixed-point fraction bits", std::to_string(radix), std::to_string(Optimizer::FixedFormatType::radixBits));
  const std::string rounding = body.str("the rounding policy");
  if (rounding != Optimizer::RoundingPolicy::name)
    throw mismatch("rounding policy", rounding, Optimizer::RoundingPolicy::name);
  const std::uint32_t ratioBits = body.u32("the ratio bits"), precision = body.u32("the coder precision");
  if (ratioBits != static_cast<std::uint32_t>(Optimizer::RatioType::denominatorBits))
    throw mismatch("ratio bits", std::to_string(ratioBits), std::to_string(Optimizer::RatioType::denominatorBits));
  if (precision != static_cast<std::uint32_t>(Buffer::precisionBits))
    throw mismatch("coder precision bits", std::to_string(precision), std::to_string(Buffer::precisionBits));
  const std::uint32_t numStates = body.u32("the number of states");
  if (numStates != static_cast<std::uint32_t>(Rule::numStates))
    throw mismatch("number of state vectors", std::to_string(numStates), std::to_string(Rule::numStates));
  const std::uint64_t numGroups = body.count("the groups", 16);
  if (numGroups != static_cast<std::uint64_t>(opt.layout().numGroups()))
    throw mismatch("number of parameter groups", std::to_string(numGroups), std::to_string(opt.layout().numGroups()));
  for (const ParameterGroup& g : opt.layout().groups()) {
    const std::string name = body.str("a group name");
    const std::int64_t size = body.i64("a group size");
    if (name != g.name || size != g.size)
      throw mismatch("parameter group", detail::message("'", name, "' (", size, ")"),
                     detail::message("'", g.name, "' (", g.size, ")"));
  }
  const std::uint64_t schedules = body.u64("the schedules' fingerprint");
  const std::int64_t T = body.i64("the number of iterations");
  if (T != opt.numIterations()) throw mismatch("number of iterations", std::to_string(T), std::to_string(opt.numIterations()));
  if (schedules != opt.schedules().fingerprint()) {
    throw InvalidArgument(detail::message("loadRun: ", source, ": the saved run used other schedule values than this ",
                                          "optimizer's (their fingerprints differ); construct it with the saving run's ",
                                          "schedules"));
  }

  // The run.
  typename Optimizer::RunState run;
  run.iteration = body.i64("the iteration");
  const std::uint32_t half = body.u32("the half-step flag");
  if (half > 1) throw body.error(detail::message("the half-step flag is ", half));
  run.halfStep = half == 1;
  for (auto* vectors : {&run.state, &run.start})
    for (Fixed& x : *vectors) {
      const std::uint64_t n = body.count("a state vector", 8);
      if (n != static_cast<std::uint64_t>(opt.size()))
        throw body.error(detail::message("a state vector has ", n, " entries; the layout has ", opt.size()));
      typename Fixed::Storage raw(static_cast<Index>(n));
      for (Index i = 0; i < raw.size(); ++i) raw(i) = body.i64("a state vector");
      try {
        x = Fixed::fromRaw(raw);
      } catch (const Error& e) {
        throw body.error(e.what());
      }
    }
  const std::uint64_t numPrints = body.count("the gradient fingerprints", 8);
  run.fingerprints.resize(static_cast<std::size_t>(numPrints));
  for (std::uint64_t& f : run.fingerprints) f = body.u64("the gradient fingerprints");
  const std::int64_t blockSize = body.i64("the buffer block size");
  if (blockSize != opt.blockSize())
    throw mismatch("buffer block size", std::to_string(blockSize), std::to_string(opt.blockSize()));
  const std::uint32_t lanes = version == detail::kRunVersion ? 1u : body.u32("the buffer's stacks per block");
  if (lanes != 1 && lanes != static_cast<std::uint32_t>(Optimizer::Buffer::laneCount))
    throw body.error(detail::message("the buffer's stacks per block are ", lanes, "; a run has 1 or ",
                                     Optimizer::Buffer::laneCount));
  // OptimizerOptions::lanes = 0 (the default) takes a run of either layout.
  if (opt.options().lanes != 0 && lanes != static_cast<std::uint32_t>(opt.options().lanes))
    throw mismatch("buffer stacks per block (OptimizerOptions::lanes)", std::to_string(lanes),
                   std::to_string(opt.options().lanes));
  const std::uint64_t numElements = body.count("the buffer states", 8);
  std::vector<std::uint64_t> states(static_cast<std::size_t>(numElements));
  for (std::uint64_t& x : states) x = body.u64("the buffer states");
  const std::uint64_t numStacks = body.count("the buffer's stacks", 8);
  std::vector<std::vector<std::uint32_t>> words(static_cast<std::size_t>(numStacks));
  for (auto& stack : words) {
    stack.resize(static_cast<std::size_t>(body.count("a stack's words", 4)));
    for (std::uint32_t& x : stack) x = body.u32("a stack's words");
  }
  if (body.position() != all.size() - 8) throw body.error("unexpected bytes after the buffer");
  try {
    run.buffer = Buffer::fromContents(static_cast<Index>(numElements), static_cast<Index>(blockSize), std::move(states),
                                      std::move(words), static_cast<int>(lanes));
  } catch (const DataError& e) {
    throw body.error(e.what());
  }
  try {
    opt.importRun(std::move(run));
  } catch (const InvalidArgument& e) {
    throw body.error(e.what());
  }
}

/// Replaces the run of `opt` by the one saved in the file `path` (see the stream overload).
template <class Optimizer>
void loadRun(Optimizer& opt, const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw DataError(detail::message("loadRun: cannot open '", path, "'"));
  loadRun(opt, file, "'" + path + "'");
}

}  // namespace hypergrad
