// SPDX-License-Identifier: MIT
#pragma once

/// \file hypergradients.hpp
/// \brief The passes, for any update rule: train() (forward), reverse() (exact hypergradients),
/// computeHypergradients() (both), their result type and the callback protocol.

#include "callbacks.hpp"
#include "hypergradients/result.hpp"
#include "hypergradients/reverse.hpp"
#include "hypergradients/train.hpp"
