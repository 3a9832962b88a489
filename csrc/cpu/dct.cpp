// The separable 2D transform behind medkernels.ops.dct2d / idct2d, CPU implementation of
// medkernels::separable2d: out[..., :, :] = mh @ x[..., :, :] @ mw^T, one image per task.
//
// The torch side: checks, the transposed and vector-padded column basis, allocation. The loops live in
// dct_kernel.h, per instruction set.

#include "medkernels/cpu/dct.h"
#include "common.h"
#include "medkernels/cpu/isa.h"

namespace medkernels::cpu {
namespace {

Tensor separable2d_cpu(const Tensor& x, const Tensor& mh, const Tensor& mw) {
  constexpr const char* op = "separable2d";
  const auto st = x.scalar_type();
  MK_CHECK(st == kFloat || st == kDouble, op, ": x must be float32 or float64, got ", st);
  MK_CHECK(x.dim() >= 2, op, ": x must be (..., h, w), got ", x.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"x", x}, {"mh", mh}, {"mw", mw}})
    MK_CHECK(t.device().is_cpu(), op, ": expected CPU tensors, got ", name, " on ", t.device());
  const int64_t h = x.size(-2), w = x.size(-1);
  MK_CHECK(mh.dim() == 2 && mh.size(1) == h && mh.scalar_type() == st, op, ": mh must be (out_h, ", h, ") in ", st,
           ", got ", mh.sizes(), " ", mh.scalar_type());
  MK_CHECK(mw.dim() == 2 && mw.size(1) == w && mw.scalar_type() == st, op, ": mw must be (out_w, ", w, ") in ", st,
           ", got ", mw.sizes(), " ", mw.scalar_type());
  const DctKernelTable& kern = dct_kernels();
  Sep2dParams p;
  p.acc = st == kDouble ? ScalarKind::Float64 : ScalarKind::Float32;
  p.h = h;
  p.w = w;
  p.oh = mh.size(0);
  p.ow = mw.size(0);
  const int64_t lanes = kern.vector_bytes / int64_t(element_size(st));
  p.owpad = (p.ow + lanes - 1) / lanes * lanes;
  std::vector<int64_t> shape = x.sizes().vec();
  shape[shape.size() - 2] = p.oh;
  shape[shape.size() - 1] = p.ow;
  Tensor out = empty_on(x, shape);
  p.images = h * w == 0 ? 0 : x.numel() / (h * w);
  if (out.numel() == 0 || p.images == 0) return out.zero_();
  const Tensor xc = x.contiguous(), mhc = mh.contiguous();
  Tensor mwt = zeros_on(x, {w, p.owpad});
  mwt.narrow(1, 0, p.ow).copy_(mw.t());
  p.x = xc.const_data_ptr();
  p.mh = mhc.const_data_ptr();
  p.mwt = mwt.const_data_ptr();
  p.out = out.data_ptr();
  Scratch scratch(kern.scratch_bytes(p));
  parallel_for(0, p.images, 1, [&](int64_t i0, int64_t i1) { kern.run(p, i0, i1, scratch.for_thread()); });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(medkernels, CPU, m) { MK_IMPL(m, "separable2d", separable2d_cpu); }

}  // namespace medkernels::cpu
