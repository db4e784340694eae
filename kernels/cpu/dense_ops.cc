// Row-wise and GEMM ops of the CPU backend. Weight-gradient GEMMs go through
// OpenBLAS, the others through linear_rows.cc's packed kernel; the row loops
// are threaded with OpenMP.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vec_math.h"

namespace tinygpt::cpu {

namespace {

// One thread pool: OpenBLAS runs single-threaded inside our OpenMP regions,
// each thread taking a slice of the GEMM. Two pools (OpenMP's and OpenBLAS'
// own) spinning on the same cores cost more than they gave.
const bool kBlasSingleThreaded = (openblas_set_num_threads(1), true);

// Splits [0, n) into one contiguous slice per OpenMP thread.
// `work` (scalar operations) decides whether the team is woken at all.
template <class Fn>
void ParallelSlices(int n, long work, Fn fn) {
  if (work < kMinParallelWork) {
    fn(0, n);
    return;
  }
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int per = (n + nt - 1) / nt, begin = std::min(n, id * per), end = std::min(n, begin + per);
    if (begin < end) fn(begin, end);
  }
}

// The weight w [out, in] packed for LinearForwardRowInvariant: as is (y =
// x·w^T) or transposed (dx = dy·w). One buffer per thread, valid until the
// next call: every caller packs, then runs its products, then returns.
const float* PackForThisCall(const float* w, int in, int out, bool transposed) {
  static thread_local std::vector<float> packed;
  packed.resize(static_cast<size_t>(out) * in);
  if (transposed)
    PackLinearWeightTransposed(w, packed.data(), in, out);
  else
    PackLinearWeight(w, packed.data(), in, out);
  return packed.data();
}

// Rows per block of the fused ops below: 120 per thread, so that the block
// of their wide intermediate (120 rows of 2F = 1024 floats, ~0.5 MB) is still
// in the cores' caches when its second op reads it.
int FusedRowBlock(long work) { return 120 * (work >= kMinParallelWork ? omp_get_max_threads() : 1); }

}  // namespace

// The products with the weight on the right (y = x·w^T and dx = dy·w) go
// through linear_rows.cc's kernel with the weight packed per call: it reads
// x in place, where OpenBLAS would copy it into its own panels first, and it
// adds the bias on the way out (10-20% faster than cblas_sgemm on the seed's
// training shapes in isolation, packing included; a one-thread training step
// 7% faster). dw = dy^T·x, a reduction over the rows, stays with OpenBLAS.
void LinearForward(const float* x, const float* w, const float* b, float* y, int T, int in, int out) {
  if (T == 0) return;
  LinearForwardRowInvariant(x, PackForThisCall(w, in, out, false), b, y, T, in, out);
}

void LinearBackward(const float* dy, const float* x, const float* w, float* dx, float* dw, float* db, int T, int in, int out) {
  (void)kBlasSingleThreaded;
  if (T == 0) return;
  if (dx) LinearForwardRowInvariant(dy, PackForThisCall(w, in, out, true), nullptr, dx, T, out, in);
  static thread_local std::vector<float> ones;
  if (static_cast<int>(ones.size()) < T) ones.assign(T, 1.0f);
  const float* one = ones.data();
  // dw += dy^T · x and db += dy^T · 1 reduce over the T rows: each thread
  // takes a slice of rows; thread 0 accumulates into dw/db, the others write
  // (beta 0, so nothing needs zeroing) their own partial sums, which are then
  // added in thread order: deterministic for a given thread count.
  const long work = static_cast<long>(T) * in * out;
  const int nt = work < kMinParallelWork ? 1 : omp_get_max_threads();
  const size_t part_size = static_cast<size_t>(out) * in + out;
  static thread_local std::vector<float> partial;
  static thread_local std::vector<char> wrote_buf;
  partial.resize(static_cast<size_t>(nt - 1) * part_size);
  wrote_buf.assign(nt, 0);
  // Pointers, not the thread_local vectors: the worker threads have their own.
  float* part = partial.data();
  char* wrote = wrote_buf.data();
  ParallelSlices(T, work, [&](int t0, int t1) {
    const int id = omp_in_parallel() ? omp_get_thread_num() : 0;
    float* w_acc = id == 0 ? dw : part + static_cast<size_t>(id - 1) * part_size;
    float* b_acc = id == 0 ? db : (db ? w_acc + static_cast<size_t>(out) * in : nullptr);
    const float beta = id == 0 ? 1.0f : 0.0f;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, t1 - t0, 1.0f, dy + static_cast<long>(t0) * out, out,
                x + static_cast<long>(t0) * in, in, beta, w_acc, in);
    if (b_acc) cblas_sgemv(CblasRowMajor, CblasTrans, t1 - t0, out, 1.0f, dy + static_cast<long>(t0) * out, out, one, 1, beta, b_acc, 1);
    wrote[id] = 1;
  });
  if (nt == 1) return;
  const long w_elems = static_cast<long>(out) * in;
