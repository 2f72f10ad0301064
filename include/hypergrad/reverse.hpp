// SPDX-License-Identifier: MIT
#pragma once

/// \file reverse.hpp
/// \brief train(), reverse() and computeHypergradients() with their result type; the same as
/// <hypergrad/hypergradients.hpp>, kept at this path for code written against the first release.

#include "hypergradients.hpp"
