// Multi-order selective scan (PointMamba2's group Point-SSM), CPU implementation of
// medkernels::multi_order_selective_scan_fwd / _bwd: K scans of one sequence along K orderings, summed in
// the original order. The torch side; the kernels are the selective scan's (selective_scan_kernel.h), which
// walk each ordering through its index.

#include <algorithm>
#include <optional>
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

// Multi-order selective scan: K scans of one sequence along K orderings, summed in the original order.
// The kernels walk each ordering through its index; per ordering only B and C are transposed into
// (batch, L, dstate_pad) scratch in that order. No permuted copy of u or delta exists.

struct MultiProblem {
  SelectiveScanFwdParams p;
  ScalarType acc;
  int64_t channels = 0;
  Tensor A_pad, D_acc, bias_acc, orders, delta3, B, C, Bt, Ct;
};

MultiProblem prepare_multi(const char* op, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                           const Tensor& C, const std::optional<Tensor>& D, const std::optional<Tensor>& delta_bias,
                           const Tensor& orders, bool delta_softplus, int64_t chunk_size, int vector_bytes) {
  MK_CHECK(u.device().is_cpu(), op, ": expected CPU tensors, got u on ", u.device());
  MK_CHECK(u.dim() == 3, op, ": u must have shape (batch, dim, seqlen), got ", u.sizes());
  const ScalarType st = u.scalar_type();
  MK_CHECK(st == kFloat || st == kDouble || st == kHalf || st == kBFloat16, op,
           ": u must be float32, float16, bfloat16 or float64, got ", st);
  MK_CHECK(chunk_size >= 1, op, ": chunk_size must be >= 1, got ", chunk_size);
  const ScalarType acc = st == kDouble ? kDouble : kFloat;
  const int64_t batch = u.size(0), ch = u.size(1), L = u.size(2);
  MK_CHECK(orders.device() == u.device(), op, ": orders must be on ", u.device(), ", got ", orders.device());
  MK_CHECK(orders.scalar_type() == kLong, op, ": orders must be int64, got ", orders.scalar_type());
  MK_CHECK(orders.dim() == 3 && orders.size(0) == batch && orders.size(1) >= 1 && orders.size(2) == L, op,
           ": orders must have shape (batch, K, seqlen) with batch=", batch, ", K >= 1, seqlen=", L, ", got ",
           orders.sizes());
  const int64_t K = orders.size(1);
  MK_CHECK(A.dim() == 3 && A.size(0) == K && A.size(1) == ch && A.size(2) >= 1, op,
           ": A must have shape (K, dim, dstate) = (", K, ", ", ch, ", dstate), got ", A.sizes());
  const int64_t N = A.size(2);
  check_param(op, "A", A, {K, ch, N}, acc, u);
  for (auto [name, t] : {std::pair<const char*, const Tensor*>{"delta", &delta}, {"B", &B}, {"C", &C}}) {
    const int64_t mid = t == &delta ? ch : N;
    MK_CHECK(t->device() == u.device(), op, ": ", name, " must be on ", u.device(), ", got ", t->device());
    MK_CHECK(t->dim() == 4 && t->size(0) == batch && t->size(1) == K && t->size(2) == mid && t->size(3) == L, op, ": ",
             name, " must have shape (", batch, ", ", K, ", ", mid, ", ", L, "), got ", t->sizes());
    MK_CHECK(t->scalar_type() == st, op, ": ", name, " must have dtype ", st, ", got ", t->scalar_type());
  }
  if (D) check_param(op, "D", *D, {K, ch}, acc, u);
  if (delta_bias) check_param(op, "delta_bias", *delta_bias, {K, ch}, acc, u);

  MultiProblem pr;
  pr.acc = acc;
  pr.channels = ch;
  pr.orders = orders.contiguous();
  // Each row of orders must be a permutation: the kernels index through it.
  {
    const int64_t* o = pr.orders.const_data_ptr<int64_t>();
    std::atomic<int64_t> bad{-1};
    parallel_for(0, batch * K, 1, [&](int64_t r0, int64_t r1) {
      std::vector<uint8_t> seen(L);
      for (int64_t r = r0; r < r1; ++r) {
        std::fill(seen.begin(), seen.end(), uint8_t(0));
        for (int64_t t = 0; t < L; ++t) {
          const int64_t v = o[r * L + t];
          if (v < 0 || v >= L || seen[v]) {
            bad.store(r);
            break;
          }
          seen[v] = 1;
        }
      }
    });
    const int64_t r = bad.load();
    MK_CHECK(r < 0, op, ": orders[", r / std::max<int64_t>(K, 1), ", ", r % std::max<int64_t>(K, 1),
             "] is not a permutation of 0..", L - 1);
  }

  const int64_t lanes = vector_bytes / int64_t(element_size(acc));
  const int64_t Np = (N + lanes - 1) / lanes * lanes;
  SelectiveScanFwdParams& p = pr.p;
  p.batch = batch;
  p.dim = K * ch;
  p.seqlen = L;
  p.dstate = N;
  p.dstate_pad = Np;
  p.chunk = chunk_size;
  p.n_chunks = (L + chunk_size - 1) / chunk_size;
  p.groups_B = p.groups_C = K;
  p.dtype = kind_of(st, op);
  p.delta_softplus = delta_softplus;
  p.order = pr.orders.const_data_ptr<int64_t>();
  p.n_orders = K;

  pr.A_pad = zeros_on(u, {K * ch, Np}, acc);
  pr.A_pad.narrow(1, 0, N).copy_(A.reshape({K * ch, N}));
  if (D) pr.D_acc = D->contiguous();
  if (delta_bias) pr.bias_acc = delta_bias->contiguous();
  // delta (batch, K, dim, L) as (batch, K * dim, L); rows need unit stride along L.
  pr.delta3 = delta.stride(3) == 1 && delta.stride(1) == ch * delta.stride(2) ? delta : delta.contiguous();
  pr.delta3 = pr.delta3.view({batch, K * ch, L});
  pr.B = B.contiguous();
  pr.C = C.contiguous();
  // One ordering of B and C at a time, in its token order, zero padded to Np.
  pr.Bt = zeros_on(u, {batch, L, Np}, acc);
  pr.Ct = zeros_on(u, {batch, L, Np}, acc);

  p.u = u.const_data_ptr();
  p.u_batch_stride = u.stride(0);
  p.u_dim_stride = u.stride(1);
  p.delta = pr.delta3.const_data_ptr();
  p.delta_batch_stride = pr.delta3.stride(0);
  p.delta_dim_stride = pr.delta3.stride(1);
  p.A = pr.A_pad.const_data_ptr();
  p.B = pr.Bt.const_data_ptr();
  p.C = pr.Ct.const_data_ptr();
  p.D = D ? pr.D_acc.const_data_ptr() : nullptr;
  p.delta_bias = delta_bias ? pr.bias_acc.const_data_ptr() : nullptr;
  return pr;
}

