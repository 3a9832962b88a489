// Selective scan, CUDA implementation of medkernels::selective_scan_fwd / selective_scan_bwd: the torch
// side (checks, allocation, stream, ordered batch reductions). The kernels are in selective_scan.cu.
//
// On the LibTorch stable ABI like the CPU ops (medkernels/stable.h): the device guard and the current stream come
// from torch's C shim.
#include <cuda_runtime_api.h>
#ifndef USE_CUDA
#define USE_CUDA  // declares the shim's CUDA functions (aoti_torch_get_current_cuda_stream)
#endif
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include <algorithm>
#include <numeric>

#include "medkernels/cuda/selective_scan.h"
#include "medkernels/stable.h"

namespace medkernels::cuda {
namespace {

using medkernels::Tensor;

// The stream torch is using on the tensors' device.
cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  MK_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream) == AOTI_TORCH_SUCCESS,
           "selective_scan: torch has no current CUDA stream for device ", t.get_device_index());
  return static_cast<cudaStream_t>(stream);
}

ScalarKind dtype_of(ScalarType t, const char* op) {
  switch (t) {
    case kFloat: return ScalarKind::Float32;
    case kHalf: return ScalarKind::Float16;
    case kBFloat16: return ScalarKind::BFloat16;
    default: MK_CHECK(false, op, ": the CUDA kernel takes float32, float16 or bfloat16, got ", t);
  }
  return ScalarKind::Float32;
}

void set_bc(const char* op, const char* name, const Tensor& t, const Tensor& u, int64_t N, const void*& ptr,
            int64_t& groups, int64_t& sb, int64_t& sg, int64_t& sn, int64_t& sl) {
  MK_CHECK(t.is_cuda() && t.device() == u.device(), op, ": ", name, " must be on ", u.device());
  if (t.dim() == 2) {
    MK_CHECK(t.scalar_type() == kFloat && t.is_contiguous() && t.size(0) == u.size(1) && t.size(1) == N, op, ": fixed ",
             name, " must be contiguous float32 (dim, dstate)");
    groups = 0;
    ptr = t.const_data_ptr();
    return;
  }
  const Tensor t4 = t.dim() == 3 ? t.unsqueeze(1) : t;
  MK_CHECK(t4.dim() == 4 && t4.scalar_type() == u.scalar_type() && t4.size(0) == u.size(0) && t4.size(2) == N &&
               t4.size(3) == u.size(2) && u.size(1) % t4.size(1) == 0,
           op, ": variable ", name, " must be (batch, [groups,] dstate, seqlen) in u's dtype");
  groups = t4.size(1);
  ptr = t4.const_data_ptr();
  sb = t4.stride(0);
  sg = t4.stride(1);
  sn = t4.stride(2);
  sl = t4.stride(3);
}

