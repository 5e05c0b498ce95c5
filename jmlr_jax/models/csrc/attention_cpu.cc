// Causal grouped-query flash attention for XLA:CPU, as an XLA FFI custom call (jmlr_jax/models/cpu_kernel.py
// builds and registers it).
//
// Why it exists: on CPU, XLA runs the blockwise JAX kernel's small block products on its shared thread pool at
// 121-164 GFLOP/s on two cores (bench/cpu_dots.py), while PyTorch's fused SDPA gives each thread its own heads
// and query blocks. This kernel does the same: work items are (batch row, KV head, query block) in the forward
// pass and (batch row, KV head, key block) in the backward pass, spread over a small thread pool; each item runs
// single-threaded, register-blocked products that stay in cache.
//
// Semantics (equal to flash.py's and to the mask oracle on every non-padding token): key s is visible to query
// t iff s <= t (index order) and seg[s] == seg[t] != 0. Segment 0 is padding: its rows return zeros (their
// log-sum-exp is +inf) and its keys are seen by no one, so padded blocks cost nothing. A KV head's G query
// heads are stacked as rows (row r = token r / G, head r % G), which is their memory order in [B, L, H, D].
//
// fp32 only; head_dim a multiple of 16 (the products are written for 16-float vectors).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include <sched.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------------------------- vectors
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

inline v16 load(const float* p) {
  v16 x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}
inline void store(float* p, v16 x) { std::memcpy(p, &x, sizeof(x)); }
inline v16 splat(float a) { return v16{a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a}; }  // not 0 + a: no add
inline float hmax(v16 x) {
  float m = x[0];
  for (int i = 1; i < 16; ++i) m = x[i] > m ? x[i] : m;
  return m;
}
inline float hsum(v16 x) {
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += x[i];
  return s;
}

// exp(x) to ~1e-7 relative error; exactly 0 for x < -87 (masked logits are -inf). 2^n * e^(f ln2) with
// n = round(x log2 e), |f| <= 1/2, degree-7 Taylor polynomial.
inline v16 vexp(v16 x) {
  const v16 lo = splat(-87.f);
  v16 xc = x < lo ? lo : x;
  v16 t = xc * splat(1.4426950408889634f);
  v16 n = (t + splat(12582912.f)) - splat(12582912.f);  // round to nearest (|t| < 2^22)
  v16 y = (t - n) * splat(0.6931471805599453f);
  v16 p = splat(1.f / 5040);
  p = p * y + splat(1.f / 720);
  p = p * y + splat(1.f / 120);
  p = p * y + splat(1.f / 24);
  p = p * y + splat(1.f / 6);
  p = p * y + splat(0.5f);
  p = p * y + splat(1.f);
  p = p * y + splat(1.f);
  v16i e = (__builtin_convertvector(n, v16i) + 127) << 23;
  v16 r = p * (v16)e;  // a vector cast reinterprets the bits (no aliasing through a reference)
  return x < lo ? v16{} : r;
}

