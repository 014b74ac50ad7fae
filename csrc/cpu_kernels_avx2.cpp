// The kernels of csrc/vec_kernels.h for AVX2 + FMA, the instruction set of ATen's AVX2
// CPU capability; see csrc/cpu_kernels.h.
#include "vec_prelude.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")
// GCC's target pragma does not define the feature macros that <sleef.h> and at::vec test.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include <ATen/cpu/vec/vec.h>
#define VSC_KERNELS_NAME "avx2"
#define VSC_KERNELS_GETTER kernels_avx2
#include "vec_kernels.h"
#pragma GCC pop_options
#else
namespace vsc {
namespace cpu {
const Kernels* kernels_avx2() { return nullptr; }
}  // namespace cpu
}  // namespace vsc
#endif