// dst[b, t, n] = src[b, k, n, order[b, k, t]] for every batch: src (batch, K, N, L) contiguous,
// dst (batch, L, Np) with zero padding.
void gather_in_order(const Tensor& src, const Tensor& orders, int64_t k, Tensor& dst) {
  const int64_t batch = src.size(0), K = src.size(1), N = src.size(2), L = src.size(3), Np = dst.size(2);
  dispatch_floating<true>(src.scalar_type(), "multi_order_scan_gather", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    using src_t = scalar_t;
    dispatch_floating(dst.scalar_type(), "multi_order_scan_gather_acc", [&](auto tag_) {
      using scalar_t = decltype(tag_);
      parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const src_t* s = src.const_data_ptr<src_t>() + (b * K + k) * N * L;
          const int64_t* o = orders.const_data_ptr<int64_t>() + (b * K + k) * L;
          scalar_t* d = dst.data_ptr<scalar_t>() + b * L * Np;
          for (int64_t n = 0; n < N; ++n)
            for (int64_t t = 0; t < L; ++t) d[t * Np + n] = static_cast<scalar_t>(s[n * L + o[t]]);
        }
      });
    });
  });
}

// dst[b, k, n, order[b, k, t]] = sum over blocks (in block order) of part[b, blk, t, n] for every
// batch: part (batch, n_blocks, L, Np).
void scatter_from_order(const Tensor& part, const Tensor& orders, int64_t k, Tensor& dst) {
  const int64_t batch = part.size(0), n_blocks = part.size(1), L = part.size(2), Np = part.size(3);
  const int64_t K = dst.size(1), N = dst.size(2);
  dispatch_floating<true>(dst.scalar_type(), "multi_order_scan_scatter", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    using dst_t = scalar_t;
    dispatch_floating(part.scalar_type(), "multi_order_scan_scatter_acc", [&](auto tag_) {
      using scalar_t = decltype(tag_);
      parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
        std::vector<scalar_t> acc(Np);
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* s = part.const_data_ptr<scalar_t>() + b * n_blocks * L * Np;
          const int64_t* o = orders.const_data_ptr<int64_t>() + (b * K + k) * L;
          dst_t* d = dst.data_ptr<dst_t>() + (b * K + k) * N * L;
          for (int64_t t = 0; t < L; ++t) {
            std::fill(acc.begin(), acc.end(), scalar_t(0));
            for (int64_t blk = 0; blk < n_blocks; ++blk) {
              const scalar_t* row = s + (blk * L + t) * Np;
              for (int64_t n = 0; n < N; ++n) acc[n] += row[n];
            }
            const int64_t to = o[t];
            for (int64_t n = 0; n < N; ++n) d[n * L + to] = static_cast<dst_t>(acc[n]);
          }
        }
      });
    });
  });
}