// ---------------------------------------------------------------------------------------------- products
// C[M x N] (+)= A[M x Kd] B[Kd x N]. A(m, k) = A[m * a_rs + k * a_cs] (any strides, so transposes are free);
// B and C row-major with leading dims ldb / ldc; N a multiple of 16. MR x NV register tile of 16-float vectors.
template <int MR, int NV>
inline void tile(int Kd, const float* A, long a_rs, long a_cs, const float* B, long ldb, float* C, long ldc,
                 bool accumulate) {
  v16 c[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) c[m][v] = accumulate ? load(C + m * ldc + 16 * v) : v16{};
  for (int k = 0; k < Kd; ++k) {
    v16 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load(B + k * ldb + 16 * v);
    for (int m = 0; m < MR; ++m) {
      v16 a = splat(A[m * a_rs + k * a_cs]);
      for (int v = 0; v < NV; ++v) c[m][v] += a * b[v];
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) store(C + m * ldc + 16 * v, c[m][v]);
}

template <int NV>
inline void rows(int M, int Kd, const float* A, long a_rs, long a_cs, const float* B, long ldb, float* C, long ldc,
                 bool accumulate) {
  constexpr int MR = NV >= 4 ? 6 : 8;
  int m = 0;
  for (; m + MR <= M; m += MR) tile<MR, NV>(Kd, A + m * a_rs, a_rs, a_cs, B, ldb, C + m * ldc, ldc, accumulate);
  for (; m < M; ++m) tile<1, NV>(Kd, A + m * a_rs, a_rs, a_cs, B, ldb, C + m * ldc, ldc, accumulate);
}

void gemm(int M, int N, int Kd, const float* A, long a_rs, long a_cs, const float* B, long ldb, float* C, long ldc,
          bool accumulate) {
  int n = 0;
  for (; n + 64 <= N; n += 64) rows<4>(M, Kd, A, a_rs, a_cs, B + n, ldb, C + n, ldc, accumulate);
  for (; n + 16 <= N; n += 16) rows<1>(M, Kd, A, a_rs, a_cs, B + n, ldb, C + n, ldc, accumulate);
}

// ---------------------------------------------------------------------------------------------- threads
// A fixed pool; the calling thread works too. Calls that find the pool busy (XLA running two attention ops at
// once) run on the caller alone rather than wait.
class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool();  // never destroyed: workers may outlive static destruction order
    return *pool;
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // fn(item, worker) for item in [0, n); worker in [0, size()) identifies per-thread scratch.
  void Run(long n, const std::function<void(long, int)>& fn) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock() || workers_.empty() || n <= 1) {
      for (long i = 0; i < n; ++i) fn(i, 0);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      pending_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    cv_.notify_all();
    Work(0);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return pending_ == 0; });
    fn_ = nullptr;
  }

 private:
  Pool() {
    int n = 0;
    if (const char* env = std::getenv("JMLR_CPU_ATTENTION_THREADS")) n = std::atoi(env);
    if (n <= 0) {
      cpu_set_t set;
      n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
    }
    for (int w = 1; w < n; ++w) workers_.emplace_back([this, w] { Loop(w); });
    for (auto& t : workers_) t.detach();
  }
  void Work(int worker) {
    for (long i; (i = next_.fetch_add(1)) < n_;) (*fn_)(i, worker);
  }
  void Loop(int worker) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
      }
      Work(worker);
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(long, int)>* fn_ = nullptr;
  long n_ = 0;
  std::atomic<long> next_{0};
  int pending_ = 0;
  uint64_t generation_ = 0;
};

// ---------------------------------------------------------------------------------------------- problem
struct Shape {
  long B, L, H, K, D, G;
  long bq, bk;  // query / key block, in tokens
  long nq() const { return (L + bq - 1) / bq; }
  long nk() const { return (L + bk - 1) / bk; }
};

// Segment range of a token block, ignoring padding (seg 0): lets whole blocks be skipped or left unmasked.
struct BlockSegs {
  int32_t lo, hi;  // over non-zero ids; lo > hi when the block is all padding
  long nonzero;    // tokens with a non-zero id
  bool empty() const { return lo > hi; }
  bool uniform(long len) const { return nonzero == len && lo == hi; }  // one segment, no padding
};

std::vector<BlockSegs> block_segs(const int32_t* seg, const Shape& s, long block) {
  long n = (s.L + block - 1) / block;
  std::vector<BlockSegs> out(s.B * n, BlockSegs{std::numeric_limits<int32_t>::max(), 0, 0});
  for (long b = 0; b < s.B; ++b)
    for (long t = 0; t < s.L; ++t) {
      int32_t id = seg[b * s.L + t];
      if (id == 0) continue;
      BlockSegs& bs = out[b * n + t / block];
      bs.lo = std::min(bs.lo, id);
      bs.hi = std::max(bs.hi, id);
      ++bs.nonzero;
    }
  return out;
}

// Can any query token in [q0, q0 + nqt) see a key in [k0, ...)?
inline bool any_visible(long q0, long nqt, BlockSegs qs, long k0, BlockSegs ks) {
  return !qs.empty() && !ks.empty() && k0 <= q0 + nqt - 1 && ks.lo <= qs.hi && qs.lo <= ks.hi;
}

