// SPDX-License-Identifier: MIT
#pragma once

/// \file exact.hpp
/// \brief The exact arithmetic layer: fixed point, ratios, the information buffer, the reversible
/// multiply-by-ratio, the fused per-block kernel that runs an update rule exactly (forward and
/// backwards), its lane path (LaneValue, the AVX-512 lane coder) and the gradient fingerprints of
/// the run record.

#include "exact/arithmetic.hpp"
#include "exact/fingerprint.hpp"
#include "exact/fixed_point.hpp"
#include "exact/information_buffer.hpp"
#include "exact/lane_value.hpp"
#include "exact/lanes.hpp"
#include "exact/ratio.hpp"
#include "exact/ratio_multiply.hpp"
