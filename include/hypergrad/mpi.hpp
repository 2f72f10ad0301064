// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file mpi.hpp
/// \brief The MPI component (CMake target hypergrad::mpi; needs MPI, Debian: libopenmpi-dev):
/// objectives evaluated data-parallel over MPI processes, and the optimizer state sharded over
/// them (ShardedOptimizer), with results bit-identical to one process. Not included by
/// <hypergrad.hpp>, which does not depend on MPI.

#include "mpi/shard_distribution.hpp"
#include "parallel/sharded_optimizer.hpp"
