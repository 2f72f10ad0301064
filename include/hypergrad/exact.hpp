// SPDX-License-Identifier: MIT
#pragma once

/// \file exact.hpp
/// \brief The exact arithmetic layer: fixed point, ratios, the information buffer and the
/// reversible multiply-by-ratio. Forward and reverse passes both go through it.

#include "exact/fixed_point.hpp"
#include "exact/information_buffer.hpp"
#include "exact/ratio.hpp"
#include "exact/ratio_multiply.hpp"
