// FasterKAN RSWAF basis CPU kernel body: the basis rows phi = 1 - tanh((x - grid) * inv_den)^2 for the
// forward's blocked product, and the backward's contraction of dL/dphi with the basis derivative.
//
// Compiled once per instruction set from csrc/cpu/isa_kernels.cpp.in; no torch header here. Per row,
// x is expanded once to the flattened (in * grids) index in a per-thread buffer, then every pass is one
// vector loop over k. tanh comes from one exp: with e = exp(-2|a|) (in (0, 1], no overflow),
//   tanh(a) = sign(a) (1 - e) / (1 + e),  1 - tanh(a)^2 = 4 e / (1 + e)^2,
// so the basis has no cancellation. Past |a| = kKanZero it is exactly 0 (e < 2e-35 there, far below any
// float32 sum it enters), on every backend and in the reference: the same zeros everywhere, so an
// infinite weight meets the same 0 * inf = NaN on every backend.
#pragma once

#include "medkernels/cpu/gemm.h"
#include "medkernels/cpu/rswaf_kan.h"
#include "medkernels/cpu/simd.h"

namespace medkernels::cpu::MK_ISA {
namespace {

template <class T>
struct KanBufs {
  T* xr;  // (kpad,) x of the row, repeated per grid point, then zero-padded
  uintptr_t end;
  KanBufs(uintptr_t base, const KanParams& p) {
    Carver c{base};
    xr = c.take<T>(round_up(p.k, lanes<T>));
    end = c.p;
  }
};

// xr[(i - c0) * G + g] = x[row, i] for channels [c0, c1)
template <class S, class T>
inline void expand_row(const KanParams& p, int64_t r, int64_t c0, int64_t c1, T* xr) {
  const S* x = static_cast<const S*>(p.x) + r * p.in;
  const int64_t G = p.grids;
  for (int64_t i = c0; i < c1; ++i) {
    const T v = to_acc<T>(x[i]);
    for (int64_t g = 0; g < G; ++g) xr[(i - c0) * G + g] = v;
  }
}

// th = tanh(a), ph = 1 - tanh(a)^2 (vector).
constexpr double kKanZero = 40.0;  // medkernels.ops.rswaf_kan's _ZERO_BEYOND

template <class T>
inline void tanh_sech2(vec<T> a, vec<T>& th, vec<T>& ph) {
  const auto neg = a < T(0);
  const vec<T> abs_a = neg ? -a : a;
  const vec<T> e = abs_a > T(kKanZero) ? vec<T>{} : vexp_nonpos(abs_a * T(-2));
  const vec<T> r = T(1) / (e + T(1));
  const vec<T> t = (T(1) - e) * r;
  th = neg ? -t : t;
  ph = (e * T(4)) * r * r;
}
template <class T>
inline void tanh_sech2(T a, T& th, T& ph) {
  const T abs_a = a < 0 ? -a : a;
  const T e = abs_a > T(kKanZero) ? T(0) : sexp(-2 * abs_a);
  const T r = T(1) / (e + T(1));
  const T t = (T(1) - e) * r;
  th = a < 0 ? -t : t;
  ph = e * T(4) * r * r;
}

template <class S, class T>
void kan_basis(const KanParams& p, const KanTile& t, void* phi_v, void* scratch) {
  constexpr int W = lanes<T>;
  KanBufs<T> s(reinterpret_cast<uintptr_t>(scratch), p);
  const T* gr = static_cast<const T*>(p.grid_rep) + t.c0 * p.grids;
  const T h = T(p.inv_den);
  const int64_t K = (t.c1 - t.c0) * p.grids;
  const T* grid = static_cast<const T*>(p.grid_rep);
  const int64_t G = p.grids;
  for (int64_t r = t.r0; r < t.r1; ++r) {
    T* phi = static_cast<T*>(phi_v) + (r - t.r0) * t.ld;
    if (G % W == 0) {  // whole vectors of grid points per channel: no expansion
      const S* x = static_cast<const S*>(p.x) + r * p.in;
      for (int64_t i = t.c0; i < t.c1; ++i) {
        const vec<T> xv = vsplat(to_acc<T>(x[i]));
        T* o = phi + (i - t.c0) * G;
        for (int64_t j = 0; j < G; j += W) {
          vec<T> th, ph;
          tanh_sech2<T>((xv - vload(grid + j)) * h, th, ph);
          vstore(o + j, ph);
        }
      }
      continue;
    }
    expand_row<S, T>(p, r, t.c0, t.c1, s.xr);
    int64_t k = 0;
    for (; k + W <= K; k += W) {
      vec<T> th, ph;
      tanh_sech2<T>((vload(s.xr + k) - vload(gr + k)) * h, th, ph);
      vstore(phi + k, ph);
    }
    for (; k < K; ++k) {
      T th, ph;
      tanh_sech2<T>((s.xr[k] - gr[k]) * h, th, ph);
      phi[k] = ph;
    }
  }
}

// dL/da = dL/dphi * (-2 tanh(a) phi); dx = inv_den * sum_g dL/da; dgrid = -inv_den * sum_i dL/da (the
// torch side applies -inv_den after summing rows); dinv = sum_k dL/da * (x - grid).
template <class S, class T>
void kan_backward(const KanParams& p, const KanTile& t, void* dphi_v, void* phi_v, void* scratch) {
  constexpr int W = lanes<T>;
  KanBufs<T> s(reinterpret_cast<uintptr_t>(scratch), p);
  const int64_t G = p.grids, K = (t.c1 - t.c0) * G;
  const T* gr = static_cast<const T*>(p.grid_rep) + t.c0 * G;
  const T h = T(p.inv_den);
  const T* grid = static_cast<const T*>(p.grid_rep);
  for (int64_t r = t.r0; r < t.r1; ++r) {
    T* da = static_cast<T*>(dphi_v) + (r - t.r0) * t.ld;
    T* phi = phi_v ? static_cast<T*>(phi_v) + (r - t.r0) * t.ld : nullptr;
    if (G % W == 0) {  // whole vectors of grid points per channel: sums kept in vectors
      const S* x = static_cast<const S*>(p.x) + r * p.in;
      S* dx = p.dx ? static_cast<S*>(p.dx) + r * p.in : nullptr;
      T* dg = p.dgrid_rows ? static_cast<T*>(p.dgrid_rows) + r * G : nullptr;
      vec<T> dinv{};
      for (int64_t i = t.c0; i < t.c1; ++i) {
        const vec<T> xv = vsplat(to_acc<T>(x[i]));
        const T* d = da + (i - t.c0) * G;
        T* ph_out = phi ? phi + (i - t.c0) * G : nullptr;
        vec<T> dsum{};
        for (int64_t j = 0; j < G; j += W) {
          const vec<T> diff = xv - vload(grid + j);
          vec<T> th, ph;
          tanh_sech2<T>(diff * h, th, ph);
          const vec<T> g = vload(d + j) * (T(-2) * th * ph);
          if (ph_out) vstore(ph_out + j, ph);
          dinv += g * diff;
          dsum += g;
          if (dg) vstore(dg + j, vload(dg + j) + g);
        }
        if (dx) dx[i] = from_acc<S>(hsum<T>(dsum) * h);
      }
      if (p.dinv_rows) static_cast<T*>(p.dinv_rows)[r] += hsum<T>(dinv);
      continue;
    }
    expand_row<S, T>(p, r, t.c0, t.c1, s.xr);
    vec<T> dinv{};
    T dinv_s = 0;
    int64_t k = 0;
    for (; k + W <= K; k += W) {
      const vec<T> d = vload(s.xr + k) - vload(gr + k);
      vec<T> th, ph;
      tanh_sech2<T>(d * h, th, ph);
      const vec<T> g = vload(da + k) * (T(-2) * th * ph);
      vstore(da + k, g);
      if (phi) vstore(phi + k, ph);
      dinv += g * d;
    }
    for (; k < K; ++k) {
      const T d = s.xr[k] - gr[k];
      T th, ph;
      tanh_sech2<T>(d * h, th, ph);
      const T g = da[k] * (T(-2) * th * ph);
      da[k] = g;
      if (phi) phi[k] = ph;
      dinv_s += g * d;
    }
    if (p.dinv_rows) static_cast<T*>(p.dinv_rows)[r] += hsum<T>(dinv) + dinv_s;
    if (p.dx) {
      S* dx = static_cast<S*>(p.dx) + r * p.in;
      for (int64_t i = t.c0; i < t.c1; ++i) {
        const T* d = da + (i - t.c0) * G;
        T acc = 0;
        for (int64_t g = 0; g < G; ++g) acc += d[g];
        dx[i] = from_acc<S>(acc * h);
      }
    }
    if (p.dgrid_rows) {
      T* dg = static_cast<T*>(p.dgrid_rows) + r * G;
      for (int64_t i = 0; i < t.c1 - t.c0; ++i)
        for (int64_t g = 0; g < G; ++g) dg[g] += da[i * G + g];
    }
  }
}

template <class F>
inline void kan_dispatch(const KanParams& p, F&& f) {
  with_storage(p.dtype, [&](auto s) {
    using S = decltype(s);
    if constexpr (__is_same(S, double))
      f(S{}, double{});
    else
      f(S{}, float{});
  });
}

void kan_basis_entry(const KanParams& p, const KanTile& t, void* phi, void* scratch) {
  kan_dispatch(p, [&](auto s, auto a) { kan_basis<decltype(s), decltype(a)>(p, t, phi, scratch); });
}
void kan_backward_entry(const KanParams& p, const KanTile& t, void* dphi, void* phi, void* scratch) {
  kan_dispatch(p, [&](auto s, auto a) { kan_backward<decltype(s), decltype(a)>(p, t, dphi, phi, scratch); });
}
int64_t kan_scratch_bytes(const KanParams& p) {
  return p.acc == ScalarKind::Float64 ? int64_t(KanBufs<double>(0, p).end) : int64_t(KanBufs<float>(0, p).end);
}

#define MK_STR2(x) #x
#define MK_STR(x) MK_STR2(x)
const RswafKanKernelTable kRswafKanTable{MK_STR(MK_ISA),
                                         MK_VEC_BYTES,
                                         &kan_basis_entry,
                                         &kan_backward_entry,
                                         &kan_scratch_bytes,
                                         {&gemm_packed_b_bytes_entry, &gemm_b_panel_count_entry, &gemm_pack_b_entry,
                                          &gemm_scratch_bytes_entry, &gemm_tiles_entry}};
#undef MK_STR
#undef MK_STR2

}  // namespace
}  // namespace medkernels::cpu::MK_ISA
