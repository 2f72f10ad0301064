// SPDX-License-Identifier: MIT
#pragma once

/// \file hypergradients.hpp
/// \brief The passes, for any update rule: train() (forward), reverse() (exact hypergradients),
/// computeHypergradients() (both), reverseTruncated() (the last K steps), their result type and
/// the callback protocol; forwardHypergradients() (forward mode along HyperparameterDirections)
/// and implicitHypergradients() (IFT at the final weights); hypergradients(method, …), one entry
/// point over them.

#include "callbacks.hpp"
#include "hypergradients/directions.hpp"
#include "hypergradients/forward.hpp"
#include "hypergradients/implicit.hpp"
#include "hypergradients/realtime.hpp"
#include "hypergradients/result.hpp"
#include "hypergradients/reverse.hpp"
#include "hypergradients/toolbox.hpp"
#include "hypergradients/train.hpp"