#pragma omp parallel for schedule(static)
  for (long i = 0; i < w_elems + (db ? out : 0); ++i) {
    float* acc = i < w_elems ? dw + i : db + (i - w_elems);
    float s = *acc;
    for (int id = 1; id < nt; ++id)
      if (wrote[id]) s += part[static_cast<size_t>(id - 1) * part_size + i];
    *acc = s;
  }
}

void LayerNormForward(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd, int T, int C, float eps) {
#pragma omp parallel for schedule(static) if (static_cast<long>(T) * C >= kMinParallelWork)
  for (int t = 0; t < T; ++t) {
    const float* xr = x + static_cast<long>(t) * C;
    float* yr = y + static_cast<long>(t) * C;
    // `omp simd` lets the sums run in 8 lanes (a plain float reduction may
    // not be reordered, and its add latency made LayerNorm 3% of a step).
    float m = 0.f;
#pragma omp simd reduction(+ : m)
    for (int i = 0; i < C; ++i) m += xr[i];
    m /= C;
    float var = 0.f;
#pragma omp simd reduction(+ : var)
    for (int i = 0; i < C; ++i) var += (xr[i] - m) * (xr[i] - m);
    const float rs = 1.0f / std::sqrt(var / C + eps);
#pragma omp simd
    for (int i = 0; i < C; ++i) yr[i] = (xr[i] - m) * rs * w[i] + b[i];
    if (mean) mean[t] = m;
    if (rstd) rstd[t] = rs;
  }
}

void LayerNormBackward(const float* dy, const float* x, const float* w, const float* mean, const float* rstd,
                       float* dx, float* dw, float* db, int T, int C) {
  // dx per row is independent; dw/db reduce over rows: each thread sums its
  // rows into its own partial, and the partials are added in thread order
  // (race-free, deterministic for a given thread count, one pass over x, dy).
  const bool parallel = static_cast<long>(T) * C >= kMinParallelWork;
  const int nt = parallel ? omp_get_max_threads() : 1;
  std::vector<float> partial(static_cast<size_t>(nt) * 2 * C, 0.f);
#pragma omp parallel if (parallel)
  {
    float* pw = partial.data() + static_cast<size_t>(omp_get_thread_num()) * 2 * C;
    float* pb = pw + C;
#pragma omp for schedule(static)
    for (int t = 0; t < T; ++t) {
      const float* xr = x + static_cast<long>(t) * C;
      const float* dyr = dy + static_cast<long>(t) * C;
      float* dxr = dx + static_cast<long>(t) * C;
      const float m = mean[t], rs = rstd[t];
      float dnorm_mean = 0.f, dnorm_norm_mean = 0.f;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
      for (int i = 0; i < C; ++i) {
        const float norm = (xr[i] - m) * rs, dnorm = dyr[i] * w[i];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
        pw[i] += dyr[i] * norm;
        pb[i] += dyr[i];
      }
      dnorm_mean /= C;
      dnorm_norm_mean /= C;
#pragma omp simd
      for (int i = 0; i < C; ++i) {
        const float norm = (xr[i] - m) * rs, dnorm = dyr[i] * w[i];
        dxr[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rs;
      }
    }
  }
  for (int i = 0; i < C; ++i) {
    float sw = 0.f, sb = 0.f;
    for (int id = 0; id < nt; ++id) {
      sw += partial[static_cast<size_t>(id) * 2 * C + i];
      sb += partial[static_cast<size_t>(id) * 2 * C + C + i];
    }
    dw[i] += sw;
    db[i] += sb;
  }
}

void EmbeddingForward(const int32_t* tokens, const int32_t* positions, const float* tok, const float* pos, float* out, int T, int C) {
#pragma omp parallel for schedule(static) if (static_cast<long>(T) * C >= kMinParallelWork)
  for (int t = 0; t < T; ++t) {
    float* o = out + static_cast<long>(t) * C;
    const float* te = tok + static_cast<long>(tokens[t]) * C;
    if (pos) {
      const float* pe = pos + static_cast<long>(positions[t]) * C;
      for (int i = 0; i < C; ++i) o[i] = te[i] + pe[i];
    } else {
      std::memcpy(o, te, sizeof(float) * C);
    }
  }
}

void EmbeddingBackward(const float* dout, const int32_t* tokens, const int32_t* positions, float* dtok, float* dpos, int T, int C) {
  // Scatter-add; rows can repeat, so threads split the channels, not the rows
  // (each output element is still summed in row order).
  constexpr int kChannels = 16;
  const int chunks = (C + kChannels - 1) / kChannels;
#pragma omp parallel for schedule(static) if (static_cast<long>(T) * C >= kMinParallelWork)
  for (int c = 0; c < chunks; ++c) {
    const int c0 = c * kChannels, c1 = std::min(C, c0 + kChannels);
    for (int t = 0; t < T; ++t) {
      const float* d = dout + static_cast<long>(t) * C;
      float* te = dtok + static_cast<long>(tokens[t]) * C;
      for (int i = c0; i < c1; ++i) te[i] += d[i];
      if (dpos) {
        float* pe = dpos + static_cast<long>(positions[t]) * C;
        for (int i = c0; i < c1; ++i) pe[i] += d[i];
      }
    }
  }
}

namespace {

// One 8-lane step of SwiGLU's forward / backward at element i of a row.
inline __m256 SiluGate8(__m256 a, __m256 g) {
  const __m256 e = Exp8(_mm256_sub_ps(_mm256_setzero_ps(), a));  // exp(-a)
  return _mm256_mul_ps(_mm256_div_ps(a, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), g);
}

inline void SiluGateGrad8(__m256 a, __m256 g, __m256 d, __m256* da, __m256* dg) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, Exp8(_mm256_sub_ps(_mm256_setzero_ps(), a))));
  *dg = _mm256_mul_ps(_mm256_mul_ps(d, a), sig);
  // d(silu)/da = sig · (1 + a·(1 − sig))
  *da = _mm256_mul_ps(d, _mm256_mul_ps(g, _mm256_mul_ps(sig, _mm256_fmadd_ps(a, _mm256_sub_ps(one, sig), one))));
}

}  // namespace

