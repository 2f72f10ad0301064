// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file dataset.hpp
/// \brief hypergrad::Dataset, the classification data set that MlpObjective and MlpLoss train
/// and evaluate on and that the IDX loader (data/idx.hpp) returns. Kept apart from the MLP so
/// that code which only reads or builds data does not compile the network.

#include <cmath>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"

namespace hypergrad {

/// \brief A classification data set: one example per row of `inputs`, integer labels.
///
/// `inputs` is stored **row-major** (example-major): example k's features are contiguous, the
/// memory of a C-contiguous [n, F] NumPy array or PyTorch tensor (copy one in with
/// `Eigen::Map<const Dataset::InputMatrix>(ptr, n, F)`), and what MlpObjective reads when it
/// gathers a minibatch — so the objective needs no copy of its own in another order.
/// MlpObjective and MlpLoss can share one Dataset through a std::shared_ptr<const Dataset>.
struct Dataset {
  /// Row-major double matrix: one example per row, contiguous.
  using InputMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  InputMatrix inputs;      ///< numExamples × numFeatures, one example per ROW (row-major)
  Eigen::VectorXi labels;  ///< numExamples labels in [0, numClasses)
  Index numClasses = 0;    ///< number of classes

  Index numExamples() const noexcept { return inputs.rows(); }  ///< Rows of `inputs`.
  Index numFeatures() const noexcept { return inputs.cols(); }  ///< Columns of `inputs`.

  /// \brief Throws InvalidArgument when the sizes disagree, a label is out of [0, numClasses),
  /// or an input is NaN or infinite; the message names the offending entry.
  void validate() const {
    if (inputs.rows() == 0 || inputs.cols() == 0) {
      throw InvalidArgument(detail::message("Dataset: inputs are ", inputs.rows(), " x ", inputs.cols(),
                                            "; need at least one example (row) and one feature (column)"));
    }
    if (labels.size() != inputs.rows()) {
      throw InvalidArgument(detail::message("Dataset: ", inputs.rows(), " examples (rows of inputs) but ",
                                            labels.size(), " labels; give one label per example"));
    }
    if (numClasses < 1) {
      throw InvalidArgument(detail::message("Dataset: numClasses is ", numClasses, "; it must be at least 1"));
    }
    for (Index k = 0; k < labels.size(); ++k) {
      if (labels(k) < 0 || labels(k) >= numClasses) {
        throw InvalidArgument(detail::message("Dataset: label of example ", k, " is ", labels(k),
                                              ", outside [0, numClasses = ", numClasses, ")"));
      }
    }
    for (Index k = 0; k < inputs.rows(); ++k)  // row-major: contiguous reads
      for (Index j = 0; j < inputs.cols(); ++j)
        if (!std::isfinite(inputs(k, j))) {
          throw InvalidArgument(detail::message("Dataset: input (example ", k, ", feature ", j, ") is ",
                                                inputs(k, j), "; inputs must be finite"));
        }
  }
};

}  // namespace hypergrad
