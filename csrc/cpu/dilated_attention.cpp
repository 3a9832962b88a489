// D-Former 3D dilated attention (Wu et al., arXiv 2201.00462), CPU implementation of
// medkernels::dilated_attention3d_fwd / _bwd.
//
// This file is the torch side: last-guard checks, the per-axis group geometry (group sizes clamped to
// the axis, padding to whole groups, local or dilated membership) and allocation. q/k/v/out/grad_out
// are read in place through their strides; the loops live in dilated_attention_kernel.h.

#include "medkernels/cpu/dilated_attention.h"
#include "common.h"
#include "medkernels/cpu/isa.h"

namespace medkernels::cpu {
namespace {

void check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  const auto st = q.scalar_type();
  MK_CHECK(st == kFloat || st == kDouble || st == kHalf || st == kBFloat16, op,
           ": query must be float32, float16, bfloat16 or float64, got ", st);
  MK_CHECK(q.dim() == 6, op, ": query must be (batch, D, H, W, heads, head_dim), got ", q.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"query", q}, {"key", k}, {"value", v}}) {
    MK_CHECK(t.device().is_cpu(), op, ": expected CPU tensors, got ", name, " on ", t.device());
    MK_CHECK(t.sizes() == q.sizes() && t.scalar_type() == st, op, ": ", name, " must match query's shape ", q.sizes(),
             " and dtype ", st, ", got ", t.sizes(), " ", t.scalar_type());
  }
}

DaView view_of(const Tensor& t) {
  DaView v;
  v.ptr = t.const_data_ptr();
  v.sb = t.stride(0);
  for (int a = 0; a < 3; ++a) v.s[a] = t.stride(1 + a);
  v.sh = t.stride(4);
  return v;
}

// Reads in place when the head dim is contiguous; otherwise one contiguous copy.
Tensor unit_last(const Tensor& t) { return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous(); }

DaParams problem(const char* op, const Tensor& q, Shape group_size, bool global_scope, double scale, int vector_bytes) {
  MK_CHECK(group_size.size() == 3, op, ": group_size must have 3 entries, got ", group_size.size());
  DaParams p;
  p.dtype = kind_of(q.scalar_type(), op);
  p.acc = p.dtype == ScalarKind::Float64 ? ScalarKind::Float64 : ScalarKind::Float32;
  p.batch = q.size(0);
  p.heads = q.size(4);
  p.dim = q.size(5);
  const int64_t lanes = vector_bytes / (p.acc == ScalarKind::Float64 ? 8 : 4);
  p.dpad = (p.dim + lanes - 1) / lanes * lanes;
  p.scale = scale;
  for (int a = 0; a < 3; ++a) {
    MK_CHECK(group_size[a] >= 1, op, ": group_size entries must be >= 1, got ", group_size);
    const int64_t n = q.size(1 + a), g = std::min<int64_t>(group_size[a], std::max<int64_t>(n, 1));
    const int64_t ng = (n + g - 1) / g;  // groups along the axis after padding to a multiple of g
    p.size[a] = n;
    p.group[a] = g;
    p.ngroups[a] = ng;
    p.grp_step[a] = global_scope ? 1 : g;
    p.pos_step[a] = global_scope ? ng : 1;  // global: the interval I = padded size / g
  }
  return p;
}

void run(int64_t tasks, const DaParams& p, void (*fn)(const DaParams&, int64_t, int64_t, void*), int64_t bytes) {
  if (tasks <= 0) return;
  Scratch scratch(bytes);
  parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) { fn(p, t0, t1, scratch.for_thread()); });
}

int64_t tasks_of(const DaParams& p) { return p.batch * p.ngroups[0] * p.ngroups[1] * p.ngroups[2] * p.heads; }

std::tuple<Tensor, Tensor> da_fwd(const char* op, const Tensor& query, const Tensor& key, const Tensor& value,
                                  Shape group_size, bool global_scope, double scale) {
  check_qkv(op, query, key, value);
  const DilatedAttentionKernelTable& kern = dilated_attention_kernels();
  const Tensor q = unit_last(query), k = unit_last(key), v = unit_last(value);
  DaParams p = problem(op, q, group_size, global_scope, scale, kern.vector_bytes);
  p.q = view_of(q);
  p.k = view_of(k);
  p.v = view_of(v);
  Tensor out = empty_on(q, q.sizes());
  Tensor lse = empty_on(q, q.sizes().slice(0, 5), p.acc == ScalarKind::Float64 ? kDouble : kFloat);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr();
  run(tasks_of(p), p, kern.fwd, kern.scratch_bytes(p, false));
  return {out, lse};
}

std::tuple<Tensor, Tensor> da_fwd_cpu(const Tensor& query, const Tensor& key, const Tensor& value, Shape group_size,
                                      bool global_scope, double scale) {
  return da_fwd("dilated_attention3d_fwd", query, key, value, group_size, global_scope, scale);
}

