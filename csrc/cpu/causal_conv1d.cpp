// Causal depthwise conv1d (causal-conv1d's causal_conv1d_fn), CPU forward and backward.
//
// Per (batch, channel) row with input extended to the left by the initial states (or zeros):
//   pre[t] = bias + sum_k w[k] * x[t - (W-1) + k]   (taps from another seq_idx segment count as 0)
//   out[t] = silu(pre[t]) or pre[t];  final_states = the last W-1 extended inputs.
// Any width. This file is the torch side (checks, allocation, the ordered batch reductions of the
// weight/bias gradients: deterministic); the loops live in causal_conv1d_kernel.h, per instruction set.

#include "medkernels/cpu/causal_conv1d.h"
#include "common.h"
#include "medkernels/cpu/isa.h"
#include "selective_scan_common.h"

namespace medkernels::cpu {
namespace {

struct ConvShape {
  int64_t batch, dim, seqlen, width;
};

ConvShape check(const char* op, const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                const std::optional<Tensor>& seq_idx, const std::optional<Tensor>& initial_states) {
  MK_CHECK(x.device().is_cpu(), op, ": expected CPU tensors, got x on ", x.device());
  MK_CHECK(x.dim() == 3, op, ": x must be (batch, dim, seqlen), got ", x.sizes());
  const auto st = x.scalar_type();
  MK_CHECK(st == kFloat || st == kDouble || st == kHalf || st == kBFloat16, op,
           ": x must be float32, float16, bfloat16 or float64, got ", st);
  MK_CHECK(weight.dim() == 2 && weight.size(0) == x.size(1) && weight.size(1) >= 1, op,
           ": weight must be (dim, width) with dim=", x.size(1), ", got ", weight.sizes());
  MK_CHECK(weight.scalar_type() == st || weight.scalar_type() == kFloat, op, ": weight must have x's dtype or float32");
  if (bias) MK_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1), op, ": bias must be (dim,)");
  if (seq_idx) {
    MK_CHECK(seq_idx->scalar_type() == kInt || seq_idx->scalar_type() == kLong, op, ": seq_idx must be int32");
    MK_CHECK(seq_idx->dim() == 2 && seq_idx->size(0) == x.size(0) && seq_idx->size(1) == x.size(2), op,
             ": seq_idx must be (batch, seqlen)");
    MK_CHECK(!initial_states, op, ": initial_states must be None when seq_idx is given");
  }
  if (initial_states)
    MK_CHECK(initial_states->dim() == 3 && initial_states->size(0) == x.size(0) &&
                 initial_states->size(1) == x.size(1) && initial_states->size(2) == weight.size(1) - 1,
             op, ": initial_states must be (batch, dim, width - 1)");
  return {x.size(0), x.size(1), x.size(2), weight.size(1)};
}

// The kernel's view of the problem; acc copies of weight/bias and int64 seq_idx are kept alive here.
struct ConvProblem {
  ConvParams p;
  Tensor w, b, seq, init;
};

ConvProblem prepare(const ConvShape& s, const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                    const std::optional<Tensor>& seq_idx, const std::optional<Tensor>& initial_states, bool silu,
                    const char* op) {
  const ScalarType acc = x.scalar_type() == kDouble ? kDouble : kFloat;
  ConvProblem pr;
  ConvParams& p = pr.p;
  p.dtype = kind_of(x.scalar_type(), op);
  p.batch = s.batch;
  p.dim = s.dim;
  p.seqlen = s.seqlen;
  p.width = s.width;
  p.silu = silu;
  MK_CHECK(s.seqlen <= 1 || x.stride(2) == 1, op, ": x must have unit stride along seqlen");
  p.x = x.const_data_ptr();
  p.x_batch_stride = x.stride(0);
  p.x_dim_stride = x.stride(1);
  pr.w = weight.to(acc).contiguous();
  p.weight = pr.w.const_data_ptr();
  if (bias) {
    pr.b = bias->to(acc).contiguous();
    p.bias = pr.b.const_data_ptr();
  }
  if (seq_idx) {
    pr.seq = seq_idx->to(kLong).contiguous();
    p.seq_idx = pr.seq.const_data_ptr<int64_t>();
  }
  if (initial_states) {
    pr.init = initial_states->contiguous();
    p.initial_states = pr.init.const_data_ptr();
  }
  return pr;
}

