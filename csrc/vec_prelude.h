// Headers of csrc/vec_kernels.h that must be compiled for the baseline instruction set:
// included by each csrc/cpu_kernels_<isa>.cpp *before* its instruction-set pragma, so
// that every inline function they define (shared by name with the other builds) is
// baseline code; only at::vec (namespaced by CPU_CAPABILITY) and the kernels (internal
// linkage) are compiled for the wider instruction set.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bitset>
#include <cassert>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/NumericUtils.h>
#include <ATen/Parallel.h>
#include <ATen/native/Math.h>
#include <ATen/native/cpu/zmath.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/Load.h>
#include <c10/util/TypeCast.h>
#include <c10/util/copysign.h>
#include <c10/util/irange.h>

#include "cpu_kernels.h"
#include "nonzeros.h"
#include "philox.h"
#include "prefault.h"