// The backward into dq/dk/dv rows `grad_tok_stride` elements apart (see DaParams).
void da_bwd_into(const char* op, const Tensor& grad_out, const std::optional<Tensor>& grad_lse, const Tensor& query,
                 const Tensor& key, const Tensor& value, const Tensor& out, const Tensor& lse, Shape group_size,
                 bool global_scope, double scale, void* dq, void* dk, void* dv, int64_t grad_tok_stride) {
  check_qkv(op, query, key, value);
  MK_CHECK(grad_out.sizes() == query.sizes() && out.sizes() == query.sizes(), op,
           ": grad_out and out must have query's shape ", query.sizes());
  MK_CHECK(lse.sizes() == query.sizes().slice(0, 5), op, ": lse must be (batch, D, H, W, heads), got ", lse.sizes());
  const DilatedAttentionKernelTable& kern = dilated_attention_kernels();
  const Tensor q = unit_last(query), k = unit_last(key), v = unit_last(value);
  DaParams p = problem(op, q, group_size, global_scope, scale, kern.vector_bytes);
  const ScalarType acc = p.acc == ScalarKind::Float64 ? kDouble : kFloat;
  const Tensor go = unit_last(grad_out.to(q.scalar_type())), o = unit_last(out.to(q.scalar_type()));
  const Tensor lse_c = lse.to(acc).contiguous();
  Tensor glse;
  if (grad_lse) {
    MK_CHECK(grad_lse->sizes() == lse.sizes(), op, ": grad_lse must be (batch, D, H, W, heads)");
    glse = grad_lse->to(acc).contiguous();
  }
  p.q = view_of(q);
  p.k = view_of(k);
  p.v = view_of(v);
  p.dout = view_of(go);
  p.o = view_of(o);
  p.lse_in = lse_c.const_data_ptr();
  p.grad_lse = grad_lse ? glse.const_data_ptr() : nullptr;
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  p.grad_tok_stride = grad_tok_stride;
  run(tasks_of(p), p, kern.bwd, kern.scratch_bytes(p, true));
}

std::tuple<Tensor, Tensor, Tensor> da_bwd_cpu(const Tensor& grad_out, const std::optional<Tensor>& grad_lse,
                                              const Tensor& query, const Tensor& key, const Tensor& value,
                                              const Tensor& out, const Tensor& lse, Shape group_size, bool global_scope,
                                              double scale) {
  Tensor dq = empty_on(query, query.sizes()), dk = empty_on(query, query.sizes()), dv = empty_on(query, query.sizes());
  da_bwd_into("dilated_attention3d_bwd", grad_out, grad_lse, query, key, value, out, lse, group_size, global_scope,
              scale, dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), query.size(4) * query.size(5));
  return {dq, dk, dv};
}

// qkv (batch, D, H, W, 3, heads, head_dim): the q, k and v slices, read in place.
std::tuple<Tensor, Tensor, Tensor> unpack_qkv(const char* op, const Tensor& qkv) {
  MK_CHECK(qkv.dim() == 7 && qkv.size(4) == 3, op, ": qkv must be (batch, D, H, W, 3, heads, head_dim), got ",
           qkv.sizes());
  const auto part = [&](int64_t i) { return qkv.narrow(4, i, 1).squeeze(4); };
  return {part(0), part(1), part(2)};
}

std::tuple<Tensor, Tensor> da_fwd_packed_cpu(const Tensor& qkv, Shape group_size, bool global_scope, double scale) {
  constexpr const char* op = "dilated_attention3d_qkvpacked_fwd";
  const auto [q, k, v] = unpack_qkv(op, qkv);
  return da_fwd(op, q, k, v, group_size, global_scope, scale);
}

// The gradient of qkv in one (batch, D, H, W, 3, heads, head_dim) tensor: the kernel writes dq, dk and dv
// into its slices, so autograd needs no stack of three gradients.
Tensor da_bwd_packed_cpu(const Tensor& grad_out, const std::optional<Tensor>& grad_lse, const Tensor& qkv,
                         const Tensor& out, const Tensor& lse, Shape group_size, bool global_scope, double scale) {
  constexpr const char* op = "dilated_attention3d_qkvpacked_bwd";
  const auto [q, k, v] = unpack_qkv(op, qkv);
  Tensor dqkv = empty_on(qkv, qkv.sizes());
  const int64_t row = q.size(4) * q.size(5), bytes = row * int64_t(element_size(qkv.scalar_type()));
  char* base = static_cast<char*>(dqkv.data_ptr());
  da_bwd_into(op, grad_out, grad_lse, q, k, v, out, lse, group_size, global_scope, scale, base, base + bytes,
              base + 2 * bytes, 3 * row);
  return dqkv;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(medkernels, CPU, m) {
  MK_IMPL(m, "dilated_attention3d_fwd", da_fwd_cpu);
  MK_IMPL(m, "dilated_attention3d_bwd", da_bwd_cpu);
  MK_IMPL(m, "dilated_attention3d_qkvpacked_fwd", da_fwd_packed_cpu);
  MK_IMPL(m, "dilated_attention3d_qkvpacked_bwd", da_bwd_packed_cpu);
}

}  // namespace medkernels::cpu
