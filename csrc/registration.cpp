// The medkernels op library (every schema lives here) and the medkernels._C Python module.
//
// Tensors never cross pybind11: Python reaches the kernels through torch.ops.medkernels.*, and this
// module only carries build facts and the CPU instruction-set switch. The schemas are defined through the
// LibTorch stable ABI (medkernels/stable.h), and the pybind11 module includes no torch header, so the binary
// depends on a Python version and on torch's stable C shim only.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "medkernels/cpu/isa.h"
#include "medkernels/stable.h"

// pt2_compliant_tag when the targeted stable ABI can carry tags (torch >= 2.12); the ops are fullgraph-compiled
// in the tests either way.
#if defined(TORCH_VERSION_2_12_0) && TORCH_FEATURE_VERSION >= TORCH_VERSION_2_12_0
#define MK_DEF(m, schema) (m).def(schema, {at::Tag::pt2_compliant_tag})
#else
#define MK_DEF(m, schema) (m).def(schema)
#endif

STABLE_TORCH_LIBRARY(medkernels, m) {
  // Selective scan (Mamba). Returns (out, last_state, checkpoints); checkpoints (batch, dim,
  // ceil(seqlen / chunk_size), dstate) are the states before each chunk, saved for the backward.
  MK_DEF(m,
         "selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
         "Tensor? delta_bias, Tensor? initial_state, bool delta_softplus, int chunk_size) -> (Tensor, Tensor, Tensor)");
  // Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state); the gradient of an
  // absent optional input is an empty tensor. deterministic: torch.are_deterministic_algorithms_enabled() (the
  // CUDA kernel then sums dB/dC in a fixed order; the CPU backward always does), passed in because the stable ABI
  // cannot read torch's global context.
  MK_DEF(m,
         "selective_scan_bwd(Tensor grad_out, Tensor? grad_last_state, Tensor u, Tensor delta, Tensor A, Tensor B, "
         "Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, Tensor? initial_state, Tensor checkpoints, "
         "bool delta_softplus, int chunk_size, bool deterministic=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
         "Tensor, Tensor, Tensor, "
         "Tensor)");

  // Multi-order selective scan (PointMamba2's group Point-SSM): u (batch, dim, seqlen) scanned along K
  // orderings orders (batch, K, seqlen); delta (batch, K, dim, seqlen), B/C (batch, K, dstate, seqlen),
  // A (K, dim, dstate), D/delta_bias (K, dim). Returns (out (batch, dim, seqlen), checkpoints
  // (batch, K * dim, ceil(seqlen / chunk_size), dstate)).
  MK_DEF(m,
         "multi_order_selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
         "Tensor? delta_bias, Tensor orders, bool delta_softplus, int chunk_size) -> (Tensor, Tensor)");
  // Returns (du, ddelta, dA, dB, dC, dD, ddelta_bias); absent ones are empty.
  MK_DEF(m,
         "multi_order_selective_scan_bwd(Tensor grad_out, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, "
         "Tensor? D, Tensor? delta_bias, Tensor orders, Tensor checkpoints, bool delta_softplus, int chunk_size) "
         "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // Neighborhood attention, fused: heads-last (batch, *spatial, heads, dim), 1-3 spatial dims; per-axis
  // lists. Returns (out, lse); lse (batch, *spatial, heads) float32 (float64 for float64 inputs).
  MK_DEF(m,
         "na_fwd(Tensor query, Tensor key, Tensor value, int[] kernel_size, int[] stride, int[] dilation, "
         "bool[] is_causal, float scale, Tensor? rpb, Tensor? additional_keys, Tensor? additional_values) "
         "-> (Tensor, Tensor)");
  // Returns (dquery, dkey, dvalue, drpb, dadditional_keys, dadditional_values); absent ones are empty.
  // grad_lse (optional): the gradient reaching the lse output.
  MK_DEF(m,
         "na_bwd(Tensor grad_out, Tensor? grad_lse, Tensor query, Tensor key, Tensor value, Tensor out, Tensor lse, "
         "int[] kernel_size, "
         "int[] stride, int[] dilation, bool[] is_causal, float scale, Tensor? rpb, Tensor? additional_keys, "
         "Tensor? additional_values) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Unfused, heads-first (batch, heads, *spatial, dim): attn (batch, heads, *spatial, prod(kernel_size)).
  MK_DEF(m,
         "na_qk(Tensor query, Tensor key, int[] kernel_size, int[] dilation, bool[] is_causal, Tensor? rpb) -> Tensor");
  MK_DEF(m,
         "na_qk_bwd(Tensor grad_attn, Tensor query, Tensor key, int[] kernel_size, int[] dilation, bool[] is_causal, "
         "Tensor? rpb) -> (Tensor, Tensor, Tensor)");
  // Causal depthwise conv1d: x (batch, dim, seqlen), weight (dim, width). Returns (out, final_states);
  // final_states (batch, dim, width - 1) when asked for, else empty.
  MK_DEF(m,
         "causal_conv1d_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? seq_idx, Tensor? initial_states, "
         "bool return_final_states, bool silu) -> (Tensor, Tensor)");
  // Returns (dx, dweight, dbias, dinitial_states); absent ones are empty.
  MK_DEF(m,
         "causal_conv1d_bwd(Tensor x, Tensor weight, Tensor? bias, Tensor? seq_idx, Tensor? initial_states, "
         "Tensor dout, Tensor? dfinal_states, bool silu) -> (Tensor, Tensor, Tensor, Tensor)");
  // D-Former 3D group attention: q/k/v (batch, D, H, W, heads, head_dim); group sizes are clamped to
  // each axis; global_scope false = local windows, true = the dilated partition. Returns (out, lse);
  // lse (batch, D, H, W, heads) float32 (float64 for float64 inputs).
  MK_DEF(m,
         "dilated_attention3d_fwd(Tensor query, Tensor key, Tensor value, int[] group_size, bool global_scope, "
         "float scale) -> (Tensor, Tensor)");
  // Returns (dquery, dkey, dvalue). grad_lse (optional): the gradient reaching the lse output.
  MK_DEF(m,
         "dilated_attention3d_bwd(Tensor grad_out, Tensor? grad_lse, Tensor query, Tensor key, Tensor value, "
         "Tensor out, Tensor lse, int[] group_size, bool global_scope, float scale) -> (Tensor, Tensor, Tensor)");
  // The same on one packed qkv (batch, D, H, W, 3, heads, head_dim) (views of a qkv projection); the
  // backward returns the packed gradient dqkv.
  MK_DEF(m,
         "dilated_attention3d_qkvpacked_fwd(Tensor qkv, int[] group_size, bool global_scope, float scale) -> "
         "(Tensor, Tensor)");
  MK_DEF(m,
         "dilated_attention3d_qkvpacked_bwd(Tensor grad_out, Tensor? grad_lse, Tensor qkv, Tensor out, Tensor lse, "
         "int[] group_size, bool global_scope, float scale) -> Tensor");
  // out = mh @ x @ mw^T over the last two axes: x (..., h, w), mh (out_h, h), mw (out_w, w). The DCT
  // ops pass their cosine bases; its gradient is the same op with the bases transposed.
  MK_DEF(m, "separable2d(Tensor x, Tensor mh, Tensor mw) -> Tensor");
  // Point clouds: furthest point sampling (indices) and k nearest neighbours (squared distances, indices).
  MK_DEF(m, "furthest_point_sample(Tensor xyz, int npoint, Tensor? lengths, int start_idx) -> Tensor");
  MK_DEF(m, "knn(Tensor query, Tensor points, int k, Tensor? query_lengths, Tensor? lengths) -> (Tensor, Tensor)");
  // FasterKAN layer after its LayerNorm: out = phi(x) @ weight^T with phi_{i*G+g}(x) = 1 - tanh((x_i - grid_g) *
  // inv_denominator)^2; x (..., in), grid (G,) and inv_denominator (0-dim) in float32 (float64 for float64 x),
  // weight (out, in * G) in x's dtype. Returns (..., out).
  MK_DEF(m, "rswaf_kan_fwd(Tensor x, Tensor grid, Tensor inv_denominator, Tensor weight) -> Tensor");
  // Returns (dx, dgrid, dinv_denominator, dweight) for output_mask (x, grid, inv_denominator, weight); absent
  // ones are empty.
  MK_DEF(m,
         "rswaf_kan_bwd(Tensor grad_out, Tensor x, Tensor grid, Tensor inv_denominator, Tensor weight, "
         "bool[] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  MK_DEF(m, "na_av(Tensor attn, Tensor value, int[] kernel_size, int[] dilation, bool[] is_causal) -> Tensor");
  MK_DEF(m,
         "na_av_bwd(Tensor grad_out, Tensor attn, Tensor value, int[] kernel_size, int[] dilation, bool[] is_causal) "
         "-> (Tensor, Tensor)");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "medkernels compiled kernels; use medkernels.ops, not this module";
  m.def("cpu_isas", &medkernels::cpu::supported_isas,
        "CPU instruction sets this build has kernels for and this CPU runs, widest first");
  m.def("cpu_isa", &medkernels::cpu::active_isa, "The CPU instruction set the kernels use now");
  m.def(
      "set_cpu_isa",
      [](const std::string& name) {
        try {
          medkernels::cpu::set_isa(name);
        } catch (const std::invalid_argument& e) {
          throw pybind11::value_error(e.what());
        }
      },
      "Select the CPU instruction set by name (for testing each kernel body)");
#if defined(MEDKERNELS_WITH_CUDA)
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#if defined(_OPENMP)
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
}
