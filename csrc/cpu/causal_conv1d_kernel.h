// Causal depthwise conv1d CPU kernel bodies (causal-conv1d's causal_conv1d_fn), forward and backward.
//
// Per (batch, channel) row, with the input extended to the left by the initial states (or zeros):
//   pre[t] = bias + sum_k w[k] * e[t + k],  e[W-1 + t] = x[t];  out = silu(pre) or pre
// (taps reading another seq_idx segment count as 0). Vectorised over the sequence; compiled once per
// instruction set from csrc/cpu/isa_kernels.cpp.in, no torch header here.
#pragma once

#include "medkernels/cpu/causal_conv1d.h"
#include "medkernels/cpu/simd.h"

namespace medkernels::cpu::MK_ISA {
namespace {

template <class Acc>
struct ConvBufs {
  Acc *e, *pre, *g, *de;
  uintptr_t end;
  ConvBufs(uintptr_t base, const ConvParams& p) {
    const int64_t n = p.seqlen + p.width + 2 * 64;
    Carver c{base};
    e = c.take<Acc>(n);
    pre = c.take<Acc>(n);
    g = c.take<Acc>(n);
    de = c.take<Acc>(n);
    end = c.p;
  }
};

// Fills e (width - 1 states, then the row), padded with zeros to whole vectors past the end.
template <class S, class Acc>
void load_extended(const ConvParams& p, int64_t b, int64_t d, Acc* e) {
  const int64_t W1 = p.width - 1;
  const S* init = p.initial_states ? static_cast<const S*>(p.initial_states) + (b * p.dim + d) * W1 : nullptr;
  for (int64_t i = 0; i < W1; ++i) e[i] = init ? to_acc<Acc>(init[i]) : Acc(0);
  load_span(static_cast<const S*>(p.x) + b * p.x_batch_stride + d * p.x_dim_stride, e + W1, p.seqlen);
  for (int64_t i = W1 + round_up(p.seqlen, lanes<Acc>); i < W1 + p.seqlen + p.width + lanes<Acc>; ++i) e[i] = Acc(0);
}

// pre[t] for t < seqlen (whole vectors; the tail lanes hold garbage-free zeros-based values).
template <class Acc>
void conv_row(const ConvParams& p, int64_t b, const Acc* w, Acc bias, const Acc* e, Acc* pre) {
  constexpr int W = lanes<Acc>;
  const int64_t L = p.seqlen, K = p.width;
  if (!p.seq_idx) {
    for (int64_t t = 0; t < L; t += W) {
      vec<Acc> acc = vsplat(bias);
      for (int64_t k = 0; k < K; ++k) acc += w[k] * vload(e + t + k);
      vstore(pre + t, acc);
    }
    return;
  }
  const int64_t* seq = p.seq_idx + b * L;
  for (int64_t t = 0; t < L; ++t) {
    Acc acc = bias;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t src = t - (K - 1) + k;
      if (src < 0 || seq[src] == seq[t]) acc += w[k] * e[t + k];
    }
    pre[t] = acc;
  }
}

template <class S>
void fwd_rows(const ConvParams& p, int64_t r0, int64_t r1, void* scratch) {
  using Acc = typename AccOf<S>::type;
  constexpr int W = lanes<Acc>;
  ConvBufs<Acc> s(reinterpret_cast<uintptr_t>(scratch), p);
  const int64_t L = p.seqlen, W1 = p.width - 1;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / p.dim, d = r % p.dim;
    load_extended<S, Acc>(p, b, d, s.e);
    const Acc* w = static_cast<const Acc*>(p.weight) + d * p.width;
    conv_row<Acc>(p, b, w, p.bias ? static_cast<const Acc*>(p.bias)[d] : Acc(0), s.e, s.pre);
    if (p.silu)
      for (int64_t t = 0; t < L; t += W) {
        const vec<Acc> v = vload(s.pre + t);
        vstore(s.pre + t, v * vsigmoid(v));
      }
    store_span(static_cast<S*>(p.out) + r * L, s.pre, L);
    if (p.final_states) store_span(static_cast<S*>(p.final_states) + r * W1, s.e + L, W1);
  }
}

