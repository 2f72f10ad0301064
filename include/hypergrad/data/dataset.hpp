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
struct Dataset {
  Eigen::MatrixXd inputs;  ///< numExamples × numFeatures, one example per ROW
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
    for (Index j = 0; j < inputs.cols(); ++j)  // column-major: contiguous reads
      for (Index k = 0; k < inputs.rows(); ++k)
        if (!std::isfinite(inputs(k, j))) {
          throw InvalidArgument(detail::message("Dataset: input (example ", k, ", feature ", j, ") is ",
                                                inputs(k, j), "; inputs must be finite"));
        }
  }
};

}  // namespace hypergrad
