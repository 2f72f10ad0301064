// SPDX-License-Identifier: MIT
#pragma once

/// \file meta.hpp
/// \brief Meta-optimisation: hyperparameter transforms, meta-optimisers, the loop, callbacks,
/// learning-curve extrapolation and early stopping.

#include "meta/callbacks.hpp"
#include "meta/learning_curves.hpp"
#include "meta/meta_optimize.hpp"
#include "meta/optimizers.hpp"
#include "meta/parameters.hpp"
