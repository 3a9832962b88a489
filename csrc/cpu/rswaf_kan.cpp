// FasterKAN's RSWAF basis + linear layer (the MedViTV2 KAN hot spot), CPU implementation of
// medkernels::rswaf_kan_fwd / _bwd:
//   out[t, o] = sum_{i, g} phi(x[t, i], g) * weight[o, i * G + g],  phi = 1 - tanh((x - grid[g]) * inv_den)^2.
//
// The torch side: checks and a loop over tiles of (token rows x input channels) whose sizes depend only on
// the shapes. Per tile, the kernel (rswaf_kan_kernel.h) forms the tile's basis in a scratch buffer
// (parallel over rows) and the kernels' packed GEMM multiplies it by the matching weight columns,
// accumulating the output over channel chunks. The GEMM's reduction order depends on the shapes only
// (a BLAS reblocks with the thread count), so the results are the same bits for every thread count. The backward
// recomputes the tile's basis, forms dL/dphi = grad_out @ weight for the tile only and contracts it at once into dx
// (whole channels per tile: no accumulation) and the grid and inv_den row partials; dweight's columns of the chunk are
// grad_out^T @ phi of the tile. The (tokens, in * G) basis never exists: scratch is one or two tiles of about 2M
// elements.

#include <algorithm>

#include "common.h"
#include "medkernels/cpu/isa.h"
#include "medkernels/cpu/rswaf_kan.h"

namespace medkernels::cpu {
namespace {

// The basis is formed in tiles of `rows` tokens x `chans` channels (the whole token range when it fits,
// so each product streams the weight once): chunks of about 512 basis columns, tiles of about 2^21
// elements (8 MiB in float32). Depends only on the shapes.
struct Tiling {
  int64_t rows, chans;
};
Tiling tiling(int64_t tokens, int64_t in, int64_t G) {
  const int64_t chans = std::clamp<int64_t>(512 / G, 1, std::max<int64_t>(in, 1));
  const int64_t rows = std::max<int64_t>(16, ((int64_t(1) << 21) / (chans * G)) / 16 * 16);
  return {std::min(rows, std::max<int64_t>(tokens, 1)), chans};
}

struct Problem {
  KanParams p;
  int64_t tokens = 0, out = 0;
  ScalarType acc;
  Tensor x2, w_acc, grid_rep;  // keep-alives
};

Problem setup(const char* op, const Tensor& x, const Tensor& grid, const Tensor& inv_den, const Tensor& weight) {
  const auto st = x.scalar_type();
  MK_CHECK(st == kFloat || st == kDouble || st == kHalf || st == kBFloat16, op,
           ": x must be float32, float16, bfloat16 or float64, got ", st);
  MK_CHECK(x.dim() >= 1, op, ": x must be (..., in), got a 0-dim tensor");
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"x", x},
                                {"grid", grid},
                                {"inv_denominator", inv_den},
                                {"weight", weight}})
    MK_CHECK(t.device().is_cpu(), op, ": expected CPU tensors, got ", name, " on ", t.device());
  const auto acc = st == kDouble ? kDouble : kFloat;
  MK_CHECK(grid.dim() == 1 && grid.size(0) >= 1 && grid.scalar_type() == acc, op, ": grid must be (G,) with G >= 1 in ",
           acc, ", got ", grid.sizes(), " ", grid.scalar_type());
  MK_CHECK(inv_den.dim() == 0 && inv_den.scalar_type() == acc, op, ": inv_denominator must be a 0-dim ", acc,
           " tensor, got ", inv_den.sizes(), " ", inv_den.scalar_type());
  const int64_t in = x.size(-1), G = grid.size(0);
  MK_CHECK(weight.dim() == 2 && weight.size(1) == in * G && weight.scalar_type() == st, op,
           ": weight must be (out, in * G) = (out, ", in * G, ") in ", st, ", got ", weight.sizes(), " ",
           weight.scalar_type());
  Problem pr;
  pr.acc = acc;
  pr.tokens = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) pr.tokens *= x.size(d);
  pr.out = weight.size(0);
  pr.x2 = x.reshape({pr.tokens, in}).contiguous();
  pr.w_acc = weight.to(acc).contiguous();
  pr.grid_rep = grid.contiguous().repeat({in});
  KanParams& p = pr.p;
  p.dtype = kind_of(st, op);
  p.acc = acc == kDouble ? ScalarKind::Float64 : ScalarKind::Float32;
  p.in = in;
  p.grids = G;
  p.k = in * G;
  p.inv_den = item_double(inv_den);
  p.x = pr.x2.const_data_ptr();
  p.grid_rep = pr.grid_rep.const_data_ptr();
  return pr;
}

std::vector<int64_t> out_shape(const Tensor& x, int64_t last) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = last;
  return shape;
}

template <class F>
void rows_parallel(int64_t n, F&& f) {
  parallel_for(0, n, 8, f);
}

