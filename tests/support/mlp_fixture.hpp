// Test fixture: synthetic classification data for the MLP tests and the fan-in scaled initial
// weights they start from. Shared by the reverse-pass, thread and MPI tests, which compare runs
// on the same data.
#pragma once

#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include <hypergrad/data/dataset.hpp>
#include <hypergrad/init.hpp>
#include <hypergrad/objectives/mlp/architecture.hpp>
#include <hypergrad/random.hpp>

namespace fixture {

/// Uniform inputs labelled by a random linear teacher; the teacher depends on (features, classes)
/// only, so training and validation sets drawn with different seeds share it.
inline hypergrad::Dataset syntheticData(hypergrad::Index examples, hypergrad::Index features,
                                        hypergrad::Index classes, std::uint64_t seed) {
  using hypergrad::Index;
  hypergrad::CounterRng teacherRng(static_cast<std::uint64_t>(features * 1000 + classes)), rng(seed);
  hypergrad::Dataset d;
  d.inputs.resize(examples, features);
  d.labels.resize(examples);
  d.numClasses = classes;
  Eigen::MatrixXd teacher(features, classes);
  for (Index i = 0; i < teacher.size(); ++i) teacher(i) = teacherRng.normal();
  for (Index j = 0; j < examples; ++j) {
    for (Index i = 0; i < features; ++i) d.inputs(j, i) = rng.uniform();
    Eigen::Index best;
    (d.inputs.row(j) * teacher).maxCoeff(&best);
    d.labels(j) = static_cast<int>(best);
  }
  return d;
}

/// Initial weights drawn with the fan-in scales (ScaledInit::logScalesFromFanIn).
inline Eigen::VectorXd initialWeights(const hypergrad::MlpArchitecture& arch, std::uint64_t seed) {
  const std::vector<hypergrad::Index> fanIn = arch.groupFanIn();
  Eigen::VectorXd f(static_cast<hypergrad::Index>(fanIn.size()));
  for (std::size_t k = 0; k < fanIn.size(); ++k) f(static_cast<hypergrad::Index>(k)) = static_cast<double>(fanIn[k]);
  return hypergrad::ScaledInit(arch.layout(), hypergrad::ScaledInit::logScalesFromFanIn(f), seed).weights();
}

}  // namespace fixture
