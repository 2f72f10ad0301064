// SPDX-License-Identifier: MIT
#pragma once

/// \file objectives.hpp
/// \brief Training objectives: the objective concept (objective.hpp), the MLP (network, training
/// objective, validation loss), the L2 decorator and the autodiff adaptor for a user's model.

#include "objective.hpp"
#include "objectives/autodiff.hpp"
#include "objectives/l2.hpp"
#include "objectives/mlp.hpp"
