// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file hypergrad.hpp
/// \brief Everything in one include: `#include <hypergrad.hpp>`. Each area header below also
/// works on its own for users who want less.

#include "hypergrad/config.hpp"
#include "hypergrad/errors.hpp"
#include "hypergrad/random.hpp"
#include "hypergrad/layout.hpp"
#include "hypergrad/batches.hpp"
#include "hypergrad/data/dataset.hpp"
#include "hypergrad/parallel/shard_plan.hpp"
#include "hypergrad/objective.hpp"
#include "hypergrad/exact.hpp"
#include "hypergrad/schedule.hpp"
#include "hypergrad/init.hpp"
#include "hypergrad/callbacks.hpp"
#include "hypergrad/optimizers.hpp"
#include "hypergrad/hypergradients.hpp"
#include "hypergrad/objectives/mlp.hpp"
#include "hypergrad/objectives/l2.hpp"
#include "hypergrad/objectives/autodiff.hpp"
#include "hypergrad/meta.hpp"