std::tuple<Tensor, Tensor> causal_conv1d_fwd_cpu(const Tensor& x, const Tensor& weight,
                                                 const std::optional<Tensor>& bias,
                                                 const std::optional<Tensor>& seq_idx,
                                                 const std::optional<Tensor>& initial_states, bool return_final_states,
                                                 bool silu) {
  const ConvShape s = check("causal_conv1d_fwd", x, weight, bias, seq_idx, initial_states);
  MK_CHECK(!(seq_idx && return_final_states), "causal_conv1d_fwd: final states are not returned with seq_idx");
  Tensor out = empty_on(x, {s.batch, s.dim, s.seqlen});
  Tensor fin = return_final_states ? empty_on(x, {s.batch, s.dim, s.width - 1}) : empty_on(x, {0});
  ConvProblem pr = prepare(s, x, weight, bias, seq_idx, initial_states, silu, "causal_conv1d_fwd");
  pr.p.out = out.data_ptr();
  pr.p.final_states = return_final_states ? fin.data_ptr() : nullptr;
  const CausalConv1dKernelTable& kern = causal_conv1d_kernels();
  if (s.batch * s.dim > 0) {
    Scratch scratch(kern.scratch_bytes(pr.p));
    parallel_for(0, s.batch * s.dim, 8, [&](int64_t r0, int64_t r1) { kern.fwd(pr.p, r0, r1, scratch.for_thread()); });
  }
  return {out, fin};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> causal_conv1d_bwd_cpu(
    const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, const std::optional<Tensor>& seq_idx,
    const std::optional<Tensor>& initial_states, const Tensor& dout, const std::optional<Tensor>& dfinal_states,
    bool silu) {
  constexpr const char* op = "causal_conv1d_bwd";
  const ConvShape s = check(op, x, weight, bias, seq_idx, initial_states);
  MK_CHECK(dout.sizes() == x.sizes() && dout.scalar_type() == x.scalar_type(), op, ": dout must match x");
  if (dfinal_states)
    MK_CHECK(dfinal_states->sizes() == Shape({s.batch, s.dim, s.width - 1}), op,
             ": dfinal_states must be (batch, dim, width - 1)");
  const ScalarType acc = x.scalar_type() == kDouble ? kDouble : kFloat;
  MK_CHECK(s.seqlen <= 1 || dout.stride(2) == 1, op, ": dout must have unit stride along seqlen");
  Tensor dx = empty_on(x, {s.batch, s.dim, s.seqlen});
  Tensor dinit = initial_states ? empty_on(x, {s.batch, s.dim, s.width - 1}) : empty_on(x, {0});
  Tensor dw_part = empty_on(x, {s.batch, s.dim, s.width}, acc);
  Tensor db_part = empty_on(x, {s.batch, s.dim}, acc);
  ConvProblem pr = prepare(s, x, weight, bias, seq_idx, initial_states, silu, op);
  Tensor dfin = dfinal_states ? dfinal_states->to(acc).contiguous() : Tensor();
  ConvParams& p = pr.p;
  p.dout = dout.const_data_ptr();
  p.dout_batch_stride = dout.stride(0);
  p.dout_dim_stride = dout.stride(1);
  p.dfinal = dfinal_states ? dfin.const_data_ptr() : nullptr;
  p.dx = dx.data_ptr();
  p.dinit = initial_states ? dinit.data_ptr() : nullptr;
  p.dweight_part = dw_part.data_ptr();
  p.dbias_part = db_part.data_ptr();
  const CausalConv1dKernelTable& kern = causal_conv1d_kernels();
  if (s.batch * s.dim > 0) {
    Scratch scratch(kern.scratch_bytes(p));
    parallel_for(0, s.batch * s.dim, 8, [&](int64_t r0, int64_t r1) { kern.bwd(p, r0, r1, scratch.for_thread()); });
  }
  // Sums over the batch in batch order.
  const Tensor dw = scan::sum_over_batch(dw_part, s.width);
  const Tensor db = scan::sum_over_batch(db_part.unsqueeze(2), 1).squeeze(1);
  return {dx, dw.to(weight.scalar_type()), bias ? db.to(bias->scalar_type()) : empty_on(x, {0}), dinit};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(medkernels, CPU, m) {
  MK_IMPL(m, "causal_conv1d_fwd", causal_conv1d_fwd_cpu);
  MK_IMPL(m, "causal_conv1d_bwd", causal_conv1d_bwd_cpu);
}

}  // namespace medkernels::cpu
