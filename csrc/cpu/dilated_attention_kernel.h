// D-Former (Wu et al., arXiv 2201.00462) 3D group attention CPU kernel bodies: the local scope
// (non-overlapping windows) and the global dilated scope (tokens a fixed interval apart), forward
// and backward.
//
// Compiled once per instruction set from csrc/cpu/isa_kernels.cpp.in; no torch header
// here. One task is one (batch, group, head). It gathers the group's tokens straight from the
// strided q/k/v (no padded or permuted copy of the volume exists), then runs blocked attention with
// an online softmax over key blocks on small register-blocked products (gemm.h). Every token
// belongs to exactly one group, so each task writes its own rows of out/dq/dk/dv: no atomics, and
// results are identical run to run.
//
// Compiled with AVX-512 BF16 (the avx512bf16 instruction set, __AVX512BF16__), bf16 storage computes the two
// products whose operands are both bf16 inputs, S = Q K^T and dP = dO V^T, with vdpbf16ps on the raw bf16 pairs
// (exact products, float32 sums; S is scaled afterwards); the products with P or dS stay float32.
#pragma once

#include <initializer_list>

#include "medkernels/cpu/dilated_attention.h"
#include "medkernels/cpu/gemm.h"
#include "medkernels/cpu/simd.h"

namespace medkernels::cpu::MK_ISA {
namespace {

inline int64_t da_tmax(const DaParams& p) { return p.group[0] * p.group[1] * p.group[2]; }

// Per-thread buffers. tpad = tmax rounded up to whole vectors; K^T and V^T have leading dim tpad.
template <class Acc>
struct DaBufs {
  int64_t *c0, *c1, *c2;  // token coordinates
  int64_t *n0, *n1, *n2;  // the next task's token coordinates (to prefetch its rows)
  Acc *q, *kt, *v;        // scaled q rows (tpad x dpad), k^T (dpad x tpad), v rows (tpad x dpad)
  Acc *s, *o, *m, *l;     // logits/probabilities (block_m x block_n), out block, running max and sum
  Acc *k, *vt, *dout, *lse, *drow, *dk, *dv, *ds, *dq;  // backward only
#if defined(__AVX512BF16__)
  uint32_t *qp, *ktp, *dop, *vtp;  // bf16 pairs: q and dout rows (tpad x dpad/2), k^T and v^T (dpad/2 x tpad)
#endif
  uintptr_t end;
  DaBufs(uintptr_t base, const DaParams& p, bool backward) {
    const int64_t tmax = da_tmax(p), tpad = round_up(tmax, lanes<Acc>), dp = p.dpad;
    Carver c{base};
    c0 = c.take<int64_t>(tmax);
    c1 = c.take<int64_t>(tmax);
    c2 = c.take<int64_t>(tmax);
    n0 = c.take<int64_t>(tmax);
    n1 = c.take<int64_t>(tmax);
    n2 = c.take<int64_t>(tmax);
    q = c.take<Acc>(tpad * dp);
    kt = c.take<Acc>(dp * tpad);
    v = c.take<Acc>(tpad * dp);
    s = c.take<Acc>(p.block_m * p.block_n);
    o = c.take<Acc>(p.block_m * dp);
    m = c.take<Acc>(p.block_m);
    l = c.take<Acc>(p.block_m);
    k = vt = dout = lse = drow = dk = dv = ds = dq = nullptr;
    if (backward) {
      k = c.take<Acc>(tpad * dp);
      vt = c.take<Acc>(dp * tpad);
      dout = c.take<Acc>(tpad * dp);
      lse = c.take<Acc>(tpad);
      drow = c.take<Acc>(tpad);
      dk = c.take<Acc>(tpad * dp);
      dv = c.take<Acc>(tpad * dp);
      ds = c.take<Acc>(p.block_m * p.block_n);
      dq = c.take<Acc>(p.block_m * dp);
    }
#if defined(__AVX512BF16__)
    qp = ktp = dop = vtp = nullptr;
    if (p.dtype == ScalarKind::BFloat16) {
      qp = c.take<uint32_t>(tpad * dp / 2);
      ktp = c.take<uint32_t>(tpad * dp / 2);
      if (backward) {
        dop = c.take<uint32_t>(tpad * dp / 2);
        vtp = c.take<uint32_t>(tpad * dp / 2);
      }
    }
#endif
    end = c.p;
  }
};

// The task's batch, head and tokens (coordinates into c0/c1/c2); returns the token count.
struct DaTask {
  int64_t b, h, n;
};
inline DaTask da_task(const DaParams& p, int64_t task, int64_t* c0, int64_t* c1, int64_t* c2) {
  DaTask t{};
  t.h = task % p.heads;
  const int64_t rest = task / p.heads, groups = p.ngroups[0] * p.ngroups[1] * p.ngroups[2];
  const int64_t gi = rest % groups;
  t.b = rest / groups;
  const int64_t g0 = gi / (p.ngroups[1] * p.ngroups[2]), g1 = (gi / p.ngroups[2]) % p.ngroups[1],
                g2 = gi % p.ngroups[2];
  int64_t n = 0;
  for (int64_t m0 = 0; m0 < p.group[0]; ++m0) {
    const int64_t x0 = g0 * p.grp_step[0] + m0 * p.pos_step[0];
    if (x0 >= p.size[0]) break;  // coordinates grow with m
    for (int64_t m1 = 0; m1 < p.group[1]; ++m1) {
      const int64_t x1 = g1 * p.grp_step[1] + m1 * p.pos_step[1];
      if (x1 >= p.size[1]) break;
      for (int64_t m2 = 0; m2 < p.group[2]; ++m2) {
        const int64_t x2 = g2 * p.grp_step[2] + m2 * p.pos_step[2];
        if (x2 >= p.size[2]) break;
        c0[n] = x0;
        c1[n] = x1;
        c2[n] = x2;
        ++n;
      }
    }
  }
  t.n = n;
  return t;
}

template <class S>
inline const S* at_view(const DaView& t, const DaTask& tk, int64_t x0, int64_t x1, int64_t x2) {
  return static_cast<const S*>(t.ptr) + tk.b * t.sb + x0 * t.s[0] + x1 * t.s[1] + x2 * t.s[2] + tk.h * t.sh;
}
// Row index of a token in the contiguous (batch, X0, X1, X2, heads) outputs.
inline int64_t tok_index(const DaParams& p, const DaTask& tk, int64_t x0, int64_t x1, int64_t x2) {
  return ((tk.b * p.size[0] + x0) * p.size[1] + x1) * p.size[2] + x2;
}
inline int64_t out_row(const DaParams& p, const DaTask& tk, int64_t x0, int64_t x1, int64_t x2) {
  return tok_index(p, tk, x0, x1, x2) * p.heads + tk.h;
}
// Element offset of a token's head row in an output whose tokens are tok_stride elements apart (out:
// heads * dim; dq/dk/dv: p.grad_tok_stride, separate tensors or slices of one packed gradient).
inline int64_t row_elem(const DaParams& p, const DaTask& tk, int64_t x0, int64_t x1, int64_t x2, int64_t tok_stride) {
  return tok_index(p, tk, x0, x1, x2) * tok_stride + tk.h * p.dim;
}

// Brings the rows a task will read (and, with write intent, the output rows it will write) into the
// cache while the current task computes: a group's tokens are scattered over the volume, so without
// this the gathers wait on memory one row at a time.
template <class S, class Acc>
inline void prefetch_task(const DaParams& p, int64_t task, const DaBufs<Acc>& s, std::initializer_list<DaView> reads,
                          std::initializer_list<void*> writes, int64_t write_tok_stride) {
  const DaTask tk = da_task(p, task, s.n0, s.n1, s.n2);
  const int64_t bytes = p.dim * int64_t(sizeof(S));
  for (int64_t j = 0; j < tk.n; ++j) {
    for (const DaView& t : reads) {
      const char* a = reinterpret_cast<const char*>(at_view<S>(t, tk, s.n0[j], s.n1[j], s.n2[j]));
      for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(a + o, 0, 2);
      __builtin_prefetch(a + bytes - 1, 0, 2);
    }
    const int64_t e = row_elem(p, tk, s.n0[j], s.n1[j], s.n2[j], write_tok_stride);
    for (void* w : writes) {
      char* a = static_cast<char*>(w) + e * int64_t(sizeof(S));
      for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(a + o, 1, 3);
      __builtin_prefetch(a + bytes - 1, 1, 3);
    }
  }
}

// dst[j] = src row j (n rows of `dim` storage values), zero-padded to dpad; rows n..rows_to are zeroed.
template <class S, class Acc>
inline void gather_rows(const DaParams& p, const DaView& t, const DaTask& tk, const DaBufs<Acc>& s, Acc* dst,
                        int64_t rows_to, Acc mul) {
  const int64_t dp = p.dpad;
  for (int64_t j = 0; j < tk.n; ++j) {
    Acc* row = dst + j * dp;
    load_span(at_view<S>(t, tk, s.c0[j], s.c1[j], s.c2[j]), row, p.dim);
    if (mul != Acc(1))
      for (int64_t c = 0; c < dp; ++c) row[c] *= mul;
  }
  for (int64_t i = tk.n * dp; i < rows_to * dp; ++i) dst[i] = Acc(0);
}
// dst = the transpose of the rows (dpad x tpad): dst[c * tpad + j] = row j [c], zero outside n x dim.
template <class Acc>
inline void transpose_rows(const Acc* rows, int64_t n, int64_t dp, int64_t tpad, Acc* dst) {
  for (int64_t c = 0; c < dp; ++c) {
    Acc* d = dst + c * tpad;
    for (int64_t j = 0; j < n; ++j) d[j] = rows[j * dp + c];
    for (int64_t j = n; j < tpad; ++j) d[j] = Acc(0);
  }
}

#if defined(__AVX512BF16__)
// ---- AVX-512 BF16 products (bf16 storage) ------------------------------------------------------------
template <class S>
inline constexpr bool kBf16Dot = __is_same(S, bf16);

// dst row j = the bf16 bits of src row j as dpad / 2 pairs (dim values, zero-padded); rows n..rows_to are zeroed.
template <class S, class Acc>
inline void gather_pairs(const DaParams& p, const DaView& t, const DaTask& tk, const DaBufs<Acc>& s, uint32_t* dst,
                         int64_t rows_to) {
  const int64_t dp = p.dpad;
  for (int64_t j = 0; j < tk.n; ++j) {
    uint16_t* row = reinterpret_cast<uint16_t*>(dst + j * (dp / 2));
    __builtin_memcpy(row, at_view<S>(t, tk, s.c0[j], s.c1[j], s.c2[j]), p.dim * sizeof(uint16_t));
    for (int64_t c = p.dim; c < dp; ++c) row[c] = 0;
  }
  for (int64_t i = tk.n * (dp / 2); i < rows_to * (dp / 2); ++i) dst[i] = 0;
}

// C[MR x NV*16] = scale * sum over pairs k of A pair (r, k) . B pairs [k, :] (vdpbf16ps: exact bf16 products,
// float32 sums; its two products per pair enter the sum together).
template <int MR, int NV>
inline void dot_block(int64_t K2, const uint32_t* A, int64_t lda, const uint32_t* B, int64_t ldb, float* C, int64_t ldc,
                      float scale) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K2; ++k) {
    __m512bh bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(B + k * ldb + v * 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(int(A[r * lda + k]));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], ar, bv[v]);
    }
  }
  const __m512 sv = _mm512_set1_ps(scale);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(C + r * ldc + v * 16, _mm512_mul_ps(acc[r][v], sv));
}

