// Neighborhood attention, CPU implementation of medkernels::na_fwd / na_bwd (fused, heads-last) and
// na_qk / na_av with their backwards (unfused, heads-first).
//
// This file is the torch side: last-guard checks, the per-axis window tables (natten's rules: shifted
// borders, even kernels, stride leaders, uneven dilation groups, per-axis causal), canonical padded
// copies of q/k/v, and the ordered reductions of per-task partial gradients.

#include <algorithm>
#include <vector>

#include "common.h"
#include "medkernels/cpu/isa.h"
#include "medkernels/cpu/neighborhood_attention.h"

namespace medkernels::cpu {
namespace {

constexpr int64_t kTile = 64;

// Window tables of one axis (see NaAxis).
struct AxisTables {
  std::vector<int64_t> win_start, win_len, rpb_base, inv_start, inv_len;
};

AxisTables axis_tables(int64_t L, int64_t K, int64_t s, int64_t d, bool causal) {
  AxisTables t;
  for (auto* v : {&t.win_start, &t.win_len, &t.rpb_base, &t.inv_start, &t.inv_len}) v->assign(L, 0);
  std::vector<int64_t> start_g(L);  // window start in the query's dilation group
  for (int64_t x = 0; x < L; ++x) {
    const int64_t g = x % d, i = x / d, Lg = L / d + (g < L % d ? 1 : 0);
    int64_t start, len;
    if (!causal) {
      const int64_t leader = std::min((i / s) * s + s / 2, Lg - 1);
      start = std::clamp(leader - K / 2, int64_t(0), Lg - K);
      len = K;
    } else {
      const int64_t leader = std::min((i / s) * s + s - 1, Lg - 1);
      start = std::max(leader - (K - 1), int64_t(0));
      len = std::min(i + 1, Lg) - start;
    }
    start_g[x] = start;
    t.win_start[x] = start * d + g;
    t.win_len[x] = len;
    t.rpb_base[x] = K - 1 + start - i;
  }
  // Inverse: per dilation group, the queries whose window holds in-group key j form a range whose
  // ends never decrease with j (window starts and ends are monotone), so two pointers suffice.
  for (int64_t g = 0; g < d && g < L; ++g) {
    const int64_t Lg = L / d + (g < L % d ? 1 : 0);
    int64_t lo = 0, hi = -1;
    for (int64_t j = 0; j < Lg; ++j) {
      while (hi + 1 < Lg && start_g[(hi + 1) * d + g] <= j) ++hi;
      while (lo < Lg && start_g[lo * d + g] + t.win_len[lo * d + g] <= j) ++lo;
      const int64_t y = j * d + g;
      t.inv_start[y] = lo * d + g;
      t.inv_len[y] = std::max<int64_t>(0, hi - lo + 1);
    }
  }
  return t;
}

struct Problem {
  NaParams p;
  std::vector<AxisTables> tables;  // keeps the tables alive
  std::vector<int64_t> spatial;    // the caller's spatial sizes
  ScalarType acc = kFloat;
};

// Fills the three axes (leading missing axes are length 1, kernel 1) and checks natten's rules.
void set_axes(Problem& pr, const char* op, Shape spatial, Shape kernel, Shape stride, Shape dilation,
              const std::vector<bool>& causal) {
  const int64_t n = int64_t(spatial.size());
  MK_CHECK(n >= 1 && n <= 3, op, ": 1 to 3 spatial dims expected, got ", n);
  MK_CHECK(int64_t(kernel.size()) == n && int64_t(stride.size()) == n && int64_t(dilation.size()) == n &&
               int64_t(causal.size()) == n,
           op, ": kernel_size, stride, dilation and is_causal need one entry per spatial dim (", n, ")");
  pr.spatial.assign(spatial.begin(), spatial.end());
  pr.tables.resize(3);
  int64_t kprod = 1;
  for (int64_t a = 0; a < 3; ++a) {
    const int64_t src = a - (3 - n);
    const int64_t L = src >= 0 ? spatial[src] : 1, K = src >= 0 ? kernel[src] : 1;
    const int64_t s = src >= 0 ? stride[src] : 1, d = src >= 0 ? dilation[src] : 1;
    const bool c = src >= 0 ? causal[src] : false;
    if (src >= 0) {
      MK_CHECK(K >= 2, op, ": kernel_size must be >= 2, got ", K);
      MK_CHECK(s >= 1 && s <= K, op, ": stride must be in [1, kernel_size], got ", s);
      MK_CHECK(d >= 1, op, ": dilation must be >= 1, got ", d);
      MK_CHECK(K * d <= L, op, ": kernel_size * dilation must not exceed the axis size (", K, " * ", d, " > ", L, ")");
    }
    pr.tables[a] = axis_tables(L, K, s, d, c);
    NaAxis& ax = pr.p.axis[a];
    ax.L = L;
    ax.K = K;
    ax.dil = d;
    ax.R = 2 * K - 1;
    ax.win_start = pr.tables[a].win_start.data();
    ax.win_len = pr.tables[a].win_len.data();
    ax.rpb_base = pr.tables[a].rpb_base.data();
    ax.inv_start = pr.tables[a].inv_start.data();
    ax.inv_len = pr.tables[a].inv_len.data();
    kprod *= K;
  }
  pr.p.kprod = kprod;
  pr.p.tokens = pr.p.axis[0].L * pr.p.axis[1].L * pr.p.axis[2].L;
}

int64_t padded(int64_t d, int64_t lanes) { return (d + lanes - 1) / lanes * lanes; }

// (batch, tokens, heads, dim) view of a heads-last tensor -> canonical (batch, heads, tokens, dpad) acc copy.
Tensor canon_heads_last(const Tensor& x, int64_t batch, int64_t tokens, int64_t dpad, ScalarType acc,
                        double scale = 1.0) {
  const int64_t heads = x.size(-2), dim = x.size(-1);
  const Tensor src = x.reshape({batch, tokens, heads, dim}).permute({0, 2, 1, 3});
  Tensor out =
      dpad == dim ? empty_on(x, {batch, heads, tokens, dpad}, acc) : zeros_on(x, {batch, heads, tokens, dpad}, acc);
  out.narrow(3, 0, dim).copy_(src);
  if (scale != 1.0) out.mul_(scale);
  return out;
}

// Heads-first (batch, heads, *spatial, dim) -> canonical (batch, heads, tokens, dpad) acc copy.
Tensor canon_heads_first(const Tensor& x, int64_t tokens, int64_t dpad, ScalarType acc) {
  const int64_t batch = x.size(0), heads = x.size(1), dim = x.size(-1);
  const Tensor src = x.reshape({batch, heads, tokens, dim});
  if (dpad == dim && src.scalar_type() == acc && src.is_contiguous()) return src.contiguous();
  Tensor out =
      dpad == dim ? empty_on(x, {batch, heads, tokens, dpad}, acc) : zeros_on(x, {batch, heads, tokens, dpad}, acc);
  out.narrow(3, 0, dim).copy_(src);
  return out;
}

// Canonical (batch, heads, tokens, dpad) -> heads-last (batch, *spatial, heads, dim) in `dtype`.
Tensor to_heads_last(const Tensor& c, const std::vector<int64_t>& spatial, int64_t dim, ScalarType dtype) {
  const int64_t batch = c.size(0), heads = c.size(1), tokens = c.size(2);
  std::vector<int64_t> shape{batch};
  shape.insert(shape.end(), spatial.begin(), spatial.end());
  shape.push_back(heads);
  shape.push_back(dim);
  Tensor out = empty_on(c, shape, dtype);
  out.view({batch, tokens, heads, dim}).copy_(c.narrow(3, 0, dim).permute({0, 2, 1, 3}));
  return out;
}

// Canonical (batch, heads, tokens, dpad) -> heads-first (batch, heads, *spatial, dim) in `dtype`.
Tensor to_heads_first(const Tensor& c, const std::vector<int64_t>& spatial, int64_t dim, ScalarType dtype) {
  std::vector<int64_t> shape{c.size(0), c.size(1)};
  shape.insert(shape.end(), spatial.begin(), spatial.end());
  shape.push_back(dim);
  Tensor out = empty_on(c, shape, dtype);
  out.view({c.size(0), c.size(1), c.size(2), dim}).copy_(c.narrow(3, 0, dim));
  return out;
}

void check_float(const char* op, const char* name, const Tensor& t) {
  const auto st = t.scalar_type();
  MK_CHECK(st == kFloat || st == kDouble || st == kHalf || st == kBFloat16, op, ": ", name,
           " must be float32, float16, bfloat16 or float64, got ", st);
  MK_CHECK(t.device().is_cpu(), op, ": expected CPU tensors, got ", name, " on ", t.device());
}

// The canonical relative-position bias (heads, R0, R1, R2) in acc precision.
Tensor canon_rpb(const char* op, const Tensor& rpb, const Problem& pr, int64_t heads) {
  check_float(op, "rpb", rpb);
  const int64_t n = int64_t(pr.spatial.size());
  std::vector<int64_t> want{heads};
  for (int64_t a = 3 - n; a < 3; ++a) want.push_back(pr.p.axis[a].R);
  MK_CHECK(rpb.sizes().vec() == want, op, ": rpb must have shape ", Shape(want), " (heads, 2K-1 per axis), got ",
           rpb.sizes());
  return rpb.to(pr.acc).contiguous();
}

void run(int64_t tasks, const NaParams& p, void (*fn)(const NaParams&, int64_t, int64_t, void*), int64_t bytes) {
  if (tasks <= 0) return;
  Scratch scratch(bytes);
  parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) { fn(p, t0, t1, scratch.for_thread()); });
}

