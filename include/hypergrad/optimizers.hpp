// SPDX-License-Identifier: MIT
#pragma once

/// \file optimizers.hpp
/// \brief Exactly reversible optimizers: the update-rule concept, the shared driver
/// (ReversibleOptimizer), the rules (SGD with momentum, heavy-ball momentum, momentum-RMSprop,
/// Adam, AdamW), saving and loading runs, and the plain-double reference optimizer that runs the
/// same rules without exact arithmetic; the rules that cannot be inverted (Nesterov momentum,
/// plain RMSprop) and CheckpointedOptimizer, which reverses any of them by checkpointing.

#include "optimizers/adam.hpp"
#include "optimizers/checkpointed.hpp"
#include "optimizers/concept.hpp"
#include "optimizers/heavy_ball.hpp"
#include "optimizers/momentum.hpp"
#include "optimizers/nesterov.hpp"
#include "optimizers/plain_rmsprop.hpp"
#include "optimizers/reversible_optimizer.hpp"
#include "optimizers/rmsprop.hpp"
#include "optimizers/schedule_set.hpp"
#include "optimizers/snapshot.hpp"
#include "reference/optimizer.hpp"