template <class S>
void bwd_rows(const ConvParams& p, int64_t r0, int64_t r1, void* scratch) {
  using Acc = typename AccOf<S>::type;
  constexpr int W = lanes<Acc>;
  ConvBufs<Acc> s(reinterpret_cast<uintptr_t>(scratch), p);
  const int64_t L = p.seqlen, K = p.width, W1 = K - 1, Lr = round_up(L, W);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / p.dim, d = r % p.dim;
    load_extended<S, Acc>(p, b, d, s.e);
    const Acc* w = static_cast<const Acc*>(p.weight) + d * K;
    const Acc bias = p.bias ? static_cast<const Acc*>(p.bias)[d] : Acc(0);
    load_span(static_cast<const S*>(p.dout) + b * p.dout_batch_stride + d * p.dout_dim_stride, s.g, L);
    for (int64_t t = L; t < Lr + W; ++t) s.g[t] = Acc(0);
    if (p.silu) {  // g = dout * silu'(pre), pre recomputed
      conv_row<Acc>(p, b, w, bias, s.e, s.pre);
      for (int64_t t = 0; t < L; t += W) {
        const vec<Acc> v = vload(s.pre + t), sg = vsigmoid(v);
        vstore(s.g + t, vload(s.g + t) * sg * (Acc(1) + v * (Acc(1) - sg)));
      }
      for (int64_t t = L; t < Lr; ++t) s.g[t] = Acc(0);
    }
    // de[p] = sum_k w[k] g[p - k] (p - k a valid output), dw[k] = sum_t g[t] e[t + k], dbias = sum_t g[t]
    Acc* dw = static_cast<Acc*>(p.dweight_part) + r * K;
    vec<Acc> gsum{};
    for (int64_t t = 0; t < Lr; t += W) gsum += vload(s.g + t);
    static_cast<Acc*>(p.dbias_part)[r] = hsum<Acc>(gsum);
    for (int64_t i = 0; i < L + W1 + W; ++i) s.de[i] = Acc(0);
    if (!p.seq_idx) {
      for (int64_t k = 0; k < K; ++k) {
        vec<Acc> acc{};
        const vec<Acc> wk = vsplat(w[k]);
        for (int64_t t = 0; t < Lr; t += W) {
          const vec<Acc> g = vload(s.g + t);
          acc += g * vload(s.e + t + k);
          vstore(s.de + t + k, vload(s.de + t + k) + wk * g);
        }
        dw[k] = hsum<Acc>(acc);
      }
    } else {
      const int64_t* seq = p.seq_idx + b * L;
      for (int64_t k = 0; k < K; ++k) dw[k] = Acc(0);
      for (int64_t t = 0; t < L; ++t)
        for (int64_t k = 0; k < K; ++k) {
          const int64_t src = t - W1 + k;
          if (src < 0 || seq[src] == seq[t]) {
            s.de[t + k] += w[k] * s.g[t];
            dw[k] += s.g[t] * s.e[t + k];
          }
        }
    }
    if (p.dfinal) {
      const Acc* df = static_cast<const Acc*>(p.dfinal) + r * W1;
      for (int64_t j = 0; j < W1; ++j) s.de[L + j] += df[j];
    }
    store_span(static_cast<S*>(p.dx) + r * L, s.de + W1, L);
    if (p.dinit) store_span(static_cast<S*>(p.dinit) + r * W1, s.de, W1);
  }
}

void conv_fwd_entry(const ConvParams& p, int64_t r0, int64_t r1, void* s) {
  switch (p.dtype) {
    case ScalarKind::Float32: return fwd_rows<float>(p, r0, r1, s);
    case ScalarKind::Float64: return fwd_rows<double>(p, r0, r1, s);
    case ScalarKind::Float16: return fwd_rows<f16>(p, r0, r1, s);
    case ScalarKind::BFloat16: return fwd_rows<bf16>(p, r0, r1, s);
  }
}
void conv_bwd_entry(const ConvParams& p, int64_t r0, int64_t r1, void* s) {
  switch (p.dtype) {
    case ScalarKind::Float32: return bwd_rows<float>(p, r0, r1, s);
    case ScalarKind::Float64: return bwd_rows<double>(p, r0, r1, s);
    case ScalarKind::Float16: return bwd_rows<f16>(p, r0, r1, s);
    case ScalarKind::BFloat16: return bwd_rows<bf16>(p, r0, r1, s);
  }
}
int64_t conv_scratch_bytes(const ConvParams& p) {
  return p.dtype == ScalarKind::Float64 ? int64_t(ConvBufs<double>(0, p).end) : int64_t(ConvBufs<float>(0, p).end);
}

#define MK_STR2(x) #x
#define MK_STR(x) MK_STR2(x)
const CausalConv1dKernelTable kCausalConv1dTable{MK_STR(MK_ISA), MK_VEC_BYTES, &conv_fwd_entry, &conv_bwd_entry,
                                                 &conv_scratch_bytes};
#undef MK_STR
#undef MK_STR2

}  // namespace
}  // namespace medkernels::cpu::MK_ISA