int64_t query_tasks(const NaParams& p) { return p.batch * p.heads * ((p.tokens + p.tile - 1) / p.tile); }
int64_t key_tasks(const NaParams& p) { return p.batch * p.kv_heads * ((p.tokens + p.tile - 1) / p.tile); }

// drpb[h] = sum over the query tasks of head h of their partials, in task order.
Tensor reduce_rpb(const Tensor& part, const NaParams& p, const Tensor& rpb) {
  const int64_t tiles = (p.tokens + p.tile - 1) / p.tile, rprod = part.size(1);
  Tensor out = zeros_on(part, {p.heads, rprod});
  dispatch_floating(part.scalar_type(), "na_bwd", [&](auto tag_) {
    using scalar_t = decltype(tag_);
    const scalar_t* src = part.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    for (int64_t task = 0; task < part.size(0); ++task) {
      scalar_t* o = dst + (task / tiles) % p.heads * rprod;
      for (int64_t i = 0; i < rprod; ++i) o[i] += src[task * rprod + i];
    }
  });
  return out.view(rpb.sizes()).to(rpb.scalar_type());
}

struct Dims {
  int64_t batch, heads, kv_heads, dim, dim_v;
};

// The problem's axes, accumulation type and padded head dims (a multiple of the vector lanes).
Problem make_problem(const char* op, Shape spatial, Shape kernel, Shape stride, Shape dilation,
                     const std::vector<bool>& causal, ScalarType dtype, int vector_bytes, const Dims& sh) {
  Problem pr;
  set_axes(pr, op, spatial, kernel, stride, dilation, causal);
  pr.acc = dtype == kDouble ? kDouble : kFloat;
  NaParams& p = pr.p;
  p.acc = pr.acc == kDouble ? ScalarKind::Float64 : ScalarKind::Float32;
  const int64_t lanes = vector_bytes / int64_t(element_size(pr.acc));
  p.batch = sh.batch;
  p.heads = sh.heads;
  p.kv_heads = sh.kv_heads;
  p.dpad = padded(sh.dim, lanes);
  p.dvpad = padded(sh.dim_v, lanes);
  p.tile = kTile;
  return pr;
}

