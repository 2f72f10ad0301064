// SPDX-License-Identifier: MIT
#pragma once

/// \file optimizers.hpp
/// \brief Exactly reversible optimizers: the update-rule concept, the shared driver
/// (ReversibleOptimizer), the rules (SGD with momentum, heavy-ball momentum), saving and loading
/// runs, and the plain-double reference optimizer that runs the same rules without exact
/// arithmetic.

#include "optimizers/adam.hpp"
#include "optimizers/concept.hpp"
#include "optimizers/heavy_ball.hpp"
#include "optimizers/momentum.hpp"
#include "optimizers/reversible_optimizer.hpp"
#include "optimizers/rmsprop.hpp"
#include "optimizers/schedule_set.hpp"
#include "optimizers/snapshot.hpp"
#include "reference/optimizer.hpp"