void SwiGLUForward(const float* h, float* out, int T, int F) {
#pragma omp parallel for schedule(static) if (static_cast<long>(T) * F * 8 >= kMinParallelWork)
  for (int t = 0; t < T; ++t) {
    const float* a = h + 2L * t * F;
    const float* g = a + F;
    float* o = out + static_cast<long>(t) * F;
    int i = 0;
    for (; i + 8 <= F; i += 8) _mm256_storeu_ps(o + i, SiluGate8(_mm256_loadu_ps(a + i), _mm256_loadu_ps(g + i)));
    if (i < F) StoreTail8(o + i, SiluGate8(LoadTail8(a + i, F - i), LoadTail8(g + i, F - i)), F - i);
  }
}

void SwiGLUBackward(const float* dout, const float* h, float* dh, int T, int F) {
#pragma omp parallel for schedule(static) if (static_cast<long>(T) * F * 8 >= kMinParallelWork)
  for (int t = 0; t < T; ++t) {
    const float* a = h + 2L * t * F;
    const float* g = a + F;
    const float* d = dout + static_cast<long>(t) * F;
    float* da = dh + 2L * t * F;
    float* dg = da + F;
    __m256 va, vg;
    int i = 0;
    for (; i + 8 <= F; i += 8) {
      SiluGateGrad8(_mm256_loadu_ps(a + i), _mm256_loadu_ps(g + i), _mm256_loadu_ps(d + i), &va, &vg);
      _mm256_storeu_ps(da + i, va);
      _mm256_storeu_ps(dg + i, vg);
    }
    if (i < F) {
      const int n = F - i;
      SiluGateGrad8(LoadTail8(a + i, n), LoadTail8(g + i, n), LoadTail8(d + i, n), &va, &vg);
      StoreTail8(da + i, va, n);
      StoreTail8(dg + i, vg, n);
    }
  }
}

void Zero(float* x, size_t n) {
#pragma omp parallel for schedule(static) if (static_cast<long>(n) >= kMinParallelWork)
  for (long i = 0; i < static_cast<long>(n); ++i) x[i] = 0.f;
}