// Columns of a key block worth computing for queries [q0, q0 + nqt): causally visible ones, rounded up to the
// 16-float vector (the rest of the diagonal block is masked anyway; apply_mask fills it with -inf).
inline long visible_cols(long q0, long nqt, long k0, long nkt) {
  return (std::min(nkt, q0 + nqt - k0) + 15) / 16 * 16;
}

// Set the logits of invisible (query row, key) pairs to -inf. When both blocks are one segment without padding
// only the causal edge is masked (a fill per row); otherwise every pair is checked.
void apply_mask(float* S, long R, long bk, const Shape& s, const int32_t* seg_b, long q0, long nqt, BlockSegs qs,
                long k0, long nkt, BlockSegs ks) {
  bool simple = qs.uniform(nqt) && ks.uniform(nkt) && qs.lo == ks.lo;
  if (simple && k0 + nkt - 1 <= q0 && nkt == bk) return;  // fully visible
  for (long r = 0; r < R; ++r) {
    long t = q0 + r / s.G;
    float* row = S + r * bk;
    long hi = std::min(nkt, t - k0 + 1);  // causal: columns [0, hi) may be visible
    if (hi < 0) hi = 0;
    std::fill(row + hi, row + bk, -kInf);
    if (simple) continue;
    int32_t id = seg_b[t];
    for (long c = 0; c < hi; ++c)
      if (id == 0 || seg_b[k0 + c] != id) row[c] = -kInf;
  }
}

// Packed operands, one per (batch row, KV head) "unit" u = b * K + h, laid out so that every block a work item
// reads is contiguous (no cache-set conflicts from long strides, no per-item copies):
//   kt [units, nk, D, bk]  key blocks transposed (zero-padded past L);  kr / vr [units, nk * bk, D]
//   rows [units, L, G, D]  a KV head's query rows (token-major, heads within), optionally scaled
void pack_keys(const float* x, const Shape& s, long u, float* kt, float* kr) {
  const long b = u / s.K, h = u % s.K, nk = s.nk(), D = s.D;
  for (long j = 0; j < nk; ++j)
    for (long c = 0; c < s.bk; ++c) {
      long t = j * s.bk + c;
      const float* src = x + ((b * s.L + t) * s.K + h) * D;
      for (long d = 0; d < D; ++d) {
        float val = t < s.L ? src[d] : 0.f;
        if (kt) kt[((u * nk + j) * D + d) * s.bk + c] = val;
        if (kr) kr[(u * nk * s.bk + t) * D + d] = val;
      }
    }
}

void pack_rows(const float* x, const Shape& s, long u, long width, float scale, float* dst) {
  const long b = u / s.K, h = u % s.K;
  for (long t = 0; t < s.L; ++t) {
    const float* src = x + ((b * s.L + t) * s.H + h * s.G) * width;
    float* out = dst + (u * s.L + t) * s.G * width;
    for (long e = 0; e < s.G * width; ++e) out[e] = src[e] * scale;
  }
}

// delta[row] = dO[row] . O[row] (the softmax backward's row term), packed like pack_rows(width 1). Here rather
// than in XLA, whose reduce fusion over head_dim took ~10 ms a layer at 2048 tokens (a few microseconds' work).
void pack_row_dots(const float* x, const float* y, const Shape& s, long u, float* dst) {
  const long b = u / s.K, h = u % s.K, D = s.D;
  for (long t = 0; t < s.L; ++t)
    for (long g = 0; g < s.G; ++g) {
      const long at = ((b * s.L + t) * s.H + h * s.G + g) * D;
      v16 acc{};
      for (long d = 0; d < D; d += 16) acc += load(x + at + d) * load(y + at + d);
      dst[(u * s.L + t) * s.G + g] = hsum(acc);
    }
}

