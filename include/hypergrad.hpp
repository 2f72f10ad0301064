// hypergrad — exact hypergradients by running training backwards, bit for bit.
// SPDX-License-Identifier: MIT
#pragma once

/// \file hypergrad.hpp
/// \brief Everything in one include: `#include <hypergrad.hpp>`. The area headers below also work
/// on their own for users who want less: the core types, the exact arithmetic, the optimizers
/// (update rules on one shared driver), the passes and their result, the objectives, and
/// meta-optimisation. The IDX reader (data/idx.hpp, needs zlib) and the image writers (io/) are
/// included separately.

#include "hypergrad/batches.hpp"
#include "hypergrad/config.hpp"
#include "hypergrad/data/dataset.hpp"
#include "hypergrad/errors.hpp"
#include "hypergrad/init.hpp"
#include "hypergrad/layout.hpp"
#include "hypergrad/parallel/shard_distribution.hpp"
#include "hypergrad/parallel/shard_plan.hpp"
#include "hypergrad/parallel/sharded_optimizer.hpp"
#include "hypergrad/random.hpp"
#include "hypergrad/schedule.hpp"

#include "hypergrad/callbacks.hpp"
#include "hypergrad/exact.hpp"
#include "hypergrad/hypergradients.hpp"
#include "hypergrad/meta.hpp"
#include "hypergrad/objectives.hpp"
#include "hypergrad/optimizers.hpp"