ScanCudaParams prepare(const char* op, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                       const Tensor& C, const std::optional<Tensor>& D, const std::optional<Tensor>& z,
                       const std::optional<Tensor>& delta_bias, const std::optional<Tensor>& initial_state,
                       bool softplus, int64_t chunk_size) {
  MK_CHECK(u.is_cuda() && u.dim() == 3, op, ": u must be a CUDA (batch, dim, seqlen) tensor");
  MK_CHECK(chunk_size == kScanChunk, op, ": the CUDA kernel saves the state every ", kScanChunk,
           " tokens, got chunk_size=", chunk_size);
  const int64_t N = A.size(1);
  MK_CHECK(N >= 1 && N <= kScanMaxState, op, ": the CUDA kernel supports dstate up to ", kScanMaxState, ", got ", N);
  for (const Tensor* t : {&delta, &u})
    MK_CHECK(t->size(2) <= 1 || t->stride(2) == 1, op, ": unit stride along seqlen expected");
  MK_CHECK(delta.sizes() == u.sizes() && delta.scalar_type() == u.scalar_type(), op, ": delta must match u");
  MK_CHECK(A.scalar_type() == kFloat && A.is_contiguous() && A.size(0) == u.size(1), op,
           ": A must be contiguous float32 (dim, dstate)");
  ScanCudaParams p;
  p.dtype = dtype_of(u.scalar_type(), op);
  p.batch = u.size(0);
  p.dim = u.size(1);
  p.seqlen = u.size(2);
  p.dstate = N;
  p.n_chunks = (p.seqlen + kScanChunk - 1) / kScanChunk;
  p.softplus = softplus;
  p.u = u.const_data_ptr();
  p.u_b = u.stride(0);
  p.u_d = u.stride(1);
  p.delta = delta.const_data_ptr();
  p.delta_b = delta.stride(0);
  p.delta_d = delta.stride(1);
  if (z) {
    MK_CHECK(z->sizes() == u.sizes() && z->scalar_type() == u.scalar_type() && (z->size(2) <= 1 || z->stride(2) == 1),
             op, ": z must match u, unit stride along seqlen");
    p.z = z->const_data_ptr();
    p.z_b = z->stride(0);
    p.z_d = z->stride(1);
  }
  p.A = A.const_data_ptr<float>();
  set_bc(op, "B", B, u, N, p.B, p.groups_B, p.B_b, p.B_g, p.B_n, p.B_l);
  set_bc(op, "C", C, u, N, p.C, p.groups_C, p.C_b, p.C_g, p.C_n, p.C_l);
  for (const auto* t : {&D, &delta_bias})
    if (*t)
      MK_CHECK((*t)->scalar_type() == kFloat && (*t)->is_contiguous(), op,
               ": D and delta_bias must be contiguous float32");
  p.D = D ? D->const_data_ptr<float>() : nullptr;
  p.delta_bias = delta_bias ? delta_bias->const_data_ptr<float>() : nullptr;
  if (initial_state)
    MK_CHECK(initial_state->scalar_type() == kFloat && initial_state->is_contiguous(), op,
             ": initial_state must be contiguous float32");
  p.initial_state = initial_state ? initial_state->const_data_ptr<float>() : nullptr;
  return p;
}

