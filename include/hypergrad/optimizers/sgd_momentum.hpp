// SPDX-License-Identifier: MIT
#pragma once

/// \file sgd_momentum.hpp
/// \brief Reversible SGD with momentum, `SgdMomentum<>`: the momentum rule (momentum.hpp) on the
/// shared driver (reversible_optimizer.hpp). Kept at this path for code written against the first
/// release.

#include "momentum.hpp"