double SumOfSquares(const float* x, size_t n) {
  // Fixed chunks summed in double, then added in chunk order: the result does
  // not depend on the thread count.
  constexpr long kChunk = 1 << 14;
  const long chunks = (static_cast<long>(n) + kChunk - 1) / kChunk;
  std::vector<double> sums(chunks);
#pragma omp parallel for schedule(static) if (static_cast<long>(n) >= kMinParallelWork)
  for (long c = 0; c < chunks; ++c) {
    double s = 0.0;
    for (long i = c * kChunk; i < std::min(static_cast<long>(n), (c + 1) * kChunk); ++i) s += static_cast<double>(x[i]) * x[i];
    sums[c] = s;
  }
  double total = 0.0;
  for (double s : sums) total += s;
  return total;
}

void Scale(float* x, size_t n, float a) {
#pragma omp parallel for schedule(static) if (static_cast<long>(n) >= kMinParallelWork)
  for (long i = 0; i < static_cast<long>(n); ++i) x[i] *= a;
}

void LinearSwiGLUForward(const float* x, const float* w, const float* b, float* h, float* out, int T, int in, int F) {
  if (T == 0) return;
  const float* packed = PackForThisCall(w, in, 2 * F, false);
  const int rows = FusedRowBlock(static_cast<long>(T) * in * F);
  for (int t0 = 0; t0 < T; t0 += rows) {
    const int n = std::min(rows, T - t0);
    float* h_block = h + 2L * t0 * F;
    LinearForwardRowInvariant(x + static_cast<long>(t0) * in, packed, b, h_block, n, in, 2 * F);
    SwiGLUForward(h_block, out + static_cast<long>(t0) * F, n, F);
  }
}

void SwiGLULinearBackwardInput(const float* dy, const float* w, const float* h, float* dh, int T, int F, int out) {
  if (T == 0) return;
  const float* packed = PackForThisCall(w, F, out, true);
  // A block of d(swiglu) rows is used while it is in cache and never written to memory whole.
  const int rows = FusedRowBlock(static_cast<long>(T) * out * F);
  static thread_local std::vector<float> dsw;
  dsw.resize(static_cast<size_t>(std::min(rows, T)) * F);
  for (int t0 = 0; t0 < T; t0 += rows) {
    const int n = std::min(rows, T - t0);
    LinearForwardRowInvariant(dy + static_cast<long>(t0) * out, packed, nullptr, dsw.data(), n, out, F);
    SwiGLUBackward(dsw.data(), h + 2L * t0 * F, dh + 2L * t0 * F, n, F);
  }
}

void AddInPlace(float* x, const float* y, size_t n) {
#pragma omp parallel for schedule(static) if (static_cast<long>(n) >= kMinParallelWork)
  for (long i = 0; i < static_cast<long>(n); ++i) x[i] += y[i];
}

float CrossEntropy(const float* logits, const int32_t* targets, float* dlogits, int T, int V, int* correct) {
  double loss = 0.0;
  int hits = 0;
#pragma omp parallel for schedule(static) if (static_cast<long>(T) * V >= kMinParallelWork) reduction(+ : loss, hits)
  for (int t = 0; t < T; ++t) {
    const float* l = logits + static_cast<long>(t) * V;
    int arg = 0;
    float mx = l[0];
    for (int i = 1; i < V; ++i)
      if (l[i] > mx) { mx = l[i]; arg = i; }
    double sum = 0.0;
    for (int i = 0; i < V; ++i) sum += std::exp(static_cast<double>(l[i] - mx));
    const double lse = mx + std::log(sum);
    loss += lse - l[targets[t]];
    hits += arg == targets[t];
    if (dlogits) {
      float* d = dlogits + static_cast<long>(t) * V;
      for (int i = 0; i < V; ++i) d[i] = static_cast<float>(std::exp(l[i] - lse) / T);
      d[targets[t]] -= 1.0f / T;
    }
  }
  if (correct) *correct = hits;
  return static_cast<float>(loss / T);
}

void AdamW(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1, float beta2, float eps,
           float weight_decay, long step) {
  const float bc1 = 1.0f - std::pow(beta1, static_cast<float>(step));
  const float bc2 = 1.0f - std::pow(beta2, static_cast<float>(step));
#pragma omp parallel for schedule(static) if (static_cast<long>(n) >= kMinParallelWork)
  for (long i = 0; i < static_cast<long>(n); ++i) {
    m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
    v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
    const float mhat = m[i] / bc1, vhat = v[i] / bc2;
    p[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + weight_decay * p[i]);
  }
}

}  // namespace tinygpt::cpu
