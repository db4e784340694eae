// Internals of the row-invariant linear kernel (linear_rows.cc) that tests
// and benchmarks reach: which vector ISA its tiles run on. Both give the same
// bits; the default is the widest the CPU supports.
#pragma once

namespace tinygpt::cpu {

enum class RowsIsa { kAvx2, kAvx512 };

bool RowsIsaSupported(RowsIsa isa);
// Selects the tiles' ISA (it must be supported); not thread-safe against
// running kernels, meant for tests and benchmarks.
void SetRowsIsa(RowsIsa isa);
RowsIsa CurrentRowsIsa();
const char* RowsIsaName(RowsIsa isa);  // "AVX2" or "AVX-512"

namespace linear_rows {
// Rows [t0, t1) × full panels [p0, p1) on AVX-512 (linear_rows_avx512.cc).
void BlockAvx512(const float* x, const float* w, const float* b, float* y, int t0, int t1, int in, int out, int p0,
                 int p1);
}  // namespace linear_rows

}  // namespace tinygpt::cpu
