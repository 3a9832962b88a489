// Torch-side helpers shared by the selective scan and the multi-order scan (csrc/cpu/selective_scan.cpp,
// csrc/cpu/multi_order_scan.cpp): the last-guard checks of their operands and a per-batch reduction.
#pragma once

namespace medkernels::cpu::scan {

inline void check_seq(const char* op, const char* name, const Tensor& t, const Tensor& u) {
  MK_CHECK(t.device() == u.device(), op, ": ", name, " must be on ", u.device(), ", got ", t.device());
  MK_CHECK(t.sizes() == u.sizes(), op, ": ", name, " must have shape ", u.sizes(), ", got ", t.sizes());
  MK_CHECK(t.scalar_type() == u.scalar_type(), op, ": ", name, " must have dtype ", u.scalar_type(), ", got ",
           t.scalar_type());
  MK_CHECK(t.size(2) <= 1 || t.stride(2) == 1, op, ": ", name, " must have unit stride along seqlen");
}

inline void check_param(const char* op, const char* name, const Tensor& t, Shape shape, ScalarType acc,
                        const Tensor& u) {
  MK_CHECK(t.device() == u.device(), op, ": ", name, " must be on ", u.device(), ", got ", t.device());
  MK_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  MK_CHECK(t.scalar_type() == acc, op, ": ", name, " must have dtype ", acc, ", got ", t.scalar_type());
}

// out[d, n] = sum_b part[b, d, n] for n < N (part is (batch, dim, Np)), in batch order.
inline Tensor sum_over_batch(const Tensor& part, int64_t N) {
  const int64_t batch = part.size(0), dim = part.size(1), Np = part.size(2);
  Tensor out = empty_on(part, {dim, N});
  dispatch_floating(part.scalar_type(), "selective_scan_bwd_reduce", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* src = part.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    parallel_for(0, dim, 64, [&](int64_t d0, int64_t d1) {
      for (int64_t d = d0; d < d1; ++d)
        for (int64_t n = 0; n < N; ++n) {
          scalar_t s = 0;
          for (int64_t b = 0; b < batch; ++b) s += src[(b * dim + d) * Np + n];
          dst[d * N + n] = s;
        }
    });
  });
  return out;
}

}  // namespace medkernels::cpu::scan
