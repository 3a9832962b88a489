// Selective scan (Mamba, arXiv 2312.00752) CPU kernel bodies, forward and backward.
//
// Compiled once per instruction set from csrc/cpu/isa_kernels.cpp.in; no torch header here.
// Per (batch, channel) row, with dt = softplus?(delta + delta_bias), all in acc precision:
//   h_t = exp(dt_t * A) * h_{t-1} + dt_t * u_t * B_t        (state: dstate lanes, in registers)
//   y_t = <h_t, C_t>,  out_t = (y_t + D * u_t) * silu(z_t)
// The state runs over the sequence in chunks; the state before each chunk is saved, and the
// backward recomputes one chunk at a time from it, so no (batch, dim, seqlen, dstate) tensor exists.
#pragma once

#include "medkernels/cpu/selective_scan.h"
#include "medkernels/cpu/simd.h"

namespace medkernels::cpu::MK_ISA {
namespace {

// Loads an unpadded N-vector (state, gradient) into padded lanes.
template <class Acc>
inline void load_state(vec<Acc>* dst, const Acc* src, int64_t n, int nv) {
  if (n == int64_t(nv) * lanes<Acc>) {
    for (int v = 0; v < nv; ++v) dst[v] = vload(src + v * lanes<Acc>);
    return;
  }
  Acc tmp[lanes<Acc>];
  for (int v = 0; v < nv; ++v) {
    for (int l = 0; l < lanes<Acc>; ++l) {
      const int64_t k = int64_t(v) * lanes<Acc> + l;
      tmp[l] = k < n ? src[k] : Acc(0);
    }
    dst[v] = vload(tmp);
  }
}
template <class Acc>
inline void store_state(Acc* dst, const vec<Acc>* src, int64_t n, int nv) {
  if (n == int64_t(nv) * lanes<Acc>) {
    for (int v = 0; v < nv; ++v) vstore(dst + v * lanes<Acc>, src[v]);
    return;
  }
  for (int v = 0; v < nv; ++v)
    for (int l = 0; l < lanes<Acc>; ++l) {
      const int64_t k = int64_t(v) * lanes<Acc> + l;
      if (k < n) dst[k] = src[v][l];
    }
}

// dt = softplus?(delta + bias) and du = dt * u over a chunk; sg = d softplus / d x when wanted.
template <class Acc>
inline void chunk_dt(const SelectiveScanFwdParams& p, Acc bias, const Acc* uf, Acc* dt, Acc* du, Acc* sg, int64_t n) {
  using V = vec<Acc>;
  constexpr int W = lanes<Acc>;
  for (int64_t i = 0; i < n; i += W) {
    const V raw = vload(dt + i) + bias;
    V x = raw;
    if (p.delta_softplus) {
      V sig{};
      x = vsoftplus(raw, sg ? &sig : nullptr);
      if (sg) vstore(sg + i, sig);
    }
    vstore(dt + i, x);
    vstore(du + i, x * vload(uf + i));
  }
}

// Steps t0 .. t0 + n of a sequence row, read in order or, with idx, at positions idx[t] (the
// multi-order scan's orderings); the tail up to a whole vector is zeroed.
template <class S, class Acc>
inline void load_seq(const S* row, const int64_t* idx, int64_t t0, Acc* dst, int64_t n) {
  if (!idx) return load_span(row + t0, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = to_acc<Acc>(row[idx[t0 + i]]);
  for (int64_t i = n, e = round_up(n, lanes<Acc>); i < e; ++i) dst[i] = Acc(0);
}
template <class S, class Acc>
inline void store_seq(S* row, const int64_t* idx, int64_t t0, const Acc* src, int64_t n) {
  if (!idx) return store_span(row + t0, src, n);
  for (int64_t i = 0; i < n; ++i) row[idx[t0 + i]] = from_acc<S>(src[i]);
}
// acc[idx[t0 + i]] += src[i]: one ordering's contribution to a sum kept in the original order.
template <class Acc>
inline void add_seq(Acc* acc, const int64_t* idx, int64_t t0, const Acc* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[idx[t0 + i]] += src[i];
}

// One (batch, channel) row of the problem: its sequences, parameters and B/C rows.
template <class S>
struct Row {
  using Acc = typename AccOf<S>::type;
  int64_t index;           // b * dim + d
  int64_t channel;         // the row of u (and out, grad_out): d, or d % channels with orderings
  const int64_t* idx;      // the row's ordering (seqlen,), or null
  const S *u, *delta, *z;  // (seqlen,), unit stride; z may be null
  const Acc *A, *B, *C;    // A: (dstate_pad,); B/C: the row's group at t = 0, or the fixed row
  int64_t B_step, C_step;  // dstate_pad for variable B/C, 0 for fixed
  Acc D, bias;
  Row(const SelectiveScanFwdParams& p, int64_t b, int64_t d) : index(b * p.dim + d) {
    const int64_t L = p.seqlen, Np = p.dstate_pad, channels = p.dim / p.n_orders;
    channel = p.order ? d % channels : d;
    idx = p.order ? p.order + (b * p.n_orders + d / channels) * L : nullptr;
    u = static_cast<const S*>(p.u) + b * p.u_batch_stride + channel * p.u_dim_stride;
    delta = static_cast<const S*>(p.delta) + b * p.delta_batch_stride + d * p.delta_dim_stride;
    z = p.z ? static_cast<const S*>(p.z) + b * p.z_batch_stride + d * p.z_dim_stride : nullptr;
    A = static_cast<const Acc*>(p.A) + d * Np;
    // With orderings B/C hold the current ordering only: (batch, seqlen, dstate_pad).
    B = p.order      ? static_cast<const Acc*>(p.B) + b * L * Np
        : p.groups_B ? static_cast<const Acc*>(p.B) + (b * p.groups_B + d / (p.dim / p.groups_B)) * L * Np
                     : static_cast<const Acc*>(p.B) + d * Np;
    C = p.order      ? static_cast<const Acc*>(p.C) + b * L * Np
        : p.groups_C ? static_cast<const Acc*>(p.C) + (b * p.groups_C + d / (p.dim / p.groups_C)) * L * Np
                     : static_cast<const Acc*>(p.C) + d * Np;
    B_step = p.groups_B ? Np : 0;
    C_step = p.groups_C ? Np : 0;
    D = p.D ? static_cast<const Acc*>(p.D)[d] : Acc(0);
    bias = p.delta_bias ? static_cast<const Acc*>(p.delta_bias)[d] : Acc(0);
  }
};

// The state's padding lanes (dstate up to a whole vector; A = B = C = 0 there) must stay out of every
// sum over the state: an infinite dt * u makes them 0 * inf = NaN. keep(x, v) zeroes them in the last
// vector's term x (a no-op when dstate fills its vectors).
template <class Acc>
struct StateTail {
  bool padded;
  int last;
  typename Simd<Acc>::I real;
  StateTail(int64_t n, int nv)
      : padded(n != int64_t(nv) * lanes<Acc>), last(nv - 1), real(lanes_below<Acc>(n - int64_t(nv - 1) * lanes<Acc>)) {}
  vec<Acc> operator()(vec<Acc> x, int v) const { return padded && v == last ? (real ? x : vec<Acc>{}) : x; }
};

// The decay exp(dt A) = 2^x. The fast vexp2 stops at 2^-125; where the chunk's timesteps or state are
// not all finite (kExact) it is exactly 0 where float32 exp underflows to 0 (x < -150), as the
// reference's torch.exp, so an infinite state meets the reference's 0 * inf = NaN, not 2^-125 * inf = inf.
template <class Acc, bool kExact>
inline vec<Acc> decay(vec<Acc> x) {
  const vec<Acc> e = vexp2(x);
  if constexpr (kExact && __is_same(Acc, float)) return x < Acc(-150) ? vec<Acc>{} : e;
  return e;
}
// Whether dt, dt * u (n steps, whole vectors) and the state are all finite: x * 0 is 0 exactly then.
template <class Acc>
inline bool chunk_finite(const Acc* dt, const Acc* du, int64_t n, const vec<Acc>* h, int nv) {
  vec<Acc> z{};
  for (int64_t i = 0; i < n; i += lanes<Acc>) z += vload(dt + i) * Acc(0) + vload(du + i) * Acc(0);
  for (int v = 0; v < nv; ++v) z += h[v] * Acc(0);
  return hsum<Acc>(z) == Acc(0);
}
// Runs f.template operator()<kExact>() with kExact = !finite (one instantiation per case).
template <class F>
inline void with_exactness(bool finite, F&& f) {
  if (finite)
    f.template operator()<false>();
  else
    f.template operator()<true>();
}

// ------------------------------------------------------------------------------------------------
// Forward: one (batch, channel) row. NV > 0: dstate_pad == NV vectors, state in registers.
template <class Acc>
struct FwdBufs {
  Acc *uf, *dt, *du, *y, *zf, *P;
  vec<Acc>*h, *A2;  // used when the state does not fit the register-resident variants
  uintptr_t end;
  FwdBufs(uintptr_t base, const SelectiveScanFwdParams& p) {
    constexpr int W = lanes<Acc>;
    Carver c{base};
    uf = c.take<Acc>(p.chunk + W);
    dt = c.take<Acc>(p.chunk + W);
    du = c.take<Acc>(p.chunk + W);
    y = c.take<Acc>(p.chunk + W);
    zf = c.take<Acc>(p.chunk + W);
    P = c.take<Acc>(p.chunk * W);
    h = c.take<vec<Acc>>(p.dstate_pad / W);
    A2 = c.take<vec<Acc>>(p.dstate_pad / W);
    end = c.p;
  }
};

constexpr double kLog2e = 1.4426950408889634, kLn2 = 0.6931471805599453;

// With orderings the row's output is added to `osum` (the original token order), else stored.
template <class S, int NV>
void fwd_row(const SelectiveScanFwdParams& p, int64_t b, int64_t d, void* scratch, typename AccOf<S>::type* osum) {
  using Acc = typename AccOf<S>::type;
  using V = vec<Acc>;
  constexpr int W = lanes<Acc>;
  const int64_t L = p.seqlen, N = p.dstate, Np = p.dstate_pad, T = p.chunk;
  const int nv = NV > 0 ? NV : int(Np / W);

  FwdBufs<Acc> s(reinterpret_cast<uintptr_t>(scratch), p);
  V hl[NV > 0 ? NV : 1], A2l[NV > 0 ? NV : 1];
  V* h = NV > 0 ? hl : s.h;
  V* A2 = NV > 0 ? A2l : s.A2;

  const Row<S> r(p, b, d);
  S* orow = osum ? nullptr : static_cast<S*>(p.out) + r.index * L;

  // exp(dt * A) = 2^(dt * A * log2 e): the scale goes into A once per row.
  for (int v = 0; v < nv; ++v) A2[v] = vload(r.A + v * W) * Acc(kLog2e);
  const StateTail<Acc> keep(N, nv);

  if (p.initial_state)
    load_state(h, static_cast<const Acc*>(p.initial_state) + r.index * N, N, nv);
  else
    for (int v = 0; v < nv; ++v) h[v] = V{};
  Acc* ck = static_cast<Acc*>(p.checkpoints) + r.index * p.n_chunks * N;

  for (int64_t c = 0; c < p.n_chunks; ++c) {
    const int64_t t0 = c * T, n = (L - t0) < T ? (L - t0) : T, nr = round_up(n, W);
    store_state(ck + c * N, h, N, nv);
    load_seq(r.u, r.idx, t0, s.uf, n);
    load_seq(r.delta, r.idx, t0, s.dt, n);
    chunk_dt<Acc>(p, r.bias, s.uf, s.dt, s.du, nullptr, n);
    with_exactness(chunk_finite(s.dt, s.du, n, h, nv), [&]<bool kExact>() {
      const Acc* Bt = r.B + t0 * r.B_step;
      const Acc* Ct = r.C + t0 * r.C_step;
      for (int64_t i = 0; i < n; ++i, Bt += r.B_step, Ct += r.C_step) {
        const V dtv = vsplat(s.dt[i]), duv = vsplat(s.du[i]);
        V acc{};
        for (int v = 0; v < nv; ++v) {
          h[v] = decay<Acc, kExact>(dtv * A2[v]) * h[v] + duv * vload(Bt + v * W);
          acc += keep(h[v] * vload(Ct + v * W), v);
        }
        vstore(s.P + i * W, acc);
      }
    });
    reduce_lanes(s.P, s.y, n);
    for (int64_t i = n; i < nr; ++i) s.y[i] = Acc(0);
    if (r.z) load_span(r.z + t0, s.zf, n);
    for (int64_t i = 0; i < n; i += W) {
      V o = vload(s.y + i) + r.D * vload(s.uf + i);
      if (r.z) {
        const V zv = vload(s.zf + i);
        o = o * (zv * vsigmoid(zv));
      }
      vstore(s.y + i, o);
    }
    if (osum)
      add_seq(osum, r.idx, t0, s.y, n);
    else
      store_span(orow + t0, s.y, n);
  }
  if (p.last_state) store_state(static_cast<Acc*>(p.last_state) + r.index * N, h, N, nv);
}

template <class S, int NV>
void fwd_rows(const SelectiveScanFwdParams& p, int64_t r0, int64_t r1, void* scratch) {
  for (int64_t r = r0; r < r1; ++r) fwd_row<S, NV>(p, r / p.dim, r % p.dim, scratch, nullptr);
}

// Multi-order: rows [r0, r1) = (batch, channel) pairs along ordering k, added to order_sum.
template <class S, int NV>
void fwd_multi_rows(const SelectiveScanFwdParams& p, int64_t k, int64_t r0, int64_t r1, void* scratch) {
  using Acc = typename AccOf<S>::type;
  const int64_t channels = p.dim / p.n_orders;
  for (int64_t r = r0; r < r1; ++r)
    fwd_row<S, NV>(p, r / channels, k * channels + r % channels, scratch,
                   static_cast<Acc*>(p.order_sum) + r * p.seqlen);
}

// ------------------------------------------------------------------------------------------------
// Backward. A task is one (batch, channel block). It walks the chunks from last to first, and in
// each chunk every row of the block in turn; a row's carried gradient and accumulators wait in a
// small per-row record between chunks. So the memory a task touches per chunk (the block's dB/dC
// partial rows, the group's B/C rows, the recomputed decays) grows with the chunk, not with seqlen.
//   g_t = dL/dh_t = gy_t * C_t + exp(dt_{t+1} A) * g_{t+1},   g_{L-1} includes dL/d last_state
//   dC_t += gy_t h_t, dB_t += g_t dt_t u_t, dA += g_t h_{t-1} dA_t dt_t,
//   ddt_t = sum_n g_t h_{t-1} dA_t A + u_t <g_t, B_t>,  du_t = gy_t D + dt_t <g_t, B_t>
inline int64_t max_block_rows(const SelectiveScanBwdParams& q) {
  int64_t m = 0;
  for (int64_t k = 0; k < q.n_blocks; ++k) {
    const int64_t r = q.block_start[k + 1] - q.block_start[k];
    m = r > m ? r : m;
  }
  return m;
}

template <class Acc>
struct BwdBufs {
  Acc *uf, *dt, *du, *sg, *gy, *g0, *zf, *sz, *y, *gu, *gdt, *sA, *sB;
  Acc *Q, *DA, *P, *PAB, *Bc, *Cc;
  Acc* rows;  // per row of the block: carry, dA, dB (fixed), dC (fixed) [dstate_pad each], dD, dbias
  int64_t row_stride;
  vec<Acc>*h, *A2, *carry, *gA;  // used when the state does not fit the register-resident variants
  uintptr_t end;
  BwdBufs(uintptr_t base, const SelectiveScanBwdParams& q) {
    constexpr int W = lanes<Acc>;
    const SelectiveScanFwdParams& p = q.fwd;
    const int64_t T = p.chunk, Np = p.dstate_pad;
    Carver c{base};
    Acc** per_step[] = {&uf, &dt, &du, &sg, &gy, &g0, &zf, &sz, &y, &gu, &gdt, &sA, &sB};
    for (Acc** a : per_step) *a = c.take<Acc>(T + W);
    Q = c.take<Acc>(T * Np);   // per step i: exp(dt_i A) * h_{i-1}
    DA = c.take<Acc>(T * Np);  // per step i: exp(dt_i A)
    P = c.take<Acc>(T * W);
    PAB = c.take<Acc>(2 * T * W);  // per step: the sA and sB vectors
    // Per-step gradient rows of a FIXED B or C, summed over the chunk afterwards.
    Bc = c.take<Acc>(p.groups_B ? 0 : T * Np);
    Cc = c.take<Acc>(p.groups_C ? 0 : T * Np);
    row_stride = round_up(4 * Np + 2, 16);
    rows = c.take<Acc>(max_block_rows(q) * row_stride);
    vec<Acc>** states[] = {&h, &A2, &carry, &gA};
    for (vec<Acc>** a : states) *a = c.take<vec<Acc>>(Np / W);
    end = c.p;
  }
};

// One chunk of one row. `st` is the row's record; Bp/Cp are the block's dB/dC rows for this chunk;
// with orderings du is added to gu_row (the original order) instead of stored.
template <class S, int NV>
void bwd_chunk(const SelectiveScanBwdParams& q, BwdBufs<typename AccOf<S>::type>& s, int64_t b, int64_t d, int64_t c,
               typename AccOf<S>::type* st, typename AccOf<S>::type* Bp, typename AccOf<S>::type* Cp,
               typename AccOf<S>::type* gu_row) {
  using Acc = typename AccOf<S>::type;
  using V = vec<Acc>;
  constexpr int W = lanes<Acc>;
  const SelectiveScanFwdParams& p = q.fwd;
  const int64_t L = p.seqlen, N = p.dstate, Np = p.dstate_pad, T = p.chunk;
  const int nv = NV > 0 ? NV : int(Np / W);
  constexpr int NL = NV > 0 ? NV : 1;
  const int64_t t0 = c * T, n = (L - t0) < T ? (L - t0) : T, nr = round_up(n, W);
  Acc* st_carry = st;
  Acc* st_gA = st + Np;

  const Row<S> r(p, b, d);
  const int64_t row = r.index;
  const S* grow = static_cast<const S*>(q.grad_out) + b * q.grad_out_batch_stride + r.channel * q.grad_out_dim_stride;
  load_seq(r.u, r.idx, t0, s.uf, n);
  load_seq(r.delta, r.idx, t0, s.dt, n);
  load_seq(grow, r.idx, t0, s.gy, n);
  chunk_dt<Acc>(p, r.bias, s.uf, s.dt, s.du, s.sg, n);

  // Through the gate first (it needs y only for grad_z): gy = dL/dy; g0 keeps dL/dout.
  if (r.z) {
    load_span(r.z + t0, s.zf, n);
    for (int64_t i = 0; i < n; i += W) {
      const V zv = vload(s.zf + i), g = vload(s.gy + i);
      const V sz = vsigmoid(zv);
      vstore(s.sz + i, sz);
      vstore(s.g0 + i, g);
      vstore(s.gy + i, g * (zv * sz));
    }
  }

  // Recompute the chunk's states from its checkpoint, forward: per step the decay factors and
  // exp(dt A) * h_{t-1} for the reverse pass, dC_t += gy_t h_t, and y for the gate's gradient.
  V hl[NL], A2l[NL], carryl[NL], gAl[NL];
  V* h = NV > 0 ? hl : s.h;
  V* A2 = NV > 0 ? A2l : s.A2;
  V* carry = NV > 0 ? carryl : s.carry;
  V* gA = NV > 0 ? gAl : s.gA;
  for (int v = 0; v < nv; ++v) A2[v] = vload(r.A + v * W) * Acc(kLog2e);
  const StateTail<Acc> keep(N, nv);
  load_state(h, static_cast<const Acc*>(p.checkpoints) + (row * p.n_chunks + c) * N, N, nv);
  with_exactness(chunk_finite(s.dt, s.du, n, h, nv), [&]<bool kExact>() {  // as the forward did
    const Acc* Bt = r.B + t0 * r.B_step;
    const Acc* Ct = r.C + t0 * r.C_step;
    Acc* Qi = s.Q;
    Acc* DAi = s.DA;
    Acc* Cpi = Cp;
    for (int64_t i = 0; i < n; ++i, Bt += r.B_step, Ct += r.C_step, Qi += Np, DAi += Np, Cpi += Np) {
      const V dtv = vsplat(s.dt[i]), duv = vsplat(s.du[i]), gyv = vsplat(s.gy[i]);
      V acc{};
      for (int v = 0; v < nv; ++v) {
        const V dA = decay<Acc, kExact>(dtv * A2[v]);
        const V qv = dA * h[v];
        h[v] = qv + duv * vload(Bt + v * W);
        vstore(Qi + v * W, qv);
        vstore(DAi + v * W, dA);
        vstore(Cpi + v * W, vload(Cpi + v * W) + gyv * h[v]);
        if (r.z) acc += keep(h[v] * vload(Ct + v * W), v);
      }
      if (r.z) vstore(s.P + i * W, acc);
    }
  });
  if (r.z) {
    reduce_lanes(s.P, s.y, n);
    for (int64_t i = n; i < nr; ++i) s.y[i] = Acc(0);
    for (int64_t i = 0; i < n; i += W) {
      const V zv = vload(s.zf + i), sz = vload(s.sz + i);
      const V o = vload(s.y + i) + r.D * vload(s.uf + i);
      vstore(s.zf + i, vload(s.g0 + i) * o * sz * (Acc(1) + zv * (Acc(1) - sz)));
    }
    store_span(static_cast<S*>(q.grad_z) + row * L + t0, s.zf, n);
  }
  V gDv{};
  for (int64_t i = 0; i < n; i += W) gDv += vload(s.gy + i) * vload(s.uf + i);

  // Reverse over the chunk: branch-free whether B/C are variable (Bp/Cp: the block's partial
  // rows) or fixed (Bp/Cp: per-step rows, summed below).
  {
    for (int v = 0; v < nv; ++v) {
      carry[v] = vload(st_carry + v * W);
      gA[v] = vload(st_gA + v * W);
    }
    const Acc* Bt = r.B + (t0 + n - 1) * r.B_step;
    const Acc* Ct = r.C + (t0 + n - 1) * r.C_step;
    for (int64_t i = n - 1; i >= 0; --i, Bt -= r.B_step, Ct -= r.C_step) {
      const V gyv = vsplat(s.gy[i]), duv = vsplat(s.du[i]), dtv = vsplat(s.dt[i]);
      const Acc* Qi = s.Q + i * Np;
      const Acc* DAi = s.DA + i * Np;
      Acc* Bpi = Bp + i * Np;
      V sA{}, sB{};
      for (int v = 0; v < nv; ++v) {
        const V g = carry[v] + gyv * vload(Ct + v * W);
        vstore(Bpi + v * W, vload(Bpi + v * W) + g * duv);
        const V x = g * vload(Qi + v * W);
        gA[v] += x * dtv;
        sA += keep(x * A2[v], v);
        sB += keep(g * vload(Bt + v * W), v);
        carry[v] = g * vload(DAi + v * W);
      }
      vstore(s.PAB + 2 * i * W, sA);
      vstore(s.PAB + (2 * i + 1) * W, sB);
    }
    for (int v = 0; v < nv; ++v) {
      vstore(st_carry + v * W, carry[v]);
      vstore(st_gA + v * W, gA[v]);
    }
  }
  for (int which = 0; which < 2; ++which) {
    if (which == 0 ? p.groups_B != 0 : p.groups_C != 0) continue;
    Acc* fix = st + (2 + which) * Np;
    const Acc* rows = which == 0 ? Bp : Cp;
    for (int v = 0; v < nv; ++v) {
      V a = vload(fix + v * W);
      for (int64_t i = 0; i < n; ++i) a += vload(rows + i * Np + v * W);
      vstore(fix + v * W, a);
    }
  }
  reduce_lanes_strided(s.PAB, s.sA, n, 2);
  reduce_lanes_strided(s.PAB + W, s.sB, n, 2);
  for (int64_t i = n; i < nr; ++i) s.sA[i] = s.sB[i] = Acc(0);
  V gbv{};
  for (int64_t i = 0; i < n; i += W) {
    const V sBs = vload(s.sB + i);
    // sA summed x * A * log2 e; ln 2 undoes the scale.
    V gdt = vload(s.sA + i) * Acc(kLn2) + vload(s.uf + i) * sBs;
    vstore(s.gu + i, vload(s.gy + i) * r.D + vload(s.dt + i) * sBs);
    if (p.delta_softplus) gdt = gdt * vload(s.sg + i);
    gbv += gdt;
    vstore(s.gdt + i, gdt);
  }
  if (gu_row)
    add_seq(gu_row, r.idx, t0, s.gu, n);
  else
    store_span(static_cast<S*>(q.grad_u) + row * L + t0, s.gu, n);
  store_seq(static_cast<S*>(q.grad_delta) + row * L, r.idx, t0, s.gdt, n);
  st[4 * Np] += hsum<Acc>(gDv);
  st[4 * Np + 1] += hsum<Acc>(gbv);
}

// Rows [d0, d1) of batch b from the last chunk to the first, then their partial gradients out.
// Bpart/Cpart: the block's variable dB/dC partial rows (seqlen, dstate_pad), or null when fixed;
// gu: with orderings, per row of the block the grad_u sum (seqlen,), else null.
template <class S, int NV>
void bwd_block(const SelectiveScanBwdParams& q, BwdBufs<typename AccOf<S>::type>& s, int64_t b, int64_t d0, int64_t d1,
               typename AccOf<S>::type* Bpart, typename AccOf<S>::type* Cpart, typename AccOf<S>::type* gu) {
  using Acc = typename AccOf<S>::type;
  const SelectiveScanFwdParams& p = q.fwd;
  const int64_t Np = p.dstate_pad, N = p.dstate, T = p.chunk, L = p.seqlen;
  for (int64_t d = d0; d < d1; ++d) {
    Acc* st = s.rows + (d - d0) * s.row_stride;
    for (int64_t k = 0; k < s.row_stride; ++k) st[k] = Acc(0);
    if (q.grad_last_state) {
      const Acc* gl = static_cast<const Acc*>(q.grad_last_state) + (b * p.dim + d) * N;
      for (int64_t k = 0; k < N; ++k) st[k] = gl[k];
    }
  }
  for (int64_t c = p.n_chunks - 1; c >= 0; --c) {
    const int64_t c0 = c * T, n = (L - c0) < T ? (L - c0) : T;
    Acc* Bp = Bpart ? Bpart + c0 * Np : s.Bc;
    Acc* Cp = Cpart ? Cpart + c0 * Np : s.Cc;
    for (int64_t d = d0; d < d1; ++d) {
      // The block's partial rows start at 0; per-step rows of a fixed B/C restart for every row.
      if (d == d0 || !Bpart)
        for (int64_t k = 0; k < n * Np; ++k) Bp[k] = Acc(0);
      if (d == d0 || !Cpart)
        for (int64_t k = 0; k < n * Np; ++k) Cp[k] = Acc(0);
      bwd_chunk<S, NV>(q, s, b, d, c, s.rows + (d - d0) * s.row_stride, Bp, Cp, gu ? gu + (d - d0) * L : nullptr);
    }
  }
  for (int64_t d = d0; d < d1; ++d) {
    const Acc* st = s.rows + (d - d0) * s.row_stride;
    const int64_t row = b * p.dim + d;
    if (q.grad_initial_state)
      for (int64_t k = 0; k < N; ++k) static_cast<Acc*>(q.grad_initial_state)[row * N + k] = st[k];
    for (int64_t k = 0; k < Np; ++k) {
      static_cast<Acc*>(q.part_A)[row * Np + k] = st[Np + k];
      if (!p.groups_B) static_cast<Acc*>(q.part_B_fixed)[row * Np + k] = st[2 * Np + k];
      if (!p.groups_C) static_cast<Acc*>(q.part_C_fixed)[row * Np + k] = st[3 * Np + k];
    }
    if (q.part_D) static_cast<Acc*>(q.part_D)[row] = st[4 * Np];
    if (q.part_bias) static_cast<Acc*>(q.part_bias)[row] = st[4 * Np + 1];
  }
}

template <class S, int NV>
void bwd_tasks(const SelectiveScanBwdParams& q, int64_t t0, int64_t t1, void* scratch) {
  using Acc = typename AccOf<S>::type;
  const SelectiveScanFwdParams& p = q.fwd;
  const int64_t Np = p.dstate_pad, L = p.seqlen;
  BwdBufs<Acc> s(reinterpret_cast<uintptr_t>(scratch), q);
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t b = task / q.n_blocks, blk = task % q.n_blocks;
    Acc* Bpart = p.groups_B ? static_cast<Acc*>(q.part_B_var) + task * L * Np : nullptr;
    Acc* Cpart = p.groups_C ? static_cast<Acc*>(q.part_C_var) + task * L * Np : nullptr;
    bwd_block<S, NV>(q, s, b, q.block_start[blk], q.block_start[blk + 1], Bpart, Cpart, nullptr);
  }
}

// Multi-order: tasks [t0, t1) = (batch, channel block) pairs along ordering k; grad_u is added to
// fwd.order_sum, dB/dC go to the task's partial rows.
template <class S, int NV>
void bwd_multi_tasks(const SelectiveScanBwdParams& q, int64_t k, int64_t t0, int64_t t1, void* scratch) {
  using Acc = typename AccOf<S>::type;
  const SelectiveScanFwdParams& p = q.fwd;
  const int64_t Np = p.dstate_pad, L = p.seqlen, channels = p.dim / p.n_orders;
  BwdBufs<Acc> s(reinterpret_cast<uintptr_t>(scratch), q);
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t b = task / q.n_blocks, blk = task % q.n_blocks;
    const int64_t c0 = q.block_start[blk], c1 = q.block_start[blk + 1];
    bwd_block<S, NV>(q, s, b, k * channels + c0, k * channels + c1, static_cast<Acc*>(q.part_B_var) + task * L * Np,
                     static_cast<Acc*>(q.part_C_var) + task * L * Np,
                     static_cast<Acc*>(p.order_sum) + (b * channels + c0) * L);
  }
}

// ------------------------------------------------------------------------------------------------
// Entry points: pick the storage type and the register-resident state width (NV vectors of
// float32 for dstate_pad / lanes in {1, 2, 4, 8}, else 0: the state lives in scratch).
template <int V>
struct Nv {
  static constexpr int value = V;
};
template <class S, class F>
void with_nv(int64_t dstate_pad, F&& f) {
  using Acc = typename AccOf<S>::type;
  if constexpr (__is_same(Acc, float)) {
    switch (dstate_pad / lanes<Acc>) {
      case 1: return f(Nv<1>{});
      case 2: return f(Nv<2>{});
      case 4: return f(Nv<4>{});
      case 8: return f(Nv<8>{});
      default: break;
    }
  }
  f(Nv<0>{});
}

int64_t fwd_scratch_bytes(const SelectiveScanFwdParams& p) {
  return p.dtype == ScalarKind::Float64 ? int64_t(FwdBufs<double>(0, p).end) : int64_t(FwdBufs<float>(0, p).end);
}
int64_t bwd_scratch_bytes(const SelectiveScanBwdParams& q) {
  return q.fwd.dtype == ScalarKind::Float64 ? int64_t(BwdBufs<double>(0, q).end) : int64_t(BwdBufs<float>(0, q).end);
}

void fwd_entry(const SelectiveScanFwdParams& p, int64_t r0, int64_t r1, void* s) {
  with_storage(p.dtype, [&](auto st) {
    using S = decltype(st);
    with_nv<S>(p.dstate_pad, [&](auto nv) { fwd_rows<S, decltype(nv)::value>(p, r0, r1, s); });
  });
}
void bwd_entry(const SelectiveScanBwdParams& q, int64_t t0, int64_t t1, void* s) {
  with_storage(q.fwd.dtype, [&](auto st) {
    using S = decltype(st);
    with_nv<S>(q.fwd.dstate_pad, [&](auto nv) { bwd_tasks<S, decltype(nv)::value>(q, t0, t1, s); });
  });
}
void fwd_multi_entry(const SelectiveScanFwdParams& p, int64_t k, int64_t r0, int64_t r1, void* s) {
  with_storage(p.dtype, [&](auto st) {
    using S = decltype(st);
    with_nv<S>(p.dstate_pad, [&](auto nv) { fwd_multi_rows<S, decltype(nv)::value>(p, k, r0, r1, s); });
  });
}
void bwd_multi_entry(const SelectiveScanBwdParams& q, int64_t k, int64_t t0, int64_t t1, void* s) {
  with_storage(q.fwd.dtype, [&](auto st) {
    using S = decltype(st);
    with_nv<S>(q.fwd.dstate_pad, [&](auto nv) { bwd_multi_tasks<S, decltype(nv)::value>(q, k, t0, t1, s); });
  });
}

#define MK_STR2(x) #x
#define MK_STR(x) MK_STR2(x)
const SelectiveScanKernelTable kSelectiveScanTable{MK_STR(MK_ISA),   MK_VEC_BYTES,       &fwd_entry,
                                                   &bwd_entry,       &fwd_scratch_bytes, &bwd_scratch_bytes,
                                                   &fwd_multi_entry, &bwd_multi_entry};
#undef MK_STR
#undef MK_STR2

}  // namespace
}  // namespace medkernels::cpu::MK_ISA