// The acc rows (batch, channels, seqlen) the kernels add the orderings into: `dst` itself when it
// is acc, else a new acc tensor that the caller copies over.
Tensor sum_rows_for(const Tensor& dst, ScalarType acc) {
  return dst.scalar_type() == acc ? dst.zero_() : zeros_on(dst, dst.sizes(), acc);
}

std::tuple<Tensor, Tensor> multi_order_selective_scan_fwd_cpu(const Tensor& u, const Tensor& delta, const Tensor& A,
                                                              const Tensor& B, const Tensor& C,
                                                              const std::optional<Tensor>& D,
                                                              const std::optional<Tensor>& delta_bias,
                                                              const Tensor& orders, bool delta_softplus,
                                                              int64_t chunk_size) {
  const SelectiveScanKernelTable& kern = selective_scan_kernels();
  MultiProblem pr = prepare_multi("multi_order_selective_scan_fwd", u, delta, A, B, C, D, delta_bias, orders,
                                  delta_softplus, chunk_size, kern.vector_bytes);
  SelectiveScanFwdParams& p = pr.p;
  Tensor out = empty_on(u, {p.batch, pr.channels, p.seqlen});
  Tensor ckpt = empty_on(u, {p.batch, p.dim, p.n_chunks, p.dstate}, pr.acc);
  p.checkpoints = ckpt.data_ptr();
  if (out.numel() == 0) return {out, ckpt};
  Scratch scratch(kern.fwd_scratch_bytes(p));
  Tensor sum = sum_rows_for(out, pr.acc);
  p.order_sum = sum.data_ptr();
  for (int64_t k = 0; k < p.n_orders; ++k) {  // in order: the sum's bits do not depend on threads
    gather_in_order(pr.B, pr.orders, k, pr.Bt);
    gather_in_order(pr.C, pr.orders, k, pr.Ct);
    parallel_for(0, p.batch * pr.channels, 1,
                 [&](int64_t r0, int64_t r1) { kern.fwd_multi(p, k, r0, r1, scratch.for_thread()); });
  }
  if (!sum.is_same(out)) out.copy_(sum);
  return {out, ckpt};
}