// Fused problem from heads-last q/k/v.
Problem fused_problem(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, Shape kernel, Shape stride,
                      Shape dilation, const std::vector<bool>& causal, int vector_bytes) {
  check_float(op, "query", q);
  MK_CHECK(q.dim() >= 4 && q.dim() <= 6, op,
           ": query must be (batch, *spatial, heads, head_dim) with 1-3 spatial dims");
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"key", k}, {"value", v}}) {
    MK_CHECK(t.scalar_type() == q.scalar_type(), op, ": ", name, " must have dtype ", q.scalar_type());
    MK_CHECK(t.device() == q.device(), op, ": ", name, " must be on ", q.device());
    MK_CHECK(t.dim() == q.dim() && t.sizes().slice(0, q.dim() - 2) == q.sizes().slice(0, q.dim() - 2), op, ": ", name,
             " must match query in batch and spatial dims");
  }
  MK_CHECK(k.size(-1) == q.size(-1), op, ": key head_dim must equal query head_dim");
  MK_CHECK(v.size(-2) == k.size(-2), op, ": value heads must equal key heads");
  MK_CHECK(k.size(-2) >= 1 && q.size(-2) % k.size(-2) == 0, op, ": query heads must be a multiple of key heads");
  return make_problem(op, q.sizes().slice(1, q.dim() - 3), kernel, stride, dilation, causal, q.scalar_type(),
                      vector_bytes, {q.size(0), q.size(-2), k.size(-2), q.size(-1), v.size(-1)});
}

