// Selective scan, CPU implementation of medkernels::selective_scan_fwd / selective_scan_bwd.
//
// This file is the torch side: the last-guard checks, output allocation, padded fp32 copies of the
// small operands (A, B, C) and the reductions of per-row partial gradients. The arithmetic lives in
// selective_scan_kernel.h, compiled per instruction set.

#include <algorithm>
#include <atomic>
#include <utility>
#include <vector>

#include "common.h"
#include "medkernels/cpu/isa.h"
#include "medkernels/cpu/selective_scan.h"
#include "selective_scan_common.h"

namespace medkernels::cpu {
namespace {

using scan::check_param;
using scan::check_seq;
using scan::sum_over_batch;

// The problem, checked, with the padded acc copies the kernels read.
struct Problem {
  SelectiveScanFwdParams p;
  ScalarType acc;
  Tensor A_pad, B_pad, C_pad, D_acc, bias_acc, init_acc;
};

// Fixed (dim, N) or variable (batch, N, L) / (batch, G, N, L) B or C -> padded acc copy.
Tensor prepare_BC(const char* op, const char* name, const Tensor& t, int64_t batch, int64_t dim, int64_t N, int64_t L,
                  int64_t Np, ScalarType acc, const Tensor& u, int64_t& groups) {
  MK_CHECK(t.device() == u.device(), op, ": ", name, " must be on ", u.device(), ", got ", t.device());
  if (t.dim() == 2) {
    check_param(op, name, t, {dim, N}, acc, u);
    groups = 0;
    Tensor out = zeros_on(u, {dim, Np}, acc);
    out.narrow(1, 0, N).copy_(t);
    return out;
  }
  MK_CHECK(t.dim() == 3 || t.dim() == 4, op, ": ", name, " must have 2, 3 or 4 dims, got ", t.dim());
  MK_CHECK(t.scalar_type() == u.scalar_type(), op, ": variable ", name, " must have dtype ", u.scalar_type(), ", got ",
           t.scalar_type());
  const Tensor t4 = t.dim() == 3 ? t.unsqueeze(1) : t;
  groups = t4.size(1);
  MK_CHECK(groups >= 1 && dim % groups == 0, op, ": ", name, " has ", groups, " groups, which must divide dim=", dim);
  MK_CHECK(t4.size(0) == batch && t4.size(2) == N && t4.size(3) == L, op, ": ", name,
           " must have shape (batch, [groups,] dstate, seqlen) = (", batch, ", ", groups, ", ", N, ", ", L, "), got ",
           t.sizes());
  Tensor out = zeros_on(u, {batch, groups, L, Np}, acc);
  out.narrow(3, 0, N).copy_(t4.transpose(2, 3));
  return out;
}

Problem prepare(const char* op, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                const std::optional<Tensor>& D, const std::optional<Tensor>& z, const std::optional<Tensor>& delta_bias,
                const std::optional<Tensor>& initial_state, bool delta_softplus, int64_t chunk_size, int vector_bytes) {
  MK_CHECK(u.device().is_cpu(), op, ": expected CPU tensors, got u on ", u.device());
  MK_CHECK(u.dim() == 3, op, ": u must have shape (batch, dim, seqlen), got ", u.sizes());
  const ScalarType st = u.scalar_type();
  MK_CHECK(st == kFloat || st == kDouble || st == kHalf || st == kBFloat16, op,
           ": u must be float32, float16, bfloat16 or float64, got ", st);
  MK_CHECK(!A.is_complex(), op, ": complex A is not supported");
  MK_CHECK(chunk_size >= 1, op, ": chunk_size must be >= 1, got ", chunk_size);
  const ScalarType acc = st == kDouble ? kDouble : kFloat;
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2);
  check_seq(op, "delta", delta, u);
  if (z) check_seq(op, "z", *z, u);
  MK_CHECK(A.dim() == 2 && A.size(0) == dim && A.size(1) >= 1, op, ": A must have shape (dim, dstate) with dim=", dim,
           ", got ", A.sizes());
  const int64_t N = A.size(1);
  check_param(op, "A", A, {dim, N}, acc, u);
  if (D) check_param(op, "D", *D, {dim}, acc, u);
  if (delta_bias) check_param(op, "delta_bias", *delta_bias, {dim}, acc, u);
  if (initial_state) check_param(op, "initial_state", *initial_state, {batch, dim, N}, acc, u);