// Channel blocks of the multi-order backward. A task is one (batch, block) of one ordering and
// keeps a (seqlen, dstate_pad) partial dB and dC, so blocks trade threads for memory: about
// kTasks tasks per ordering over the batch, blocks of at least 16 channels, cut by shape only.
std::vector<int64_t> multi_channel_blocks(int64_t batch, int64_t channels) {
  constexpr int64_t kTasks = 2, kMinChannels = 16;
  const int64_t want = (kTasks + batch - 1) / std::max<int64_t>(batch, 1);
  const int64_t nb = std::max<int64_t>(1, std::min(want, channels / kMinChannels));
  std::vector<int64_t> starts;
  for (int64_t k = 0; k <= nb; ++k) starts.push_back(channels * k / nb);
  return starts;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> multi_order_selective_scan_bwd_cpu(
    const Tensor& grad_out, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const std::optional<Tensor>& D, const std::optional<Tensor>& delta_bias, const Tensor& orders,
    const Tensor& checkpoints, bool delta_softplus, int64_t chunk_size) {
  constexpr const char* op = "multi_order_selective_scan_bwd";
  const SelectiveScanKernelTable& kern = selective_scan_kernels();
  MultiProblem pr =
      prepare_multi(op, u, delta, A, B, C, D, delta_bias, orders, delta_softplus, chunk_size, kern.vector_bytes);
  SelectiveScanBwdParams q;
  q.fwd = pr.p;
  SelectiveScanFwdParams& p = q.fwd;
  const int64_t K = p.n_orders, ch = pr.channels, N = p.dstate, Np = p.dstate_pad, L = p.seqlen;
  check_seq(op, "grad_out", grad_out, u);
  check_param(op, "checkpoints", checkpoints, {p.batch, p.dim, p.n_chunks, N}, pr.acc, u);
  const Tensor ckpt = checkpoints.contiguous();
  p.checkpoints = const_cast<void*>(ckpt.const_data_ptr());
  q.grad_out = grad_out.const_data_ptr();
  q.grad_out_batch_stride = grad_out.stride(0);
  q.grad_out_dim_stride = grad_out.stride(1);

  auto empty = [&] { return empty_on(u, {0}, pr.acc); };
  Tensor du = empty_on(u, {p.batch, ch, L});
  Tensor ddelta = empty_on(u, {p.batch, K, ch, L});
  Tensor dB = empty_on(B, {p.batch, K, N, L});
  Tensor dC = empty_on(C, {p.batch, K, N, L});
  q.grad_delta = ddelta.data_ptr();
  Tensor part_A = zeros_on(u, {p.batch, p.dim, Np}, pr.acc);
  Tensor part_D = D ? zeros_on(u, {p.batch, p.dim}, pr.acc) : empty();
  Tensor part_bias = delta_bias ? zeros_on(u, {p.batch, p.dim}, pr.acc) : empty();
  q.part_A = part_A.data_ptr();
  q.part_D = D ? part_D.data_ptr() : nullptr;
  q.part_bias = delta_bias ? part_bias.data_ptr() : nullptr;

  const std::vector<int64_t> starts = multi_channel_blocks(p.batch, ch);
  q.n_blocks = int64_t(starts.size()) - 1;
  q.block_start = starts.data();
  if (p.batch * ch * L > 0) {
    Tensor part_B = empty_on(u, {p.batch, q.n_blocks, L, Np}, pr.acc);
    Tensor part_C = empty_on(u, {p.batch, q.n_blocks, L, Np}, pr.acc);
    q.part_B_var = part_B.data_ptr();
    q.part_C_var = part_C.data_ptr();
    Scratch scratch(kern.bwd_scratch_bytes(q));
    Tensor sum = sum_rows_for(du, pr.acc);
    p.order_sum = sum.data_ptr();
    for (int64_t k = 0; k < K; ++k) {  // in order: grad_u's bits do not depend on threads
      gather_in_order(pr.B, pr.orders, k, pr.Bt);
      gather_in_order(pr.C, pr.orders, k, pr.Ct);
      parallel_for(0, p.batch * q.n_blocks, 1,
                   [&](int64_t t0, int64_t t1) { kern.bwd_multi(q, k, t0, t1, scratch.for_thread()); });
      scatter_from_order(part_B, pr.orders, k, dB);
      scatter_from_order(part_C, pr.orders, k, dC);
    }
    if (!sum.is_same(du)) du.copy_(sum);
  } else {
    du.zero_();
    ddelta.zero_();
    dB.zero_();
    dC.zero_();
  }
  Tensor dA = sum_over_batch(part_A, N).view({K, ch, N});
  Tensor dD = D ? sum_over_batch(part_D.unsqueeze(2), 1).view({K, ch}) : empty();
  Tensor dbias = delta_bias ? sum_over_batch(part_bias.unsqueeze(2), 1).view({K, ch}) : empty();
  return {du, ddelta, dA, dB, dC, dD, dbias};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(medkernels, CPU, m) {
  MK_IMPL(m, "multi_order_selective_scan_fwd", multi_order_selective_scan_fwd_cpu);
  MK_IMPL(m, "multi_order_selective_scan_bwd", multi_order_selective_scan_bwd_cpu);
}

}  // namespace medkernels::cpu
