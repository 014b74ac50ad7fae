// Chooses the build of the vectorized kernels (csrc/cpu_kernels.h) once per process.
#include "cpu_kernels.h"

#include <cstdlib>
#include <string>

#include <ATen/Version.h>

namespace vsc {
namespace cpu {

const Kernels& kernels() {
  static const Kernels* const table = [] {
    // ATen's own choice (cpuinfo, capped by $ATEN_CPU_CAPABILITY): the same SLEEF
    // functions as torch's CPU ops on this machine.
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512" && kernels_avx512() != nullptr) return kernels_avx512();
    if ((capability == "AVX512" || capability == "AVX2") && kernels_avx2() != nullptr) {
      return kernels_avx2();
    }
    return kernels_default();
  }();
  return *table;
}

}  // namespace cpu
}  // namespace vsc
