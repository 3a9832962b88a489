// Neighborhood attention (NAT 2204.07143, DiNAT 2209.15001) CPU kernel bodies: fused forward and
// backward, and the unfused qk / av pair with their backwards.
//
// Compiled once per instruction set from csrc/cpu/isa_kernels.cpp.in; no torch
// header here. Every loop over a head dimension is vectorised (dims are zero-padded to whole
// vectors). A query's window is at most K0*K1*K2 keys, so the forward's only buffer is one row of
// logits per thread. The backward never scatters: dq comes from each query's window, dk and dv from
// each key's inverse neighborhood (the queries that attend to it), so results are deterministic.
#pragma once

#include "medkernels/cpu/neighborhood_attention.h"
#include "medkernels/cpu/simd.h"

namespace medkernels::cpu::MK_ISA {
namespace {

// ---- helpers ----------------------------------------------------------------------------------------

template <class T>
inline T dotv(const T* a, const T* b, int64_t nv) {
  constexpr int W = lanes<T>;
  vec<T> s0{}, s1{};
  int64_t v = 0;
  for (; v + 1 < nv; v += 2) {
    s0 += vload(a + v * W) * vload(b + v * W);
    s1 += vload(a + (v + 1) * W) * vload(b + (v + 1) * W);
  }
  if (v < nv) s0 += vload(a + v * W) * vload(b + v * W);
  return hsum<T>(s0 + s1);
}

template <class T>
inline void axpy(T* acc, T a, const T* x, int64_t nv) {
  constexpr int W = lanes<T>;
  const vec<T> av = vsplat(a);
  for (int64_t v = 0; v < nv; ++v) vstore(acc + v * W, vload(acc + v * W) + av * vload(x + v * W));
}

template <class T>
inline void zero(T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = T(0);
}

inline void unravel(const NaParams& p, int64_t t, int64_t x[3]) {
  x[2] = t % p.axis[2].L;
  t /= p.axis[2].L;
  x[1] = t % p.axis[1].L;
  x[0] = t / p.axis[1].L;
}

// The keys of query token t: token index, bias index and window slot of each; returns the count.
inline int64_t window_of(const NaParams& p, int64_t t, int64_t* keys, int64_t* rel, int64_t* slot) {
  int64_t x[3];
  unravel(p, t, x);
  const NaAxis &a0 = p.axis[0], &a1 = p.axis[1], &a2 = p.axis[2];
  const int64_t s0 = a0.win_start[x[0]], n0 = a0.win_len[x[0]], r0 = a0.rpb_base[x[0]];
  const int64_t s1 = a1.win_start[x[1]], n1 = a1.win_len[x[1]], r1 = a1.rpb_base[x[1]];
  const int64_t s2 = a2.win_start[x[2]], n2 = a2.win_len[x[2]], r2 = a2.rpb_base[x[2]];
  int64_t c = 0;
  for (int64_t m0 = 0; m0 < n0; ++m0) {
    const int64_t y0 = s0 + m0 * a0.dil;
    for (int64_t m1 = 0; m1 < n1; ++m1) {
      const int64_t y01 = (y0 * a1.L + s1 + m1 * a1.dil) * a2.L;
      const int64_t rr = ((r0 + m0) * a1.R + r1 + m1) * a2.R + r2;
      const int64_t ss = (m0 * a1.K + m1) * a2.K;
      for (int64_t m2 = 0; m2 < n2; ++m2, ++c) {
        keys[c] = y01 + s2 + m2 * a2.dil;
        rel[c] = rr + m2;
        slot[c] = ss + m2;
      }
    }
  }
  return c;
}

// The queries that attend to key token j, with the bias index and slot of j in each one's window.
inline int64_t inverse_of(const NaParams& p, int64_t j, int64_t* queries, int64_t* rel, int64_t* slot) {
  int64_t y[3];
  unravel(p, j, y);
  const NaAxis &a0 = p.axis[0], &a1 = p.axis[1], &a2 = p.axis[2];
  int64_t c = 0;
  for (int64_t n0 = 0; n0 < a0.inv_len[y[0]]; ++n0) {
    const int64_t x0 = a0.inv_start[y[0]] + n0 * a0.dil;
    const int64_t m0 = (y[0] - a0.win_start[x0]) / a0.dil;
    const int64_t r0 = a0.rpb_base[x0] + m0;
    for (int64_t n1 = 0; n1 < a1.inv_len[y[1]]; ++n1) {
      const int64_t x1 = a1.inv_start[y[1]] + n1 * a1.dil;
      const int64_t m1 = (y[1] - a1.win_start[x1]) / a1.dil;
      const int64_t r01 = (r0 * a1.R + a1.rpb_base[x1] + m1) * a2.R;
      const int64_t s01 = (m0 * a1.K + m1) * a2.K;
      const int64_t x01 = (x0 * a1.L + x1) * a2.L;
      for (int64_t n2 = 0; n2 < a2.inv_len[y[2]]; ++n2, ++c) {
        const int64_t x2 = a2.inv_start[y[2]] + n2 * a2.dil;
        const int64_t m2 = (y[2] - a2.win_start[x2]) / a2.dil;
        queries[c] = x01 + x2;
        rel[c] = r01 + a2.rpb_base[x2] + m2;
        slot[c] = s01 + m2;
      }
    }
  }
  return c;
}

inline int64_t max_inverse(const NaParams& p) {
  int64_t m = 1;
  for (const NaAxis& a : p.axis) {
    int64_t best = 0;
    for (int64_t y = 0; y < a.L; ++y) best = a.inv_len[y] > best ? a.inv_len[y] : best;
    m *= best;
  }
  return m;
}

template <class T>
struct NaBufs {
  T *s, *s2;      // per-key scores / second quantity, n + n_add (+ a vector of slack)
  T *acc, *acc2;  // head-dim accumulators
  int64_t *idx, *rel, *slot;
  uintptr_t end;
  NaBufs(uintptr_t base, const NaParams& p) {
    const int64_t n = (p.kprod > max_inverse(p) ? p.kprod : max_inverse(p)) + p.n_add;
    Carver c{base};
    s = c.take<T>(n + 64);
    s2 = c.take<T>(n + 64);
    acc = c.take<T>(p.dpad > p.dvpad ? p.dpad : p.dvpad);
    acc2 = c.take<T>(p.dvpad);
    idx = c.take<int64_t>(n);
    rel = c.take<int64_t>(n);
    slot = c.take<int64_t>(n);
    end = c.p;
  }
};

// Task -> (batch, head, first token, last token).
struct Task {
  int64_t b, h, t0, t1;
  Task(const NaParams& p, int64_t task, int64_t heads) {
    const int64_t tiles = (p.tokens + p.tile - 1) / p.tile;
    const int64_t bh = task / tiles, tile = task % tiles;
    b = bh / heads;
    h = bh % heads;
    t0 = tile * p.tile;
    t1 = t0 + p.tile < p.tokens ? t0 + p.tile : p.tokens;
  }
};

template <class T>
struct Heads {  // pointers of one (batch, query head) and its kv head
  const T *q, *k, *v, *rpb, *ak, *av;
  int64_t hk, off_q, off_kv;
  Heads(const NaParams& p, int64_t b, int64_t h) {
    hk = h / (p.heads / p.kv_heads);
    off_q = b * p.heads + h;
    off_kv = b * p.kv_heads + hk;
    q = static_cast<const T*>(p.q) + off_q * p.tokens * p.dpad;
    k = static_cast<const T*>(p.k) + off_kv * p.tokens * p.dpad;
    v = static_cast<const T*>(p.v) + off_kv * p.tokens * p.dvpad;
    rpb = p.rpb ? static_cast<const T*>(p.rpb) + h * p.axis[0].R * p.axis[1].R * p.axis[2].R : nullptr;
    ak = p.n_add ? static_cast<const T*>(p.add_k) + off_kv * p.n_add * p.dpad : nullptr;
    av = p.n_add ? static_cast<const T*>(p.add_v) + off_kv * p.n_add * p.dvpad : nullptr;
  }
};

// ---- fused forward --------------------------------------------------------------------------------

template <class T>
void fwd_tasks(const NaParams& p, int64_t task0, int64_t task1, void* scratch) {
  constexpr int W = lanes<T>;
  NaBufs<T> s(reinterpret_cast<uintptr_t>(scratch), p);
  const int64_t nvd = p.dpad / W, nvv = p.dvpad / W;
  for (int64_t task = task0; task < task1; ++task) {
    const Task tk(p, task, p.heads);
    const Heads<T> hd(p, tk.b, tk.h);
    T* ob = static_cast<T*>(p.out) + hd.off_q * p.tokens * p.dvpad;
    T* lb = static_cast<T*>(p.lse) + hd.off_q * p.tokens;
    for (int64_t t = tk.t0; t < tk.t1; ++t) {
      const int64_t n = window_of(p, t, s.idx, s.rel, s.slot);
      const T* qt = hd.q + t * p.dpad;
      T mx = -__builtin_inf();
      for (int64_t c = 0; c < n; ++c) {
        T sc = dotv(qt, hd.k + s.idx[c] * p.dpad, nvd);
        if (hd.rpb) sc += hd.rpb[s.rel[c]];
        s.s[c] = sc;
        mx = sc > mx ? sc : mx;
      }
      for (int64_t a = 0; a < p.n_add; ++a) {
        const T sc = dotv(qt, hd.ak + a * p.dpad, nvd);
        s.s[n + a] = sc;
        mx = sc > mx ? sc : mx;
      }
      const T sum = exp_shift(s.s, n + p.n_add, mx);
      const T inv = T(1) / sum;
      zero(s.acc, p.dvpad);
      for (int64_t c = 0; c < n; ++c) axpy(s.acc, s.s[c] * inv, hd.v + s.idx[c] * p.dvpad, nvv);
      for (int64_t a = 0; a < p.n_add; ++a) axpy(s.acc, s.s[n + a] * inv, hd.av + a * p.dvpad, nvv);
      T* ot = ob + t * p.dvpad;
      for (int64_t v = 0; v < nvv; ++v) vstore(ot + v * W, vload(s.acc + v * W));
      lb[t] = row_lse(mx, sum);
    }
  }
}

// ---- fused backward -----------------------------------------------------------------------------
// With P = softmax(S), S = q' k^T + bias (q' = scale q), dP = dO v^T and delta = <dO, O> per query:
//   dS = P (dP - delta);  dq = scale * dS k;  dk = dS^T q';  dv = P^T dO;  dbias = sum of dS.

template <class T>
void bwd_query_tasks(const NaParams& p, int64_t task0, int64_t task1, void* scratch) {
  constexpr int W = lanes<T>;
  NaBufs<T> s(reinterpret_cast<uintptr_t>(scratch), p);
  const int64_t nvd = p.dpad / W, nvv = p.dvpad / W;
  const int64_t rprod = p.axis[0].R * p.axis[1].R * p.axis[2].R;
  for (int64_t task = task0; task < task1; ++task) {
    const Task tk(p, task, p.heads);
    const Heads<T> hd(p, tk.b, tk.h);
    const T* dob = static_cast<const T*>(p.dout) + hd.off_q * p.tokens * p.dvpad;
    const T* lse = static_cast<const T*>(p.lse) + hd.off_q * p.tokens;
    const T* drow = static_cast<const T*>(p.drow) + hd.off_q * p.tokens;
    T* dqb = static_cast<T*>(p.dq) + hd.off_q * p.tokens * p.dpad;
    T* drpb = p.rpb ? static_cast<T*>(p.drpb_part) + task * rprod : nullptr;
    T* dak = p.n_add ? static_cast<T*>(p.dadd_k_part) + task * p.n_add * p.dpad : nullptr;
    T* dav = p.n_add ? static_cast<T*>(p.dadd_v_part) + task * p.n_add * p.dvpad : nullptr;
    if (drpb) zero(drpb, rprod);
    if (p.n_add) {
      zero(dak, p.n_add * p.dpad);
      zero(dav, p.n_add * p.dvpad);
    }
    const T scale = static_cast<T>(p.scale);
    for (int64_t t = tk.t0; t < tk.t1; ++t) {
      const int64_t n = window_of(p, t, s.idx, s.rel, s.slot);
      const int64_t tot = n + p.n_add;
      const T* qt = hd.q + t * p.dpad;
      const T* dot = dob + t * p.dvpad;
      for (int64_t c = 0; c < n; ++c) {
        s.s[c] = dotv(qt, hd.k + s.idx[c] * p.dpad, nvd) + (hd.rpb ? hd.rpb[s.rel[c]] : T(0));
        s.s2[c] = dotv(dot, hd.v + s.idx[c] * p.dvpad, nvv);
      }
      for (int64_t a = 0; a < p.n_add; ++a) {
        s.s[n + a] = dotv(qt, hd.ak + a * p.dpad, nvd);
        s.s2[n + a] = dotv(dot, hd.av + a * p.dvpad, nvv);
      }
      exp_shift(s.s, tot, lse[t]);                                               // s = P
      for (int64_t c = 0; c < tot; ++c) s.s2[c] = s.s[c] * (s.s2[c] - drow[t]);  // s2 = dS
      zero(s.acc, p.dpad);
      for (int64_t c = 0; c < n; ++c) {
        axpy(s.acc, s.s2[c], hd.k + s.idx[c] * p.dpad, nvd);
        if (drpb) drpb[s.rel[c]] += s.s2[c];
      }
      for (int64_t a = 0; a < p.n_add; ++a) {
        axpy(s.acc, s.s2[n + a], hd.ak + a * p.dpad, nvd);
        axpy(dak + a * p.dpad, s.s2[n + a], qt, nvd);
        axpy(dav + a * p.dvpad, s.s[n + a], dot, nvv);
      }
      T* dqt = dqb + t * p.dpad;
      for (int64_t v = 0; v < nvd; ++v) vstore(dqt + v * W, vload(s.acc + v * W) * scale);
    }
  }
}

template <class T>
void bwd_key_tasks(const NaParams& p, int64_t task0, int64_t task1, void* scratch) {
  constexpr int W = lanes<T>;
  NaBufs<T> s(reinterpret_cast<uintptr_t>(scratch), p);
  const int64_t nvd = p.dpad / W, nvv = p.dvpad / W, group = p.heads / p.kv_heads;
  for (int64_t task = task0; task < task1; ++task) {
    const Task tk(p, task, p.kv_heads);  // h is the kv head here
    const int64_t off_kv = tk.b * p.kv_heads + tk.h;
    const T* kb = static_cast<const T*>(p.k) + off_kv * p.tokens * p.dpad;
    const T* vb = static_cast<const T*>(p.v) + off_kv * p.tokens * p.dvpad;
    T* dkb = static_cast<T*>(p.dk) + off_kv * p.tokens * p.dpad;
    T* dvb = static_cast<T*>(p.dv) + off_kv * p.tokens * p.dvpad;
    for (int64_t j = tk.t0; j < tk.t1; ++j) {
      const int64_t n = inverse_of(p, j, s.idx, s.rel, s.slot);
      const T* kj = kb + j * p.dpad;
      const T* vj = vb + j * p.dvpad;
      zero(s.acc, p.dpad);
      zero(s.acc2, p.dvpad);
      for (int64_t h = tk.h * group; h < (tk.h + 1) * group; ++h) {
        const Heads<T> hd(p, tk.b, h);
        const T* dob = static_cast<const T*>(p.dout) + hd.off_q * p.tokens * p.dvpad;
        const T* lse = static_cast<const T*>(p.lse) + hd.off_q * p.tokens;
        const T* drow = static_cast<const T*>(p.drow) + hd.off_q * p.tokens;
        for (int64_t c = 0; c < n; ++c) {
          const int64_t i = s.idx[c];
          const T sc = dotv(hd.q + i * p.dpad, kj, nvd) + (hd.rpb ? hd.rpb[s.rel[c]] : T(0));
          const T pr = sexp(sc - lse[i]);
          const T ds = pr * (dotv(dob + i * p.dvpad, vj, nvv) - drow[i]);
          axpy(s.acc, ds, hd.q + i * p.dpad, nvd);
          axpy(s.acc2, pr, dob + i * p.dvpad, nvv);
        }
      }
      for (int64_t v = 0; v < nvd; ++v) vstore(dkb + j * p.dpad + v * W, vload(s.acc + v * W));
      for (int64_t v = 0; v < nvv; ++v) vstore(dvb + j * p.dvpad + v * W, vload(s.acc2 + v * W));
    }
  }
}

// ---- unfused: attn = q k^T + bias over the window slots (-inf where a causal window is short) ----

template <class T>
void qk_tasks(const NaParams& p, int64_t task0, int64_t task1, void* scratch) {
  NaBufs<T> s(reinterpret_cast<uintptr_t>(scratch), p);
  const int64_t nvd = p.dpad / lanes<T>;
  for (int64_t task = task0; task < task1; ++task) {
    const Task tk(p, task, p.heads);
    const Heads<T> hd(p, tk.b, tk.h);
    T* ab = static_cast<T*>(p.attn_out) + hd.off_q * p.tokens * p.kprod;
    for (int64_t t = tk.t0; t < tk.t1; ++t) {
      const int64_t n = window_of(p, t, s.idx, s.rel, s.slot);
      T* row = ab + t * p.kprod;
      for (int64_t m = 0; m < p.kprod; ++m) row[m] = -__builtin_inf();
      for (int64_t c = 0; c < n; ++c)
        row[s.slot[c]] = dotv(hd.q + t * p.dpad, hd.k + s.idx[c] * p.dpad, nvd) + (hd.rpb ? hd.rpb[s.rel[c]] : T(0));
    }
  }
}

template <class T>
void qk_bwd_query_tasks(const NaParams& p, int64_t task0, int64_t task1, void* scratch) {
  constexpr int W = lanes<T>;
  NaBufs<T> s(reinterpret_cast<uintptr_t>(scratch), p);
  const int64_t nvd = p.dpad / W;
  const int64_t rprod = p.axis[0].R * p.axis[1].R * p.axis[2].R;
  for (int64_t task = task0; task < task1; ++task) {
    const Task tk(p, task, p.heads);
    const Heads<T> hd(p, tk.b, tk.h);
    const T* gb = static_cast<const T*>(p.dattn) + hd.off_q * p.tokens * p.kprod;
    T* dqb = static_cast<T*>(p.dq) + hd.off_q * p.tokens * p.dpad;
    T* drpb = p.rpb ? static_cast<T*>(p.drpb_part) + task * rprod : nullptr;
    if (drpb) zero(drpb, rprod);
    for (int64_t t = tk.t0; t < tk.t1; ++t) {
      const int64_t n = window_of(p, t, s.idx, s.rel, s.slot);
      const T* g = gb + t * p.kprod;
      zero(s.acc, p.dpad);
      for (int64_t c = 0; c < n; ++c) {
        axpy(s.acc, g[s.slot[c]], hd.k + s.idx[c] * p.dpad, nvd);
        if (drpb) drpb[s.rel[c]] += g[s.slot[c]];
      }
      for (int64_t v = 0; v < nvd; ++v) vstore(dqb + t * p.dpad + v * W, vload(s.acc + v * W));
    }
  }
}

template <class T>
void qk_bwd_key_tasks(const NaParams& p, int64_t task0, int64_t task1, void* scratch) {
  constexpr int W = lanes<T>;
  NaBufs<T> s(reinterpret_cast<uintptr_t>(scratch), p);
  const int64_t nvd = p.dpad / W, group = p.heads / p.kv_heads;
  for (int64_t task = task0; task < task1; ++task) {
    const Task tk(p, task, p.kv_heads);
    T* dkb = static_cast<T*>(p.dk) + (tk.b * p.kv_heads + tk.h) * p.tokens * p.dpad;
    for (int64_t j = tk.t0; j < tk.t1; ++j) {
      const int64_t n = inverse_of(p, j, s.idx, s.rel, s.slot);
      zero(s.acc, p.dpad);
      for (int64_t h = tk.h * group; h < (tk.h + 1) * group; ++h) {
        const Heads<T> hd(p, tk.b, h);
        const T* gb = static_cast<const T*>(p.dattn) + hd.off_q * p.tokens * p.kprod;
        for (int64_t c = 0; c < n; ++c) axpy(s.acc, gb[s.idx[c] * p.kprod + s.slot[c]], hd.q + s.idx[c] * p.dpad, nvd);
      }
      for (int64_t v = 0; v < nvd; ++v) vstore(dkb + j * p.dpad + v * W, vload(s.acc + v * W));
    }
  }
}

// ---- unfused: out = attn v over the window slots --------------------------------------------------

template <class T>
void av_tasks(const NaParams& p, int64_t task0, int64_t task1, void* scratch) {
  constexpr int W = lanes<T>;
  NaBufs<T> s(reinterpret_cast<uintptr_t>(scratch), p);
  const int64_t nvv = p.dvpad / W;
  for (int64_t task = task0; task < task1; ++task) {
    const Task tk(p, task, p.heads);
    const Heads<T> hd(p, tk.b, tk.h);
    const T* ab = static_cast<const T*>(p.attn) + hd.off_q * p.tokens * p.kprod;
    T* ob = static_cast<T*>(p.out) + hd.off_q * p.tokens * p.dvpad;
    for (int64_t t = tk.t0; t < tk.t1; ++t) {
      const int64_t n = window_of(p, t, s.idx, s.rel, s.slot);
      zero(s.acc, p.dvpad);
      for (int64_t c = 0; c < n; ++c) axpy(s.acc, ab[t * p.kprod + s.slot[c]], hd.v + s.idx[c] * p.dvpad, nvv);
      for (int64_t v = 0; v < nvv; ++v) vstore(ob + t * p.dvpad + v * W, vload(s.acc + v * W));
    }
  }
}

template <class T>
void av_bwd_query_tasks(const NaParams& p, int64_t task0, int64_t task1, void* scratch) {
  NaBufs<T> s(reinterpret_cast<uintptr_t>(scratch), p);
  const int64_t nvv = p.dvpad / lanes<T>;
  for (int64_t task = task0; task < task1; ++task) {
    const Task tk(p, task, p.heads);
    const Heads<T> hd(p, tk.b, tk.h);
    const T* dob = static_cast<const T*>(p.dout) + hd.off_q * p.tokens * p.dvpad;
    T* gb = static_cast<T*>(p.dattn_out) + hd.off_q * p.tokens * p.kprod;
    for (int64_t t = tk.t0; t < tk.t1; ++t) {
      const int64_t n = window_of(p, t, s.idx, s.rel, s.slot);
      T* g = gb + t * p.kprod;
      zero(g, p.kprod);
      for (int64_t c = 0; c < n; ++c) g[s.slot[c]] = dotv(dob + t * p.dvpad, hd.v + s.idx[c] * p.dvpad, nvv);
    }
  }
}

template <class T>
void av_bwd_key_tasks(const NaParams& p, int64_t task0, int64_t task1, void* scratch) {
  constexpr int W = lanes<T>;
  NaBufs<T> s(reinterpret_cast<uintptr_t>(scratch), p);
  const int64_t nvv = p.dvpad / W, group = p.heads / p.kv_heads;
  for (int64_t task = task0; task < task1; ++task) {
    const Task tk(p, task, p.kv_heads);
    T* dvb = static_cast<T*>(p.dv) + (tk.b * p.kv_heads + tk.h) * p.tokens * p.dvpad;
    for (int64_t j = tk.t0; j < tk.t1; ++j) {
      const int64_t n = inverse_of(p, j, s.idx, s.rel, s.slot);
      zero(s.acc, p.dvpad);
      for (int64_t h = tk.h * group; h < (tk.h + 1) * group; ++h) {
        const int64_t off_q = tk.b * p.heads + h;
        const T* ab = static_cast<const T*>(p.attn) + off_q * p.tokens * p.kprod;
        const T* dob = static_cast<const T*>(p.dout) + off_q * p.tokens * p.dvpad;
        for (int64_t c = 0; c < n; ++c) axpy(s.acc, ab[s.idx[c] * p.kprod + s.slot[c]], dob + s.idx[c] * p.dvpad, nvv);
      }
      for (int64_t v = 0; v < nvv; ++v) vstore(dvb + j * p.dvpad + v * W, vload(s.acc + v * W));
    }
  }
}

// ---- entry points ------------------------------------------------------------------------------

#define MK_NA_ENTRY(name)                                                       \
  void name##_entry(const NaParams& p, int64_t t0, int64_t t1, void* scratch) { \
    if (p.acc == ScalarKind::Float64)                                           \
      name##_tasks<double>(p, t0, t1, scratch);                                 \
    else                                                                        \
      name##_tasks<float>(p, t0, t1, scratch);                                  \
  }
MK_NA_ENTRY(fwd)
MK_NA_ENTRY(bwd_query)
MK_NA_ENTRY(bwd_key)
MK_NA_ENTRY(qk)
MK_NA_ENTRY(qk_bwd_query)
MK_NA_ENTRY(qk_bwd_key)
MK_NA_ENTRY(av)
MK_NA_ENTRY(av_bwd_query)
MK_NA_ENTRY(av_bwd_key)
#undef MK_NA_ENTRY

int64_t na_scratch_bytes(const NaParams& p) {
  return p.acc == ScalarKind::Float64 ? int64_t(NaBufs<double>(0, p).end) : int64_t(NaBufs<float>(0, p).end);
}

#define MK_STR2(x) #x
#define MK_STR(x) MK_STR2(x)
const NeighborhoodAttentionKernelTable kNeighborhoodAttentionTable{
    MK_STR(MK_ISA),      MK_VEC_BYTES,      &fwd_entry, &bwd_query_entry,    &bwd_key_entry,    &qk_entry,
    &qk_bwd_query_entry, &qk_bwd_key_entry, &av_entry,  &av_bwd_query_entry, &av_bwd_key_entry, &na_scratch_bytes};
#undef MK_STR
#undef MK_STR2

}  // namespace
}  // namespace medkernels::cpu::MK_ISA