// C (m x n) = A (m x k) B (k x n) (+ C with accumulate) on the kernels' packed GEMM: B packed once,
// then independent tiles of C over the threads. A, B, C are acc-typed views given by their strides.
void gemm(const GemmKernels& kern, ScalarType acc, int64_t m, int64_t n, int64_t k, const Tensor& a, const Tensor& b,
          Tensor& c, bool accumulate) {
  GemmArgs g;
  g.acc = acc == kDouble ? ScalarKind::Float64 : ScalarKind::Float32;
  g.m = m, g.n = n, g.k = k;
  g.a = a.const_data_ptr(), g.a_rs = a.stride(0), g.a_ks = a.stride(1);
  g.b = b.const_data_ptr(), g.b_ks = b.stride(0), g.b_ns = b.stride(1);
  g.c = c.data_ptr(), g.ldc = c.stride(0);
  g.accumulate = accumulate;
  MK_CHECK(c.stride(1) == 1 && (g.a_ks == 1 || g.a_rs == 1) && (g.b_ns == 1 || g.b_ks == 1),
           "rswaf_kan: internal error: unsupported GEMM strides");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate) c.zero_();
    return;
  }
  Tensor packed = cpu_bytes(kern.packed_b_bytes(g) + 64);
  g.packed_b = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(packed.data_ptr()) + 63) & ~uintptr_t(63));
  parallel_for(0, kern.b_panel_count(g), 1, [&](int64_t p0, int64_t p1) { kern.pack_b(g, p0, p1); });
  Scratch scratch(kern.scratch_bytes(g));
  parallel_for(0, gemm_tile_count(g), 1, [&](int64_t t0, int64_t t1) { kern.tiles(g, t0, t1, scratch.for_thread()); });
}

Tensor rswaf_kan_fwd_cpu(const Tensor& x, const Tensor& grid, const Tensor& inv_den, const Tensor& weight) {
  constexpr const char* op = "rswaf_kan_fwd";
  Problem pr = setup(op, x, grid, inv_den, weight);
  const KanParams& p = pr.p;
  const RswafKanKernelTable& kern = rswaf_kan_kernels();
  Tensor out_acc = empty_on(x, {pr.tokens, pr.out}, pr.acc);
  if (pr.tokens > 0 && pr.out > 0) {
    if (p.k == 0) {
      out_acc.zero_();
    } else {
      const Tiling tl = tiling(pr.tokens, p.in, p.grids);
      Tensor phi = empty_on(x, {tl.rows * tl.chans * p.grids}, pr.acc);
      Scratch scratch(kern.scratch_bytes(p));
      const int64_t esize = int64_t(phi.element_size());
      for (int64_t b0 = 0; b0 < pr.tokens; b0 += tl.rows) {
        const int64_t n = std::min(tl.rows, pr.tokens - b0);
        Tensor ob = out_acc.narrow(0, b0, n);
        for (int64_t c0 = 0; c0 < p.in; c0 += tl.chans) {
          const int64_t m = std::min(tl.chans, p.in - c0), kc = m * p.grids;
          Tensor phib = phi.narrow(0, 0, n * kc).view({n, kc});
          char* base = static_cast<char*>(phib.data_ptr());
          rows_parallel(n, [&](int64_t r0, int64_t r1) {
            kern.basis(p, KanTile{b0 + r0, b0 + r1, c0, c0 + m, kc}, base + r0 * kc * esize, scratch.for_thread());
          });
          gemm(kern.gemm, pr.acc, n, pr.out, kc, phib, pr.w_acc.narrow(1, c0 * p.grids, kc).t(), ob, c0 > 0);
        }
      }
    }
  }
  Tensor out = out_acc.scalar_type() == x.scalar_type() ? out_acc : out_acc.to(x.scalar_type());
  return out.reshape(out_shape(x, pr.out));
}

