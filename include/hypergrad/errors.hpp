// SPDX-License-Identifier: MIT
#pragma once

/// \file errors.hpp
/// \brief The exception hierarchy. Every error a user can cause derives from hypergrad::Error;
/// messages say what went wrong, where (function, step, group, element) and what to change.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace hypergrad {

/// Base of every exception hypergrad throws.
class Error : public std::runtime_error {
 public:
  /// \param what the message: what went wrong, where, and what to change.
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// An argument is malformed: a wrong size, a value out of its domain (e.g.\ gamma outside [0, 1]),
/// a schedule whose shape does not match T or the parameter layout.
class InvalidArgument : public Error {
 public:
  using Error::Error;  ///< Constructed from the message, like Error.
};

/// A value does not fit the fixed-point range (or a fixed-point sum overflowed).
class FixedPointOverflow : public Error {
 public:
  using Error::Error;  ///< Constructed from the message, like Error.
};

/// A gradient, Hessian-vector product or mixed product returned a NaN or an infinity.
class NonFiniteValue : public Error {
 public:
  using Error::Error;  ///< Constructed from the message, like Error.
};

/// The exactness invariant failed: a reverse pass did not end at the recorded initial state, the
/// information buffer is not empty, or an operation was applied to the wrong run.
class ExactnessViolation : public Error {
 public:
  using Error::Error;  ///< Constructed from the message, like Error.
};

/// An object was used out of order: unstep past the first step, a second reverse of one run,
/// use of an optimizer left unusable by an earlier error.
class InvalidState : public Error {
 public:
  using Error::Error;  ///< Constructed from the message, like Error.
};

/// A data file is missing, truncated or malformed.
class DataError : public Error {
 public:
  using Error::Error;  ///< Constructed from the message, like Error.
};

/// A process of a distributed evaluation failed, or the processes disagree on its inputs. Every
/// process throws the same DistributedError (so that all of them leave the collective together
/// and stay in step): what() names the failing rank, the batch and that rank's error with its type.
class DistributedError : public Error {
 public:
  /// \param what the message; \param rank the failing process (−1 when the processes disagree)
  DistributedError(const std::string& what, int rank) : Error(what), m_rank(rank) {}
  /// The lowest rank whose evaluation failed, or −1 when the processes disagree on the inputs.
  int rank() const noexcept { return m_rank; }

 private:
  int m_rank;
};

namespace detail {

/// Builds a message from streamable parts: message("step ", t, " group ", g).
template <class... Parts>
std::string message(Parts&&... parts) {
  std::ostringstream os;
  os.precision(17);
  (os << ... << std::forward<Parts>(parts));
  return os.str();
}

}  // namespace detail
}  // namespace hypergrad