template <int NV>
inline void dot_rows(int64_t M, int64_t K2, const uint32_t* A, int64_t lda, const uint32_t* B, int64_t ldb, float* C,
                     int64_t ldc, float scale) {
  constexpr int MR = 6;
  int64_t i = 0;
  for (; i + MR <= M; i += MR) dot_block<MR, NV>(K2, A + i * lda, lda, B, ldb, C + i * ldc, ldc, scale);
  const uint32_t* a = A + i * lda;
  float* c = C + i * ldc;
  switch (M - i) {
    case 5: dot_block<5, NV>(K2, a, lda, B, ldb, c, ldc, scale); break;
    case 4: dot_block<4, NV>(K2, a, lda, B, ldb, c, ldc, scale); break;
    case 3: dot_block<3, NV>(K2, a, lda, B, ldb, c, ldc, scale); break;
    case 2: dot_block<2, NV>(K2, a, lda, B, ldb, c, ldc, scale); break;
    case 1: dot_block<1, NV>(K2, a, lda, B, ldb, c, ldc, scale); break;
    default: break;
  }
}

// C (M x N) = scale * A B over K2 bf16 pairs: A rows of pairs (leading dim lda), B pair rows (leading dim ldb);
// N a multiple of 16.
inline void dot_gemm(int64_t M, int64_t N, int64_t K2, const uint32_t* A, int64_t lda, const uint32_t* B, int64_t ldb,
                     float* C, int64_t ldc, float scale) {
  int64_t j = 0;
  for (; j + 32 <= N; j += 32) dot_rows<2>(M, K2, A, lda, B + j, ldb, C + j, ldc, scale);
  if (j < N) dot_rows<1>(M, K2, A, lda, B + j, ldb, C + j, ldc, scale);
}
#else
template <class S>
inline constexpr bool kBf16Dot = false;
#endif