struct Additional {
  Tensor k, v;  // canonical
};

Additional canon_additional(const char* op, const Problem& pr, const Tensor& q, const Tensor& k, const Tensor& v,
                            const std::optional<Tensor>& ak, const std::optional<Tensor>& av) {
  MK_CHECK(ak.has_value() == av.has_value(), op, ": additional_keys and additional_values go together");
  if (!ak) return {};
  for (const auto& [name, t, ref] : {std::tuple<const char*, const Tensor&, const Tensor&>{"additional_keys", *ak, k},
                                     {"additional_values", *av, v}}) {
    MK_CHECK(t.dim() == 4 && t.size(0) == q.size(0) && t.size(2) == ref.size(-2) && t.size(3) == ref.size(-1), op, ": ",
             name, " must be (batch, n_add, kv_heads, head_dim), got ", t.sizes());
    MK_CHECK(t.scalar_type() == q.scalar_type() && t.device() == q.device(), op, ": ", name,
             " must match query in dtype and device");
  }
  MK_CHECK(ak->size(1) == av->size(1), op, ": additional_keys and additional_values need the same count");
  const NaParams& p = pr.p;
  return {canon_heads_last(*ak, p.batch, ak->size(1), p.dpad, pr.acc),
          canon_heads_last(*av, p.batch, av->size(1), p.dvpad, pr.acc)};
}

