// OpenBLAS picks its GEMM kernels once, when it loads, from the CPU model. A
// model newer than the library (Debian 12's OpenBLAS 0.3.21 predates Emerald
// Rapids Xeons) gets the generic SSE3 "Prescott" kernels, which made training
// 3x slower on such a machine. The choice can only be overridden through
// OPENBLAS_CORETYPE before the library loads, so the CLI re-executes itself
// with it set when it sees that fallback on a CPU that has AVX2 or better.
#pragma once
#include <string>

namespace tinygpt::cpu {

// The OPENBLAS_CORETYPE to use instead of the kernels OpenBLAS `picked`, given
// what the CPU supports; "" to keep the pick.
std::string BlasCoreOverride(const std::string& picked, bool avx512_bf16, bool avx512, bool avx2_fma);

// If OPENBLAS_CORETYPE is unset and BlasCoreOverride asks for another core,
// sets it and re-executes this program with the same arguments (once; on
// failure it carries on with the kernels it has).
void ReexecWithBetterBlasKernels(char** argv);

}  // namespace tinygpt::cpu