// ---- forward --------------------------------------------------------------------------------------

template <class S, class Acc>
void fwd_tasks(const DaParams& p, int64_t task0, int64_t task1, void* scratch) {
  constexpr int W = lanes<Acc>;
  DaBufs<Acc> s(reinterpret_cast<uintptr_t>(scratch), p, false);
  const int64_t dp = p.dpad, bm = p.block_m, bn = p.block_n;
  for (int64_t task = task0; task < task1; ++task) {
    const DaTask tk = da_task(p, task, s.c0, s.c1, s.c2);
    const int64_t T = tk.n, tp = round_up(T, W), ls = tp < bn ? tp : bn;  // ls: leading dim of the S blocks
#if defined(__AVX512BF16__)
    if constexpr (kBf16Dot<S>) {
      gather_pairs<S>(p, p.q, tk, s, s.qp, T);
      uint32_t* kp = reinterpret_cast<uint32_t*>(s.v);  // k pair rows, staged in v's buffer
      gather_pairs<S>(p, p.k, tk, s, kp, T);
      transpose_rows(kp, T, dp / 2, tp, s.ktp);
    } else
#endif
    {
      gather_rows<S>(p, p.q, tk, s, s.q, T, Acc(p.scale));
      gather_rows<S>(p, p.k, tk, s, s.v, T, Acc(1));  // k rows, staged in v's buffer
      transpose_rows(s.v, T, dp, tp, s.kt);
    }
    gather_rows<S>(p, p.v, tk, s, s.v, tp, Acc(1));
    if (task + 1 < task1) prefetch_task<S>(p, task + 1, s, {p.q, p.k, p.v}, {p.out}, p.heads * p.dim);
    for (int64_t i0 = 0; i0 < T; i0 += bm) {
      const int64_t mb = T - i0 < bm ? T - i0 : bm;
      for (int64_t j0 = 0; j0 < tp; j0 += bn) {
        const int64_t nb = tp - j0 < bn ? tp - j0 : bn, valid = T - j0 < nb ? T - j0 : nb;
#if defined(__AVX512BF16__)
        if constexpr (kBf16Dot<S>)
          dot_gemm(mb, nb, dp / 2, s.qp + i0 * (dp / 2), dp / 2, s.ktp + j0, tp, s.s, ls, float(p.scale));
        else
#endif
          gemm<false>(mb, nb, dp, s.q + i0 * dp, dp, 1, s.kt + j0, tp, s.s, ls);
        for (int64_t i = 0; i < mb; ++i) {
          Acc* row = s.s + i * ls;
          const Acc mx = row_max(row, valid);
          const Acc m_new = j0 == 0 || mx > s.m[i] ? mx : s.m[i];
          const Acc sum = exp_shift(row, valid, m_new);
          for (int64_t j = valid; j < nb; ++j) row[j] = Acc(0);
          if (j0 == 0) {
            s.l[i] = sum;
          } else {  // rescale what the earlier key blocks accumulated
            const Acc alpha = sexp(s.m[i] - m_new);
            s.l[i] = s.l[i] * alpha + sum;
            const vec<Acc> av = vsplat(alpha);
            for (int64_t c = 0; c < dp; c += W) vstore(s.o + i * dp + c, vload(s.o + i * dp + c) * av);
          }
          s.m[i] = m_new;
        }
        if (j0 == 0)
          gemm<false>(mb, dp, nb, s.s, ls, 1, s.v, dp, s.o, dp);
        else
          gemm<true>(mb, dp, nb, s.s, ls, 1, s.v + j0 * dp, dp, s.o, dp);
      }
      for (int64_t i = 0; i < mb; ++i) {
        const int64_t t = i0 + i, r = out_row(p, tk, s.c0[t], s.c1[t], s.c2[t]);
        const Acc inv = Acc(1) / s.l[i];
        Acc* row = s.o + i * dp;
        for (int64_t c = 0; c < p.dim; ++c) row[c] *= inv;
        store_span(static_cast<S*>(p.out) + r * p.dim, row, p.dim);
        static_cast<Acc*>(p.lse)[r] = row_lse(s.m[i], s.l[i]);
      }
    }
  }
}

