// The kernels of csrc/vec_kernels.h for the baseline instruction set (any compiler and
// CPU): at::vec's portable Vectorized, the scalar Philox and noise of csrc/philox.h.
// The fallback when the CPU (or ATEN_CPU_CAPABILITY) offers neither AVX2 nor AVX-512.
#include "vec_prelude.h"

#define CPU_CAPABILITY DEFAULT
#include <ATen/cpu/vec/vec.h>
#define VSC_KERNELS_NAME "default"
#define VSC_KERNELS_GETTER kernels_default
#include "vec_kernels.h"