// output_mask: (x, grid, inv_denominator, weight). Absent gradients are empty tensors.
std::tuple<Tensor, Tensor, Tensor, Tensor> rswaf_kan_bwd_cpu(const Tensor& grad_out, const Tensor& x,
                                                             const Tensor& grid, const Tensor& inv_den,
                                                             const Tensor& weight,
                                                             const std::vector<bool>& output_mask) {
  constexpr const char* op = "rswaf_kan_bwd";
  Problem pr = setup(op, x, grid, inv_den, weight);
  MK_CHECK(output_mask.size() == 4, op, ": output_mask must have 4 entries, got ", output_mask.size());
  const bool need_x = output_mask[0], need_grid = output_mask[1], need_inv = output_mask[2], need_w = output_mask[3];
  MK_CHECK(grad_out.device().is_cpu(), op, ": expected CPU tensors, got grad_out on ", grad_out.device());
  MK_CHECK(grad_out.sizes() == Shape(out_shape(x, pr.out)), op, ": grad_out must be ", Shape(out_shape(x, pr.out)),
           ", got ", grad_out.sizes());
  KanParams& p = pr.p;
  const RswafKanKernelTable& kern = rswaf_kan_kernels();
  const bool need_da = need_x || need_grid || need_inv;
  const bool work = pr.tokens > 0 && pr.out > 0 && p.k > 0;
  Tensor dx = need_x ? (work ? empty_on(x, {pr.tokens, p.in}) : zeros_on(x, {pr.tokens, p.in})) : empty_on(x, {0});
  Tensor dgrid_rows = need_grid ? zeros_on(x, {pr.tokens, p.grids}, pr.acc) : Tensor();
  Tensor dinv_rows = need_inv ? zeros_on(x, {pr.tokens}, pr.acc) : Tensor();
  Tensor dw_acc = need_w ? (work ? empty_on(x, {pr.out, p.k}, pr.acc) : zeros_on(x, {pr.out, p.k}, pr.acc)) : Tensor();
  if (work && (need_da || need_w)) {
    p.dx = need_x ? dx.data_ptr() : nullptr;
    p.dgrid_rows = need_grid ? dgrid_rows.data_ptr() : nullptr;
    p.dinv_rows = need_inv ? dinv_rows.data_ptr() : nullptr;
    const Tensor g2 = grad_out.reshape({pr.tokens, pr.out}).to(pr.acc).contiguous();
    const Tiling tl = tiling(pr.tokens, p.in, p.grids);
    const int64_t tile = tl.rows * tl.chans * p.grids;
    Tensor dphi = need_da ? empty_on(x, {tile}, pr.acc) : Tensor();
    Tensor phi = need_w ? empty_on(x, {tile}, pr.acc) : Tensor();
    Scratch scratch(kern.scratch_bytes(p));
    const int64_t esize = int64_t(element_size(pr.acc));
    for (int64_t b0 = 0; b0 < pr.tokens; b0 += tl.rows) {
      const int64_t n = std::min(tl.rows, pr.tokens - b0);
      const Tensor gb = g2.narrow(0, b0, n);
      for (int64_t c0 = 0; c0 < p.in; c0 += tl.chans) {
        const int64_t m = std::min(tl.chans, p.in - c0), kc = m * p.grids;
        Tensor phib = need_w ? phi.narrow(0, 0, n * kc).view({n, kc}) : Tensor();
        char* phi_base = need_w ? static_cast<char*>(phib.data_ptr()) : nullptr;
        if (need_da) {
          Tensor db = dphi.narrow(0, 0, n * kc).view({n, kc});
          gemm(kern.gemm, pr.acc, n, kc, pr.out, gb, pr.w_acc.narrow(1, c0 * p.grids, kc), db, false);  // dL/dphi
          char* da_base = static_cast<char*>(db.data_ptr());
          rows_parallel(n, [&](int64_t r0, int64_t r1) {
            kern.backward(p, KanTile{b0 + r0, b0 + r1, c0, c0 + m, kc}, da_base + r0 * kc * esize,
                          phi_base ? phi_base + r0 * kc * esize : nullptr, scratch.for_thread());
          });
        } else {
          rows_parallel(n, [&](int64_t r0, int64_t r1) {
            kern.basis(p, KanTile{b0 + r0, b0 + r1, c0, c0 + m, kc}, phi_base + r0 * kc * esize, scratch.for_thread());
          });
        }
        if (need_w) {
          Tensor dwc = dw_acc.narrow(1, c0 * p.grids, kc);
          gemm(kern.gemm, pr.acc, pr.out, kc, n, gb.t(), phib, dwc, b0 > 0);
        }
      }
    }
  }
  // Row partials summed in a fixed order (deterministic for any thread count).
  Tensor dgrid = need_grid ? zeros_on(x, {p.grids}, pr.acc) : empty_on(grid, {0});
  Tensor dinv = need_inv ? zeros_on(x, {}, pr.acc) : empty_on(inv_den, {0});
  dispatch_floating(pr.acc, "rswaf_kan_bwd_reduce", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    if (need_grid) {
      const scalar_t* rows = dgrid_rows.const_data_ptr<scalar_t>();
      scalar_t* d = dgrid.data_ptr<scalar_t>();
      for (int64_t t = 0; t < pr.tokens; ++t)
        for (int64_t g = 0; g < p.grids; ++g) d[g] += rows[t * p.grids + g];
      for (int64_t g = 0; g < p.grids; ++g) d[g] *= scalar_t(-p.inv_den);
    }
    if (need_inv) {
      const scalar_t* rows = dinv_rows.const_data_ptr<scalar_t>();
      scalar_t s = 0;
      for (int64_t t = 0; t < pr.tokens; ++t) s += rows[t];
      dinv.fill_(s);
    }
  });
  Tensor dw = !need_w ? empty_on(weight, {0})
                      : (dw_acc.scalar_type() == weight.scalar_type() ? dw_acc : dw_acc.to(weight.scalar_type()));
  if (need_x) dx = dx.reshape(x.sizes());
  return {dx, dgrid, dinv, dw};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(medkernels, CPU, m) {
  MK_IMPL(m, "rswaf_kan_fwd", rswaf_kan_fwd_cpu);
  MK_IMPL(m, "rswaf_kan_bwd", rswaf_kan_bwd_cpu);
}

}  // namespace medkernels::cpu