  const int64_t lanes = vector_bytes / int64_t(element_size(acc));
  const int64_t Np = (N + lanes - 1) / lanes * lanes;

  Problem pr;
  pr.acc = acc;
  SelectiveScanFwdParams& p = pr.p;
  p.batch = batch;
  p.dim = dim;
  p.seqlen = L;
  p.dstate = N;
  p.dstate_pad = Np;
  p.chunk = chunk_size;
  p.n_chunks = (L + chunk_size - 1) / chunk_size;
  p.dtype = kind_of(st, op);
  p.delta_softplus = delta_softplus;

  pr.A_pad = zeros_on(u, {dim, Np}, acc);
  pr.A_pad.narrow(1, 0, N).copy_(A);
  pr.B_pad = prepare_BC(op, "B", B, batch, dim, N, L, Np, acc, u, p.groups_B);
  pr.C_pad = prepare_BC(op, "C", C, batch, dim, N, L, Np, acc, u, p.groups_C);
  if (D) pr.D_acc = D->contiguous();
  if (delta_bias) pr.bias_acc = delta_bias->contiguous();
  if (initial_state) pr.init_acc = initial_state->contiguous();

  p.u = u.const_data_ptr();
  p.u_batch_stride = u.stride(0);
  p.u_dim_stride = u.stride(1);
  p.delta = delta.const_data_ptr();
  p.delta_batch_stride = delta.stride(0);
  p.delta_dim_stride = delta.stride(1);
  if (z) {
    p.z = z->const_data_ptr();
    p.z_batch_stride = z->stride(0);
    p.z_dim_stride = z->stride(1);
  }
  p.A = pr.A_pad.const_data_ptr();
  p.B = pr.B_pad.const_data_ptr();
  p.C = pr.C_pad.const_data_ptr();
  p.D = D ? pr.D_acc.const_data_ptr() : nullptr;
  p.delta_bias = delta_bias ? pr.bias_acc.const_data_ptr() : nullptr;
  p.initial_state = initial_state ? pr.init_acc.const_data_ptr() : nullptr;
  return pr;
}

std::tuple<Tensor, Tensor, Tensor> selective_scan_fwd_cpu(
    const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const std::optional<Tensor>& D, const std::optional<Tensor>& z, const std::optional<Tensor>& delta_bias,
    const std::optional<Tensor>& initial_state, bool delta_softplus, int64_t chunk_size) {
  const SelectiveScanKernelTable& kern = selective_scan_kernels();
  Problem pr = prepare("selective_scan_fwd", u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                       chunk_size, kern.vector_bytes);
  SelectiveScanFwdParams& p = pr.p;
  Tensor out = empty_on(u, {p.batch, p.dim, p.seqlen});
  Tensor last = empty_on(u, {p.batch, p.dim, p.dstate}, pr.acc);
  Tensor ckpt = empty_on(u, {p.batch, p.dim, p.n_chunks, p.dstate}, pr.acc);
  p.out = out.data_ptr();
  p.last_state = last.data_ptr();
  p.checkpoints = ckpt.data_ptr();
  if (p.batch * p.dim == 0) return {out, last, ckpt};

  Scratch scratch(kern.fwd_scratch_bytes(p));
  parallel_for(0, p.batch * p.dim, 1, [&](int64_t r0, int64_t r1) { kern.fwd(p, r0, r1, scratch.for_thread()); });
  return {out, last, ckpt};
}

// Channel blocks for the backward: each inside one group of B and of C, cut only by shape so the
// summation order (and the bits of the result) do not depend on the thread count.
std::vector<int64_t> channel_blocks(int64_t batch, int64_t dim, int64_t groups_B, int64_t groups_C) {
  std::vector<int64_t> cuts{0, dim};
  for (int64_t g = 1; g < groups_B; ++g) cuts.push_back(g * (dim / groups_B));
  for (int64_t g = 1; g < groups_C; ++g) cuts.push_back(g * (dim / groups_C));
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  constexpr int64_t kTargetTasks = 64, kMinChannels = 16;
  const int64_t per_batch = std::max<int64_t>(1, (kTargetTasks + batch - 1) / batch);
  const int64_t want = std::max<int64_t>(kMinChannels, (dim + per_batch - 1) / per_batch);
  std::vector<int64_t> starts;
  for (size_t s = 0; s + 1 < cuts.size(); ++s) {
    const int64_t lo = cuts[s], len = cuts[s + 1] - cuts[s];
    const int64_t nb = (len + want - 1) / want;
    for (int64_t k = 0; k < nb; ++k) starts.push_back(lo + len * k / nb);
  }
  starts.push_back(dim);
  return starts;
}

// grad[b, g, n, t] = sum over the blocks of group g of part[b, blk, t, n], in block order.
Tensor sum_blocks(const Tensor& part, const std::vector<int64_t>& starts, int64_t dim, int64_t groups, int64_t N) {
  const int64_t batch = part.size(0), n_blocks = part.size(1), L = part.size(2), Np = part.size(3);
  Tensor out = empty_on(part, {batch, groups, N, L});
  const int64_t per_group = dim / groups;
  std::vector<int64_t> first(groups + 1, n_blocks);
  for (int64_t k = n_blocks - 1; k >= 0; --k) first[starts[k] / per_group] = k;
  dispatch_floating(part.scalar_type(), "selective_scan_bwd_reduce_blocks", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* src = part.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    constexpr int64_t kTile = 64;
    const int64_t tiles = (L + kTile - 1) / kTile;
    parallel_for(0, batch * groups * tiles, 1, [&](int64_t w0, int64_t w1) {
      std::vector<scalar_t> acc(kTile * Np);
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t bg = w / tiles, tile = w % tiles, b = bg / groups, g = bg % groups;
        const int64_t t0 = tile * kTile, nt = std::min(kTile, L - t0);
        std::fill(acc.begin(), acc.end(), scalar_t(0));
        for (int64_t k = first[g]; k < n_blocks && starts[k] / per_group == g; ++k) {
          const scalar_t* s = src + ((b * n_blocks + k) * L + t0) * Np;
          for (int64_t i = 0; i < nt * Np; ++i) acc[i] += s[i];
        }
        scalar_t* o = dst + (b * groups + g) * N * L + t0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t i = 0; i < nt; ++i) o[n * L + i] = acc[i * Np + n];
      }
    });
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> selective_scan_bwd_cpu(
    const Tensor& grad_out, const std::optional<Tensor>& grad_last_state, const Tensor& u, const Tensor& delta,
    const Tensor& A, const Tensor& B, const Tensor& C, const std::optional<Tensor>& D, const std::optional<Tensor>& z,
    const std::optional<Tensor>& delta_bias, const std::optional<Tensor>& initial_state, const Tensor& checkpoints,
    bool delta_softplus, int64_t chunk_size, bool /*deterministic: the CPU backward always is*/) {
  constexpr const char* op = "selective_scan_bwd";
  const SelectiveScanKernelTable& kern = selective_scan_kernels();
  Problem pr =
      prepare(op, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_size, kern.vector_bytes);
  SelectiveScanBwdParams q;
  q.fwd = pr.p;
  SelectiveScanFwdParams& p = q.fwd;
  check_seq(op, "grad_out", grad_out, u);
  check_param(op, "checkpoints", checkpoints, {p.batch, p.dim, p.n_chunks, p.dstate}, pr.acc, u);
  const Tensor ckpt = checkpoints.contiguous();
  p.checkpoints = const_cast<void*>(ckpt.const_data_ptr());
  Tensor grad_last;
  if (grad_last_state) {
    check_param(op, "grad_last_state", *grad_last_state, {p.batch, p.dim, p.dstate}, pr.acc, u);
    grad_last = grad_last_state->contiguous();
    q.grad_last_state = grad_last.const_data_ptr();
  }
  q.grad_out = grad_out.const_data_ptr();
  q.grad_out_batch_stride = grad_out.stride(0);
  q.grad_out_dim_stride = grad_out.stride(1);

  // The gradient of an absent input is an empty tensor, a distinct one each (outputs must not alias).
  auto empty = [&] { return empty_on(u, {0}, pr.acc); };
  Tensor du = empty_on(u, {p.batch, p.dim, p.seqlen});
  Tensor ddelta = empty_on(u, {p.batch, p.dim, p.seqlen});
  Tensor dz = z ? empty_on(u, {p.batch, p.dim, p.seqlen}) : empty();
  Tensor dinit = initial_state ? empty_on(u, {p.batch, p.dim, p.dstate}, pr.acc) : empty();
  q.grad_u = du.data_ptr();
  q.grad_delta = ddelta.data_ptr();
  q.grad_z = z ? dz.data_ptr() : nullptr;
  q.grad_initial_state = initial_state ? dinit.data_ptr() : nullptr;

  const int64_t Np = p.dstate_pad;
  Tensor part_A = empty_on(u, {p.batch, p.dim, Np}, pr.acc);
  Tensor part_Bf = p.groups_B ? empty() : empty_on(u, {p.batch, p.dim, Np}, pr.acc);
  Tensor part_Cf = p.groups_C ? empty() : empty_on(u, {p.batch, p.dim, Np}, pr.acc);
  Tensor part_D = D ? empty_on(u, {p.batch, p.dim}, pr.acc) : empty();
  Tensor part_bias = delta_bias ? empty_on(u, {p.batch, p.dim}, pr.acc) : empty();
  q.part_A = part_A.data_ptr();
  q.part_B_fixed = p.groups_B ? nullptr : part_Bf.data_ptr();
  q.part_C_fixed = p.groups_C ? nullptr : part_Cf.data_ptr();
  q.part_D = D ? part_D.data_ptr() : nullptr;
  q.part_bias = delta_bias ? part_bias.data_ptr() : nullptr;

  const std::vector<int64_t> starts = channel_blocks(p.batch, p.dim, p.groups_B, p.groups_C);
  q.n_blocks = int64_t(starts.size()) - 1;
  q.block_start = starts.data();
  Tensor part_Bv = p.groups_B ? empty_on(u, {p.batch, q.n_blocks, p.seqlen, Np}, pr.acc) : empty();
  Tensor part_Cv = p.groups_C ? empty_on(u, {p.batch, q.n_blocks, p.seqlen, Np}, pr.acc) : empty();
  q.part_B_var = p.groups_B ? part_Bv.data_ptr() : nullptr;
  q.part_C_var = p.groups_C ? part_Cv.data_ptr() : nullptr;

  if (p.batch * p.dim > 0) {
    Scratch scratch(kern.bwd_scratch_bytes(q));
    parallel_for(0, p.batch * q.n_blocks, 1,
                 [&](int64_t t0, int64_t t1) { kern.bwd(q, t0, t1, scratch.for_thread()); });
  } else {
    part_A.zero_();
    part_Bf.zero_();
    part_Cf.zero_();
    part_D.zero_();
    part_bias.zero_();
    part_Bv.zero_();
    part_Cv.zero_();
  }

  Tensor dA = sum_over_batch(part_A, p.dstate);
  Tensor dB = p.groups_B ? sum_blocks(part_Bv, starts, p.dim, p.groups_B, p.dstate) : sum_over_batch(part_Bf, p.dstate);
  Tensor dC = p.groups_C ? sum_blocks(part_Cv, starts, p.dim, p.groups_C, p.dstate) : sum_over_batch(part_Cf, p.dstate);
  if (p.groups_B) dB = dB.view(B.sizes()).to(B.scalar_type());
  if (p.groups_C) dC = dC.view(C.sizes()).to(C.scalar_type());
  Tensor dD = D ? sum_over_batch(part_D.unsqueeze(2), 1).squeeze(1) : empty();
  Tensor dbias = delta_bias ? sum_over_batch(part_bias.unsqueeze(2), 1).squeeze(1) : empty();
  return {du, ddelta, dA, dB, dC, dD, dz, dbias, dinit};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(medkernels, CPU, m) {
  MK_IMPL(m, "selective_scan_fwd", selective_scan_fwd_cpu);
  MK_IMPL(m, "selective_scan_bwd", selective_scan_bwd_cpu);
}

}  // namespace medkernels::cpu