// ---- fused ------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor> na_fwd_cpu(const Tensor& q, const Tensor& k, const Tensor& v, Shape kernel, Shape stride,
                                      Shape dilation, const std::vector<bool>& causal, double scale,
                                      const std::optional<Tensor>& rpb, const std::optional<Tensor>& add_k,
                                      const std::optional<Tensor>& add_v) {
  constexpr const char* op = "na_fwd";
  const NeighborhoodAttentionKernelTable& kern = neighborhood_attention_kernels();
  Problem pr = fused_problem(op, q, k, v, kernel, stride, dilation, causal, kern.vector_bytes);
  NaParams& p = pr.p;
  const Tensor qc = canon_heads_last(q, p.batch, p.tokens, p.dpad, pr.acc, scale);
  const Tensor kc = canon_heads_last(k, p.batch, p.tokens, p.dpad, pr.acc);
  const Tensor vc = canon_heads_last(v, p.batch, p.tokens, p.dvpad, pr.acc);
  const Tensor rc = rpb ? canon_rpb(op, *rpb, pr, p.heads) : Tensor();
  const Additional add = canon_additional(op, pr, q, k, v, add_k, add_v);
  p.scale = scale;
  p.q = qc.const_data_ptr();
  p.k = kc.const_data_ptr();
  p.v = vc.const_data_ptr();
  p.rpb = rpb ? rc.const_data_ptr() : nullptr;
  p.n_add = add_k ? add_k->size(1) : 0;
  p.add_k = add_k ? add.k.const_data_ptr() : nullptr;
  p.add_v = add_k ? add.v.const_data_ptr() : nullptr;
  Tensor oc = empty_on(qc, {p.batch, p.heads, p.tokens, p.dvpad});
  Tensor lc = empty_on(qc, {p.batch, p.heads, p.tokens});
  p.out = oc.data_ptr();
  p.lse = lc.data_ptr();
  run(query_tasks(p), p, kern.fwd, kern.scratch_bytes(p));
  Tensor out = to_heads_last(oc, pr.spatial, v.size(-1), q.scalar_type());
  std::vector<int64_t> lshape{p.batch};
  lshape.insert(lshape.end(), pr.spatial.begin(), pr.spatial.end());
  lshape.push_back(p.heads);
  Tensor lse = empty_on(qc, lshape, pr.acc);
  lse.view({p.batch, p.tokens, p.heads}).copy_(lc.permute({0, 2, 1}));
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> na_bwd_cpu(
    const Tensor& grad_out, const std::optional<Tensor>& grad_lse, const Tensor& q, const Tensor& k, const Tensor& v,
    const Tensor& out, const Tensor& lse, Shape kernel, Shape stride, Shape dilation, const std::vector<bool>& causal,
    double scale, const std::optional<Tensor>& rpb, const std::optional<Tensor>& add_k,
    const std::optional<Tensor>& add_v) {
  constexpr const char* op = "na_bwd";
  const NeighborhoodAttentionKernelTable& kern = neighborhood_attention_kernels();
  Problem pr = fused_problem(op, q, k, v, kernel, stride, dilation, causal, kern.vector_bytes);
  NaParams& p = pr.p;
  MK_CHECK(grad_out.sizes() == out.sizes() && out.sizes().slice(0, out.dim() - 1) == q.sizes().slice(0, q.dim() - 1) &&
               out.size(-1) == v.size(-1),
           op, ": grad_out and out must be (batch, *spatial, heads, value_dim)");
  MK_CHECK(lse.numel() == p.batch * p.tokens * p.heads, op, ": lse must be (batch, *spatial, heads)");
  const Tensor qc = canon_heads_last(q, p.batch, p.tokens, p.dpad, pr.acc, scale);
  const Tensor kc = canon_heads_last(k, p.batch, p.tokens, p.dpad, pr.acc);
  const Tensor vc = canon_heads_last(v, p.batch, p.tokens, p.dvpad, pr.acc);
  const Tensor doc = canon_heads_last(grad_out, p.batch, p.tokens, p.dvpad, pr.acc);
  const Tensor oc = canon_heads_last(out, p.batch, p.tokens, p.dvpad, pr.acc);
  const Tensor lc = lse.reshape({p.batch, p.tokens, p.heads}).permute({0, 2, 1}).to(pr.acc).contiguous();
  // delta = <dO, O> per query; a gradient on lse adds grad_lse * P to dS, i.e. subtracts from delta.
  Tensor drow = (doc * oc).sum(-1);
  if (grad_lse) {
    MK_CHECK(grad_lse->numel() == p.batch * p.tokens * p.heads, op, ": grad_lse must be (batch, *spatial, heads)");
    drow = drow - grad_lse->reshape({p.batch, p.tokens, p.heads}).permute({0, 2, 1}).to(pr.acc);
  }
  drow = drow.contiguous();
  const Tensor rc = rpb ? canon_rpb(op, *rpb, pr, p.heads) : Tensor();
  const Additional add = canon_additional(op, pr, q, k, v, add_k, add_v);
  p.scale = scale;
  p.q = qc.const_data_ptr();
  p.k = kc.const_data_ptr();
  p.v = vc.const_data_ptr();
  p.dout = doc.const_data_ptr();
  p.lse = const_cast<void*>(lc.const_data_ptr());
  p.drow = drow.const_data_ptr();
  p.rpb = rpb ? rc.const_data_ptr() : nullptr;
  p.n_add = add_k ? add_k->size(1) : 0;
  p.add_k = add_k ? add.k.const_data_ptr() : nullptr;
  p.add_v = add_k ? add.v.const_data_ptr() : nullptr;
  Tensor dqc = empty_on(qc, {p.batch, p.heads, p.tokens, p.dpad});
  Tensor dkc = empty_on(qc, {p.batch, p.kv_heads, p.tokens, p.dpad});
  Tensor dvc = empty_on(qc, {p.batch, p.kv_heads, p.tokens, p.dvpad});
  const int64_t qtasks = query_tasks(p), rprod = p.axis[0].R * p.axis[1].R * p.axis[2].R;
  Tensor drpb_part = rpb ? empty_on(qc, {qtasks, rprod}) : Tensor();
  Tensor dak_part = add_k ? empty_on(qc, {qtasks, p.n_add, p.dpad}) : Tensor();
  Tensor dav_part = add_k ? empty_on(qc, {qtasks, p.n_add, p.dvpad}) : Tensor();
  p.dq = dqc.data_ptr();
  p.dk = dkc.data_ptr();
  p.dv = dvc.data_ptr();
  p.drpb_part = rpb ? drpb_part.data_ptr() : nullptr;
  p.dadd_k_part = add_k ? dak_part.data_ptr() : nullptr;
  p.dadd_v_part = add_k ? dav_part.data_ptr() : nullptr;
  const int64_t bytes = kern.scratch_bytes(p);
  run(qtasks, p, kern.bwd_query, bytes);
  run(key_tasks(p), p, kern.bwd_key, bytes);

  const auto dtype = q.scalar_type();
  Tensor dq = to_heads_last(dqc, pr.spatial, q.size(-1), dtype);
  Tensor dk = to_heads_last(dkc, pr.spatial, k.size(-1), dtype);
  Tensor dv = to_heads_last(dvc, pr.spatial, v.size(-1), dtype);
  Tensor drpb = rpb ? reduce_rpb(drpb_part, p, *rpb) : empty_on(qc, {0});
  Tensor dak = empty_on(qc, {0}), dav = empty_on(qc, {0});
  if (add_k) {
    // per (batch, kv head): the query tasks of its batch and head group, in task order
    const int64_t tiles = (p.tokens + p.tile - 1) / p.tile, group = p.heads / p.kv_heads;
    Tensor sk = zeros_on(qc, {p.batch, p.kv_heads, p.n_add, p.dpad});
    Tensor sv = zeros_on(qc, {p.batch, p.kv_heads, p.n_add, p.dvpad});
    const int64_t nk = p.n_add * p.dpad, nv = p.n_add * p.dvpad;
    dispatch_floating(sk.scalar_type(), "na_bwd", [&](auto tag_) {
      using scalar_t = decltype(tag_);
      for (int64_t task = 0; task < qtasks; ++task) {
        const int64_t bh = task / tiles, b = bh / p.heads, hk = (bh % p.heads) / group;
        scalar_t* ok = sk.data_ptr<scalar_t>() + (b * p.kv_heads + hk) * nk;
        scalar_t* ov = sv.data_ptr<scalar_t>() + (b * p.kv_heads + hk) * nv;
        const scalar_t* ik = dak_part.const_data_ptr<scalar_t>() + task * nk;
        const scalar_t* iv = dav_part.const_data_ptr<scalar_t>() + task * nv;
        for (int64_t i = 0; i < nk; ++i) ok[i] += ik[i];
        for (int64_t i = 0; i < nv; ++i) ov[i] += iv[i];
      }
    });
    dak = to_heads_last(sk, {p.n_add}, k.size(-1), dtype);
    dav = to_heads_last(sv, {p.n_add}, v.size(-1), dtype);
  }
  return {dq, dk, dv, drpb, dak, dav};
}

// ---- unfused ----------------------------------------------------------------------------------

Problem unfused_problem(const char* op, const Tensor& a, const Tensor& b, Shape kernel, Shape dilation,
                        const std::vector<bool>& causal, int vector_bytes, int64_t b_dim) {
  check_float(op, "first input", a);
  MK_CHECK(a.dim() >= 4 && a.dim() <= 6, op, ": inputs must be (batch, heads, *spatial, dim) with 1-3 spatial dims");
  MK_CHECK(b.scalar_type() == a.scalar_type() && b.device() == a.device(), op, ": inputs must share dtype and device");
  MK_CHECK(b.dim() == a.dim() && b.size(0) == a.size(0) &&
               b.sizes().slice(2, a.dim() - 3) == a.sizes().slice(2, a.dim() - 3),
           op, ": inputs must match in batch and spatial dims");
  MK_CHECK(b.size(1) >= 1 && a.size(1) % b.size(1) == 0, op, ": heads must be a multiple of the key/value heads");
  const std::vector<int64_t> ones(kernel.size(), 1);
  return make_problem(op, a.sizes().slice(2, a.dim() - 3), kernel, ones, dilation, causal, a.scalar_type(),
                      vector_bytes, {a.size(0), a.size(1), b.size(1), b_dim, b_dim});
}

Tensor na_qk_cpu(const Tensor& q, const Tensor& k, Shape kernel, Shape dilation, const std::vector<bool>& causal,
                 const std::optional<Tensor>& rpb) {
  constexpr const char* op = "na_qk";
  const NeighborhoodAttentionKernelTable& kern = neighborhood_attention_kernels();
  MK_CHECK(q.dim() >= 4 && k.dim() == q.dim() && k.size(-1) == q.size(-1), op,
           ": query and key must be (batch, heads, *spatial, head_dim)");
  Problem pr = unfused_problem(op, q, k, kernel, dilation, causal, kern.vector_bytes, q.size(-1));
  NaParams& p = pr.p;
  const Tensor qc = canon_heads_first(q, p.tokens, p.dpad, pr.acc), kc = canon_heads_first(k, p.tokens, p.dpad, pr.acc);
  const Tensor rc = rpb ? canon_rpb(op, *rpb, pr, p.heads) : Tensor();
  p.q = qc.const_data_ptr();
  p.k = kc.const_data_ptr();
  p.rpb = rpb ? rc.const_data_ptr() : nullptr;
  Tensor attn = empty_on(qc, {p.batch, p.heads, p.tokens, p.kprod});
  p.attn_out = attn.data_ptr();
  run(query_tasks(p), p, kern.qk, kern.scratch_bytes(p));
  return to_heads_first(attn, pr.spatial, p.kprod, q.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor> na_qk_bwd_cpu(const Tensor& grad_attn, const Tensor& q, const Tensor& k,
                                                 Shape kernel, Shape dilation, const std::vector<bool>& causal,
                                                 const std::optional<Tensor>& rpb) {
  constexpr const char* op = "na_qk_bwd";
  const NeighborhoodAttentionKernelTable& kern = neighborhood_attention_kernels();
  Problem pr = unfused_problem(op, q, k, kernel, dilation, causal, kern.vector_bytes, q.size(-1));
  NaParams& p = pr.p;
  MK_CHECK(grad_attn.numel() == p.batch * p.heads * p.tokens * p.kprod, op,
           ": grad_attn must be (batch, heads, *spatial, kernel volume)");
  const Tensor qc = canon_heads_first(q, p.tokens, p.dpad, pr.acc), kc = canon_heads_first(k, p.tokens, p.dpad, pr.acc);
  const Tensor gc = grad_attn.reshape({p.batch, p.heads, p.tokens, p.kprod}).to(pr.acc).contiguous();
  const Tensor rc = rpb ? canon_rpb(op, *rpb, pr, p.heads) : Tensor();
  p.q = qc.const_data_ptr();
  p.k = kc.const_data_ptr();
  p.rpb = rpb ? rc.const_data_ptr() : nullptr;
  p.dattn = gc.const_data_ptr();
  Tensor dqc = empty_as(qc), dkc = empty_as(kc);
  const int64_t qtasks = query_tasks(p), rprod = p.axis[0].R * p.axis[1].R * p.axis[2].R;
  Tensor drpb_part = rpb ? empty_on(qc, {qtasks, rprod}) : Tensor();
  p.dq = dqc.data_ptr();
  p.dk = dkc.data_ptr();
  p.drpb_part = rpb ? drpb_part.data_ptr() : nullptr;
  const int64_t bytes = kern.scratch_bytes(p);
  run(qtasks, p, kern.qk_bwd_query, bytes);
  run(key_tasks(p), p, kern.qk_bwd_key, bytes);
  Tensor drpb = rpb ? reduce_rpb(drpb_part, p, *rpb) : empty_on(qc, {0});
  return {to_heads_first(dqc, pr.spatial, q.size(-1), q.scalar_type()),
          to_heads_first(dkc, pr.spatial, k.size(-1), k.scalar_type()), drpb};
}

Tensor na_av_cpu(const Tensor& attn, const Tensor& v, Shape kernel, Shape dilation, const std::vector<bool>& causal) {
  constexpr const char* op = "na_av";
  const NeighborhoodAttentionKernelTable& kern = neighborhood_attention_kernels();
  Problem pr = unfused_problem(op, attn, v, kernel, dilation, causal, kern.vector_bytes, v.size(-1));
  NaParams& p = pr.p;
  MK_CHECK(attn.size(-1) == p.kprod, op, ": attn's last dim must be the kernel volume ", p.kprod, ", got ",
           attn.size(-1));
  const Tensor ac = attn.reshape({p.batch, p.heads, p.tokens, p.kprod}).to(pr.acc).contiguous();
  const Tensor vc = canon_heads_first(v, p.tokens, p.dvpad, pr.acc);
  p.attn = ac.const_data_ptr();
  p.v = vc.const_data_ptr();
  Tensor oc = empty_on(vc, {p.batch, p.heads, p.tokens, p.dvpad});
  p.out = oc.data_ptr();
  run(query_tasks(p), p, kern.av, kern.scratch_bytes(p));
  return to_heads_first(oc, pr.spatial, v.size(-1), v.scalar_type());
}

std::tuple<Tensor, Tensor> na_av_bwd_cpu(const Tensor& grad_out, const Tensor& attn, const Tensor& v, Shape kernel,
                                         Shape dilation, const std::vector<bool>& causal) {
  constexpr const char* op = "na_av_bwd";
  const NeighborhoodAttentionKernelTable& kern = neighborhood_attention_kernels();
  Problem pr = unfused_problem(op, attn, v, kernel, dilation, causal, kern.vector_bytes, v.size(-1));
  NaParams& p = pr.p;
  MK_CHECK(grad_out.numel() == p.batch * p.heads * p.tokens * v.size(-1), op,
           ": grad_out must be (batch, heads, *spatial, value_dim)");
  const Tensor ac = attn.reshape({p.batch, p.heads, p.tokens, p.kprod}).to(pr.acc).contiguous();
  const Tensor vc = canon_heads_first(v, p.tokens, p.dvpad, pr.acc);
  const Tensor doc = canon_heads_first(grad_out, p.tokens, p.dvpad, pr.acc);
  p.attn = ac.const_data_ptr();
  p.v = vc.const_data_ptr();
  p.dout = doc.const_data_ptr();
  Tensor dattn = empty_on(vc, {p.batch, p.heads, p.tokens, p.kprod});
  Tensor dvc = empty_as(vc);
  p.dattn_out = dattn.data_ptr();
  p.dv = dvc.data_ptr();
  const int64_t bytes = kern.scratch_bytes(p);
  run(query_tasks(p), p, kern.av_bwd_query, bytes);
  run(key_tasks(p), p, kern.av_bwd_key, bytes);
  return {to_heads_first(dattn, pr.spatial, p.kprod, attn.scalar_type()),
          to_heads_first(dvc, pr.spatial, v.size(-1), v.scalar_type())};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(medkernels, CPU, m) {
  MK_IMPL(m, "na_fwd", na_fwd_cpu);
  MK_IMPL(m, "na_bwd", na_bwd_cpu);
  MK_IMPL(m, "na_qk", na_qk_cpu);
  MK_IMPL(m, "na_qk_bwd", na_qk_bwd_cpu);
  MK_IMPL(m, "na_av", na_av_cpu);
  MK_IMPL(m, "na_av_bwd", na_av_bwd_cpu);
}

}  // namespace medkernels::cpu