// ---- backward -------------------------------------------------------------------------------------
// With P = exp(S - lse) recomputed per block and D_i = <dO_i, O_i> - dlse_i:
//   dV += P^T dO,  dS = P * (dO V^T - D),  dQ = scale * dS K,  dK += dS^T (scale * Q).

template <class S, class Acc>
void bwd_tasks(const DaParams& p, int64_t task0, int64_t task1, void* scratch) {
  constexpr int W = lanes<Acc>;
  DaBufs<Acc> s(reinterpret_cast<uintptr_t>(scratch), p, true);
  const int64_t dp = p.dpad, bm = p.block_m, bn = p.block_n;
  const Acc* lse_in = static_cast<const Acc*>(p.lse_in);
  const Acc* glse = static_cast<const Acc*>(p.grad_lse);
  for (int64_t task = task0; task < task1; ++task) {
    const DaTask tk = da_task(p, task, s.c0, s.c1, s.c2);
    const int64_t T = tk.n, tp = round_up(T, W), ls = tp < bn ? tp : bn;  // ls: leading dim of the S blocks
    gather_rows<S>(p, p.q, tk, s, s.q, T, Acc(p.scale));
    gather_rows<S>(p, p.k, tk, s, s.k, tp, Acc(1));
#if defined(__AVX512BF16__)
    if constexpr (kBf16Dot<S>) {
      uint32_t* stage = reinterpret_cast<uint32_t*>(s.dk);  // pair rows, staged in dk's buffer
      gather_pairs<S>(p, p.q, tk, s, s.qp, T);
      gather_pairs<S>(p, p.k, tk, s, stage, T);
      transpose_rows(stage, T, dp / 2, tp, s.ktp);
      gather_pairs<S>(p, p.v, tk, s, stage, T);
      transpose_rows(stage, T, dp / 2, tp, s.vtp);
      gather_pairs<S>(p, p.dout, tk, s, s.dop, T);
    } else
#endif
    {
      transpose_rows(s.k, T, dp, tp, s.kt);
      gather_rows<S>(p, p.v, tk, s, s.dk, T, Acc(1));  // v rows, staged in dk's buffer
      transpose_rows(s.dk, T, dp, tp, s.vt);
    }
    gather_rows<S>(p, p.dout, tk, s, s.dout, T, Acc(1));
    gather_rows<S>(p, p.o, tk, s, s.dv, T, Acc(1));  // out rows, staged in dv's buffer
    for (int64_t j = 0; j < T; ++j) {
      const int64_t r = out_row(p, tk, s.c0[j], s.c1[j], s.c2[j]);
      Acc d = Acc(0);
      for (int64_t c = 0; c < p.dim; ++c) d += s.dout[j * dp + c] * s.dv[j * dp + c];
      s.drow[j] = glse ? d - glse[r] : d;
      s.lse[j] = lse_in[r];
    }
    if (task + 1 < task1)
      prefetch_task<S>(p, task + 1, s, {p.q, p.k, p.v, p.dout, p.o}, {p.dq, p.dk, p.dv}, p.grad_tok_stride);
    for (int64_t i = 0; i < tp * dp; ++i) s.dk[i] = s.dv[i] = Acc(0);
    for (int64_t i0 = 0; i0 < T; i0 += bm) {
      const int64_t mb = T - i0 < bm ? T - i0 : bm;
      for (int64_t j0 = 0; j0 < tp; j0 += bn) {
        const int64_t nb = tp - j0 < bn ? tp - j0 : bn, valid = T - j0 < nb ? T - j0 : nb;
#if defined(__AVX512BF16__)
        if constexpr (kBf16Dot<S>)
          dot_gemm(mb, nb, dp / 2, s.qp + i0 * (dp / 2), dp / 2, s.ktp + j0, tp, s.s, ls, float(p.scale));  // S
        else
#endif
          gemm<false>(mb, nb, dp, s.q + i0 * dp, dp, 1, s.kt + j0, tp, s.s, ls);  // S
        for (int64_t i = 0; i < mb; ++i) {
          Acc* row = s.s + i * ls;
          exp_shift(row, valid, s.lse[i0 + i]);  // P
          for (int64_t j = valid; j < nb; ++j) row[j] = Acc(0);
        }
        gemm<true>(nb, dp, mb, s.s, 1, ls, s.dout + i0 * dp, dp, s.dv + j0 * dp, dp);  // dV += P^T dO
#if defined(__AVX512BF16__)
        if constexpr (kBf16Dot<S>)
          dot_gemm(mb, nb, dp / 2, s.dop + i0 * (dp / 2), dp / 2, s.vtp + j0, tp, s.ds, ls, 1.0f);  // dP = dO V^T
        else
#endif
          gemm<false>(mb, nb, dp, s.dout + i0 * dp, dp, 1, s.vt + j0, tp, s.ds, ls);  // dP = dO V^T
        for (int64_t i = 0; i < mb; ++i) {
          const vec<Acc> d = vsplat(s.drow[i0 + i]);
          Acc* ds = s.ds + i * ls;
          const Acc* pr = s.s + i * ls;
          for (int64_t j = 0; j < nb; j += W) vstore(ds + j, vload(pr + j) * (vload(ds + j) - d));
        }
        if (j0 == 0)
          gemm<false>(mb, dp, nb, s.ds, ls, 1, s.k, dp, s.dq, dp);  // dQ = dS K
        else
          gemm<true>(mb, dp, nb, s.ds, ls, 1, s.k + j0 * dp, dp, s.dq, dp);
        gemm<true>(nb, dp, mb, s.ds, 1, ls, s.q + i0 * dp, dp, s.dk + j0 * dp, dp);  // dK += dS^T Q
      }
      const Acc scale = Acc(p.scale);
      for (int64_t i = 0; i < mb; ++i) {
        const int64_t t = i0 + i, e = row_elem(p, tk, s.c0[t], s.c1[t], s.c2[t], p.grad_tok_stride);
        Acc* row = s.dq + i * dp;
        for (int64_t c = 0; c < p.dim; ++c) row[c] *= scale;
        store_span(static_cast<S*>(p.dq) + e, row, p.dim);
      }
    }
    for (int64_t j = 0; j < T; ++j) {
      const int64_t e = row_elem(p, tk, s.c0[j], s.c1[j], s.c2[j], p.grad_tok_stride);
      store_span(static_cast<S*>(p.dk) + e, s.dk + j * dp, p.dim);
      store_span(static_cast<S*>(p.dv) + e, s.dv + j * dp, p.dim);
    }
  }
}