void check_launch(const char* op, int err) {
  MK_CHECK(err == 0, op, ": CUDA kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

std::tuple<Tensor, Tensor, Tensor> fwd(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                       const Tensor& C, const std::optional<Tensor>& D, const std::optional<Tensor>& z,
                                       const std::optional<Tensor>& delta_bias,
                                       const std::optional<Tensor>& initial_state, bool softplus, int64_t chunk_size) {
  constexpr const char* op = "selective_scan_fwd";
  const torch::stable::accelerator::DeviceGuard guard(u.get_device_index());
  const Tensor init = initial_state ? initial_state->contiguous() : Tensor();
  ScanCudaParams p = prepare(op, u, delta, A, B, C, D, z, delta_bias,
                             initial_state ? std::optional<Tensor>(init) : std::nullopt, softplus, chunk_size);
  Tensor out = empty_on(u, {p.batch, p.dim, p.seqlen});
  Tensor last = empty_on(u, {p.batch, p.dim, p.dstate}, kFloat);
  Tensor ckpt = empty_on(u, {p.batch, p.dim, p.n_chunks, p.dstate}, kFloat);
  p.out = out.data_ptr();
  p.last_state = last.data_ptr<float>();
  p.checkpoints = ckpt.data_ptr<float>();
  check_launch(op, selective_scan_fwd_cuda(p, current_stream(u)));
  return {out, last, ckpt};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> bwd(
    const Tensor& grad_out, const std::optional<Tensor>& grad_last_state, const Tensor& u, const Tensor& delta,
    const Tensor& A, const Tensor& B, const Tensor& C, const std::optional<Tensor>& D, const std::optional<Tensor>& z,
    const std::optional<Tensor>& delta_bias, const std::optional<Tensor>& initial_state, const Tensor& checkpoints,
    bool softplus, int64_t chunk_size, bool deterministic_algorithms) {
  constexpr const char* op = "selective_scan_bwd";
  const torch::stable::accelerator::DeviceGuard guard(u.get_device_index());
  ScanCudaParams p = prepare(op, u, delta, A, B, C, D, z, delta_bias, std::nullopt, softplus, chunk_size);
  MK_CHECK(grad_out.sizes() == u.sizes() && grad_out.scalar_type() == u.scalar_type() &&
               (grad_out.size(2) <= 1 || grad_out.stride(2) == 1),
           op, ": grad_out must match u, unit stride along seqlen");
  MK_CHECK(checkpoints.scalar_type() == kFloat && checkpoints.sizes() == Shape({p.batch, p.dim, p.n_chunks, p.dstate}),
           op, ": checkpoints must be float32 (batch, dim, ceil(seqlen / ", kScanChunk, "), dstate)");
  const Tensor ckpt = checkpoints.contiguous();
  const Tensor glast = grad_last_state ? grad_last_state->to(kFloat).contiguous() : Tensor();
  p.checkpoints = const_cast<float*>(ckpt.const_data_ptr<float>());
  p.grad_out = grad_out.const_data_ptr();
  p.grad_out_b = grad_out.stride(0);
  p.grad_out_d = grad_out.stride(1);
  p.grad_last = grad_last_state ? glast.const_data_ptr<float>() : nullptr;
  Tensor du = empty_on(u, {p.batch, p.dim, p.seqlen});
  Tensor ddelta = empty_on(u, {p.batch, p.dim, p.seqlen});
  Tensor dz = z ? empty_on(u, {p.batch, p.dim, p.seqlen}) : empty_on(u, {0}, kFloat);
  Tensor dA_part = empty_on(u, {p.batch, p.dim, p.dstate}, kFloat);
  // torch.use_deterministic_algorithms(True): blocks of K channels (inside one group of B and of C) own
  // partial dB/dC rows (batch, dim / K, N, L), summed below in order. K: the largest divisor of both
  // group sizes up to 32 (memory: 1/K of a full state tensor, in that mode only).
  const bool deterministic = deterministic_algorithms && (p.groups_B || p.groups_C);
  if (deterministic) {
    int64_t common = p.dim;
    if (p.groups_B) common = std::gcd(common, p.dim / p.groups_B);
    if (p.groups_C) common = std::gcd(common, p.dim / p.groups_C);
    for (int64_t k = std::min<int64_t>(32, common); k >= 1; --k)
      if (common % k == 0) {
        p.det_channels = k;
        break;
      }
  }
  const int64_t blocks = deterministic ? p.dim / p.det_channels : 0;
  auto var_grad = [&](int64_t groups) {
    if (!groups) return empty_on(u, {p.batch, p.dim, p.dstate}, kFloat);
    return deterministic ? zeros_on(u, {p.batch, blocks, p.dstate, p.seqlen}, kFloat)
                         : zeros_on(u, {p.batch, groups, p.dstate, p.seqlen}, kFloat);
  };
  Tensor dB = var_grad(p.groups_B);
  Tensor dC = var_grad(p.groups_C);
  Tensor dD_part = empty_on(u, {p.batch, p.dim}, kFloat), dbias_part = empty_on(u, {p.batch, p.dim}, kFloat);
  Tensor dinit = empty_on(u, {p.batch, p.dim, p.dstate}, kFloat);
  p.du = du.data_ptr();
  p.ddelta = ddelta.data_ptr();
  p.dz = z ? dz.data_ptr() : nullptr;
  p.dA_part = dA_part.data_ptr<float>();
  p.dB = dB.data_ptr<float>();
  p.dC = dC.data_ptr<float>();
  p.dD_part = dD_part.data_ptr<float>();
  p.dbias_part = dbias_part.data_ptr<float>();
  p.dinit = dinit.data_ptr<float>();
  check_launch(op, selective_scan_bwd_cuda(p, current_stream(u)));
  const auto empty = [&] { return empty_on(u, {0}, kFloat); };
  auto var_out = [&](const Tensor& g, int64_t groups, const Tensor& like) {
    if (!groups) return g.sum(0);
    const Tensor per_group = deterministic ? g.view({p.batch, groups, blocks / groups, p.dstate, p.seqlen}).sum(2) : g;
    return per_group.view(like.sizes()).to(like.scalar_type());
  };
  Tensor dB_out = var_out(dB, p.groups_B, B);
  Tensor dC_out = var_out(dC, p.groups_C, C);
  return {du,
          ddelta,
          dA_part.sum(0),
          dB_out,
          dC_out,
          D ? dD_part.sum(0) : empty(),
          z ? dz : empty(),
          delta_bias ? dbias_part.sum(0) : empty(),
          initial_state ? dinit : empty()};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(medkernels, CUDA, m) {
  MK_IMPL(m, "selective_scan_fwd", fwd);
  MK_IMPL(m, "selective_scan_bwd", bwd);
}

}  // namespace medkernels::cuda