void unpack_rows(const float* src, const Shape& s, long u, long width, float* x) {
  const long b = u / s.K, h = u % s.K;
  for (long t = 0; t < s.L; ++t)
    std::memcpy(x + ((b * s.L + t) * s.H + h * s.G) * width, src + (u * s.L + t) * s.G * width,
                sizeof(float) * s.G * width);
}

// Per-thread scratch, grown on demand.
struct Scratch {
  std::vector<float> a, b;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}
inline float* grow(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// ---------------------------------------------------------------------------------------------- forward
void forward(const float* q, const float* k, const float* v, const int32_t* seg, float* out, float* lse,
             const Shape& s, float scale) {
  const long nq = s.nq(), nk = s.nk(), bk = s.bk, D = s.D, units = s.B * s.K, Lk = nk * bk;
  auto qsegs = block_segs(seg, s, s.bq), ksegs = block_segs(seg, s, bk);
  std::vector<float> kt(units * Lk * D), vr(units * Lk * D), qp(units * s.L * s.G * D);
  std::vector<float> op(units * s.L * s.G * D), lp(units * s.L * s.G);
  Pool& pool = Pool::Get();
  pool.Run(units, [&](long u, int) {
    pack_keys(k, s, u, kt.data(), nullptr);
    pack_keys(v, s, u, nullptr, vr.data());
    pack_rows(q, s, u, D, scale, qp.data());
  });
  pool.Run(nq * units, [&](long item, int) {
    long i = nq - 1 - item / units, u = item % units, b = u / s.K;  // most key blocks (causal) first
    long q0 = i * s.bq, nqt = std::min(s.bq, s.L - q0), R = s.G * nqt;
    const int32_t* seg_b = seg + b * s.L;
    BlockSegs qs = qsegs[b * nq + i];
    const float* Q = qp.data() + (u * s.L + q0) * s.G * D;
    float* O = op.data() + (u * s.L + q0) * s.G * D;
    float* lrow = lp.data() + (u * s.L + q0) * s.G;
    Scratch& sc = scratch();
    float* S = grow(sc.a, R * bk);
    float* m = grow(sc.b, 2 * R);
    float* l = m + R;
    std::fill(O, O + R * D, 0.f);
    std::fill(m, m + R, -kInf);
    std::fill(l, l + R, 0.f);
    for (long j = 0; j < nk && j * bk <= q0 + nqt - 1; ++j) {
      long k0 = j * bk, nkt = std::min(bk, s.L - k0);
      BlockSegs ks = ksegs[b * nk + j];
      if (!any_visible(q0, nqt, qs, k0, ks)) continue;
      const long nc = visible_cols(q0, nqt, k0, nkt);
      gemm(R, nc, D, Q, D, 1, kt.data() + (u * nk + j) * D * bk, bk, S, bk, false);
      apply_mask(S, R, bk, s, seg_b, q0, nqt, qs, k0, nkt, ks);
      for (long r = 0; r < R; ++r) {
        float* row = S + r * bk;
        v16 mx = splat(-kInf);
        for (long c = 0; c < nc; c += 16) {
          v16 x = load(row + c);
          mx = x > mx ? x : mx;
        }
        float m_new = std::max(m[r], hmax(mx));
        if (m_new == -kInf) {  // nothing visible yet in this row
          std::fill(row, row + nc, 0.f);
          continue;
        }
        float corr = std::exp(m[r] - m_new);
        v16 sum{};
        v16 mv = splat(m_new);
        for (long c = 0; c < nc; c += 16) {
          v16 p = vexp(load(row + c) - mv);
          store(row + c, p);
          sum += p;
        }
        l[r] = l[r] * corr + hsum(sum);
        m[r] = m_new;
        if (corr != 1.f)
          for (long d = 0; d < D; ++d) O[r * D + d] *= corr;
      }
      gemm(R, D, nc, S, bk, 1, vr.data() + (u * Lk + k0) * D, D, O, D, true);
    }
    for (long r = 0; r < R; ++r) {
      float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
      for (long d = 0; d < D; ++d) O[r * D + d] *= inv;
      lrow[r] = l[r] > 0.f ? m[r] + std::log(l[r]) : kInf;
    }
  });
  pool.Run(units, [&](long u, int) {
    unpack_rows(op.data(), s, u, D, out);
    unpack_rows(lp.data(), s, u, 1, lse);
  });
}

// ---------------------------------------------------------------------------------------------- backward
void backward(const float* q, const float* k, const float* v, const int32_t* seg, const float* lse,
              const float* out, const float* dout, float* dq, float* dk, float* dv, const Shape& s, float scale) {
  const long nq = s.nq(), nk = s.nk(), bk = s.bk, D = s.D, units = s.B * s.K, Lk = nk * bk;
  const long rows = units * s.L * s.G;
  auto qsegs = block_segs(seg, s, s.bq), ksegs = block_segs(seg, s, bk);
  Pool& pool = Pool::Get();
  std::vector<float> kt(units * Lk * D), vt(units * Lk * D), kr(units * Lk * D);
  std::vector<float> qp(rows * D), dop(rows * D), lp(rows), dp(rows);
  pool.Run(units, [&](long u, int) {
    pack_keys(k, s, u, kt.data(), kr.data());
    pack_keys(v, s, u, vt.data(), nullptr);
    pack_rows(q, s, u, D, scale, qp.data());
    pack_rows(dout, s, u, D, 1.f, dop.data());
    pack_rows(lse, s, u, 1, 1.f, lp.data());
    pack_row_dots(dout, out, s, u, dp.data());
  });
  auto backward_item = [&](long item, float* dQ) {
    long j = item / units, u = item % units, b = u / s.K;
    long k0 = j * bk, nkt = std::min(bk, s.L - k0);
    const int32_t* seg_b = seg + b * s.L;
    BlockSegs ks = ksegs[b * nk + j];
    Scratch& sc = scratch();
    const long Rmax = s.G * s.bq;
    float* dK = grow(sc.a, 2 * bk * D);
    float* dV = dK + bk * D;
    float* P = grow(sc.b, 2 * Rmax * bk);
    float* dS = P + Rmax * bk;
    std::fill(dK, dK + 2 * bk * D, 0.f);
    const float* Kt = kt.data() + (u * nk + j) * D * bk;
    const float* Vt = vt.data() + (u * nk + j) * D * bk;
    const float* Kr = kr.data() + (u * Lk + k0) * D;
    for (long i = ks.empty() ? nq : k0 / s.bq; i < nq; ++i) {
      long q0 = i * s.bq, nqt = std::min(s.bq, s.L - q0), R = s.G * nqt;
      BlockSegs qs = qsegs[b * nq + i];
      if (!any_visible(q0, nqt, qs, k0, ks)) continue;
      const long row0 = (u * s.L + q0) * s.G;
      const float *Q = qp.data() + row0 * D, *dO = dop.data() + row0 * D;
      const float *lse_i = lp.data() + row0, *delta_i = dp.data() + row0;
      const long nc = visible_cols(q0, nqt, k0, nkt);                 // key rows [nc, bk) get nothing here
      gemm(R, nc, D, Q, D, 1, Kt, bk, P, bk, false);                  // S = (scale q) K^T
      apply_mask(P, R, bk, s, seg_b, q0, nqt, qs, k0, nkt, ks);
      for (long r = 0; r < R; ++r) {                                   // P = exp(S - lse)
        v16 lv = splat(lse_i[r]);
        for (long c = 0; c < nc; c += 16) store(P + r * bk + c, vexp(load(P + r * bk + c) - lv));
      }
      gemm(nc, D, R, P, 1, bk, dO, D, dV, D, true);                   // dV += P^T dO
      gemm(R, nc, D, dO, D, 1, Vt, bk, dS, bk, false);                // dP = dO V^T
      for (long r = 0; r < R; ++r) {                                   // dS = P (dP - delta)
        v16 dl = splat(delta_i[r]);
        for (long c = 0; c < nc; c += 16)
          store(dS + r * bk + c, load(P + r * bk + c) * (load(dS + r * bk + c) - dl));
      }
      gemm(nc, D, R, dS, 1, bk, Q, D, dK, D, true);                   // dK += dS^T (scale q)
      gemm(R, D, nc, dS, bk, 1, Kr, D, dQ + row0 * D, D, true);       // dQ += dS K  (scaled at the end)
    }
    const long h = u % s.K;
    for (long c = 0; c < nkt; ++c) {
      std::memcpy(dk + ((b * s.L + k0 + c) * s.K + h) * D, dK + c * D, sizeof(float) * D);
      std::memcpy(dv + ((b * s.L + k0 + c) * s.K + h) * D, dV + c * D, sizeof(float) * D);
    }
  };
  // dQ gets contributions from every key block. Deterministic at a fixed thread count: items are dealt to
  // `lanes` round-robin (item order: key block, then unit), each lane adds into its own packed accumulator in
  // item order, and the accumulators are summed in lane order. Dealing early (costly) and late (cheap) key
  // blocks alike to every lane keeps the causal work balanced without dynamic scheduling.
  const long items = nk * units, lanes = std::min<long>(pool.size(), items);
  std::vector<std::vector<float>> dq_acc(lanes);
  pool.Run(lanes, [&](long lane, int) {
    dq_acc[lane].assign(rows * D, 0.f);
    for (long item = lane; item < items; item += lanes) backward_item(item, dq_acc[lane].data());
  });
  // dq = scale * sum of the accumulators, unpacked to [B, L, H, D].
  std::vector<float*> parts;
  for (auto& a : dq_acc) parts.push_back(a.data());
  pool.Run(units, [&](long u, int) {
    const long b = u / s.K, h = u % s.K, w = s.G * D;
    for (long t = 0; t < s.L; ++t) {
      float* dst = dq + ((b * s.L + t) * s.H + h * s.G) * D;
      const long at = (u * s.L + t) * w;
      for (long e = 0; e < w; ++e) {
        float acc = 0.f;
        for (float* p : parts) acc += p[at + e];
        dst[e] = acc * scale;
      }
    }
  });
}

ffi::Error check(const Shape& s) {
  if (s.K <= 0 || s.H % s.K) return ffi::Error::InvalidArgument("num_heads must be a multiple of num_kv_heads");
  if (s.D % 16) return ffi::Error::InvalidArgument("head_dim must be a multiple of 16");
  if (s.bq <= 0 || s.bk <= 0 || s.bk % 16)
    return ffi::Error::InvalidArgument("block_q must be positive and block_k a positive multiple of 16");
  return ffi::Error::Success();
}

Shape shape_of(ffi::AnyBuffer::Dimensions qd, ffi::AnyBuffer::Dimensions kd, int64_t bq, int64_t bk) {
  Shape s{qd[0], qd[1], qd[2], kd[2], qd[3], 0, bq, bk};
  s.G = s.K > 0 ? s.H / s.K : 0;
  return s;
}

ffi::Error FwdImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::Buffer<ffi::S32> seg, ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse,
                   float scale, int64_t block_q, int64_t block_k) {
  Shape s = shape_of(q.dimensions(), k.dimensions(), block_q, block_k);
  if (auto err = check(s); err.failure()) return err;
  forward(q.typed_data(), k.typed_data(), v.typed_data(), seg.typed_data(), out->typed_data(), lse->typed_data(),
          s, scale);
  return ffi::Error::Success();
}

ffi::Error BwdImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::Buffer<ffi::S32> seg, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> out,
                   ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                   ffi::ResultBuffer<ffi::F32> dv, float scale, int64_t block_q, int64_t block_k) {
  Shape s = shape_of(q.dimensions(), k.dimensions(), block_q, block_k);
  if (auto err = check(s); err.failure()) return err;
  backward(q.typed_data(), k.typed_data(), v.typed_data(), seg.typed_data(), lse.typed_data(), out.typed_data(),
           dout.typed_data(), dq->typed_data(), dk->typed_data(), dv->typed_data(), s, scale);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JmlrAttentionFwd, FwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("block_q")
                                  .Attr<int64_t>("block_k"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JmlrAttentionBwd, BwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("block_q")
                                  .Attr<int64_t>("block_k"));