// ---- entry points ---------------------------------------------------------------------------------
#if defined(__AVX512BF16__)
// The avx512bf16 table runs bf16 storage here and every other dtype on the avx512 slot's table (which is the
// avx2 one where AVX-512 did not pay), so this instruction set changes bf16 results only.
}  // namespace
}  // namespace medkernels::cpu::MK_ISA
namespace medkernels::cpu {
const DilatedAttentionKernelTable& dilated_attention_kernels_avx512();
}  // namespace medkernels::cpu
namespace medkernels::cpu::MK_ISA {
namespace {

// p with the head dim padded for the avx512 slot's vectors (the torch side padded it for this table's).
inline DaParams for_avx512_slot(const DaParams& p) {
  DaParams d = p;
  const int64_t lanes = dilated_attention_kernels_avx512().vector_bytes / (p.acc == ScalarKind::Float64 ? 8 : 4);
  d.dpad = round_up(p.dim, lanes);
  return d;
}
void da_fwd_entry(const DaParams& p, int64_t t0, int64_t t1, void* scratch) {
  if (p.dtype != ScalarKind::BFloat16)
    return dilated_attention_kernels_avx512().fwd(for_avx512_slot(p), t0, t1, scratch);
  fwd_tasks<bf16, float>(p, t0, t1, scratch);
}
void da_bwd_entry(const DaParams& p, int64_t t0, int64_t t1, void* scratch) {
  if (p.dtype != ScalarKind::BFloat16)
    return dilated_attention_kernels_avx512().bwd(for_avx512_slot(p), t0, t1, scratch);
  bwd_tasks<bf16, float>(p, t0, t1, scratch);
}
int64_t da_scratch_bytes(const DaParams& p, bool backward) {
  if (p.dtype != ScalarKind::BFloat16)
    return dilated_attention_kernels_avx512().scratch_bytes(for_avx512_slot(p), backward);
  return int64_t(DaBufs<float>(0, p, backward).end);
}
#else
void da_fwd_entry(const DaParams& p, int64_t t0, int64_t t1, void* scratch) {
  with_storage(p.dtype, [&](auto st) {
    using S = decltype(st);
    fwd_tasks<S, typename AccOf<S>::type>(p, t0, t1, scratch);
  });
}
void da_bwd_entry(const DaParams& p, int64_t t0, int64_t t1, void* scratch) {
  with_storage(p.dtype, [&](auto st) {
    using S = decltype(st);
    bwd_tasks<S, typename AccOf<S>::type>(p, t0, t1, scratch);
  });
}
int64_t da_scratch_bytes(const DaParams& p, bool backward) {
  return p.acc == ScalarKind::Float64 ? int64_t(DaBufs<double>(0, p, backward).end)
                                      : int64_t(DaBufs<float>(0, p, backward).end);
}
#endif

#define MK_STR2(x) #x
#define MK_STR(x) MK_STR2(x)
const DilatedAttentionKernelTable kDilatedAttentionTable{MK_STR(MK_ISA), MK_VEC_BYTES, &da_fwd_entry, &da_bwd_entry,
                                                         &da_scratch_bytes};
#undef MK_STR
#undef MK_STR2

}  // namespace
}  // namespace medkernels::cpu::MK_ISA
