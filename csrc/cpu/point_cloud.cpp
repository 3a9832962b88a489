// Furthest point sampling and k nearest neighbours behind medkernels.ops.furthest_point_sample and
// medkernels.ops.knn: CPU implementations of medkernels::furthest_point_sample and medkernels::knn.
//
// The torch side: checks, the points as vector-padded coordinate planes (float32, or float64 for
// float64 input), allocation and the thread split. The loops live in point_cloud_kernel.h.
#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>

#include "common.h"
#include "medkernels/cpu/isa.h"
#include "medkernels/cpu/point_cloud.h"

namespace medkernels::cpu {
namespace {

using at::Tensor;

at::ScalarType acc_type(const Tensor& x, const char* op, const char* name) {
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op, ": ", name,
              " must be float32, float64, float16 or bfloat16, got ", st);
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

// (B, N, C) -> (B, C, npad) in acc, zero-padded.
Tensor planes_of(const Tensor& x, at::ScalarType acc, int64_t npad) {
  Tensor pl = at::zeros({x.size(0), x.size(2), npad}, x.options().dtype(acc));
  pl.narrow(2, 0, x.size(1)).copy_(x.transpose(1, 2));
  return pl;
}

// lengths: (B,) int64 on the CPU with every value in [lo, hi]; returns its data (or null).
const int64_t* lengths_of(const std::optional<Tensor>& lengths, Tensor& keep, const char* op, const char* name,
                          int64_t batch, int64_t lo, int64_t hi) {
  if (!lengths.has_value()) return nullptr;
  const Tensor& l = *lengths;
  TORCH_CHECK(l.device().is_cpu() && l.scalar_type() == at::kLong && l.dim() == 1 && l.size(0) == batch, op, ": ", name,
              " must be a CPU int64 tensor of shape (", batch, "), got ", l.scalar_type(), " ", l.sizes(), " on ",
              l.device());
  keep = l.contiguous();
  const int64_t* d = keep.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b)
    TORCH_CHECK(d[b] >= lo && d[b] <= hi, op, ": ", name, "[", b, "] = ", d[b], " must be in [", lo, ", ", hi, "]");
  return d;
}

Tensor furthest_point_sample_cpu(const Tensor& xyz, int64_t npoint, const std::optional<Tensor>& lengths,
                                 int64_t start_idx) {
  constexpr const char* op = "furthest_point_sample";
  TORCH_CHECK(xyz.device().is_cpu(), op, ": xyz must be on the CPU, got ", xyz.device());
  TORCH_CHECK(xyz.dim() == 3 && xyz.size(2) >= 1, op, ": xyz must be (B, N, C) with C >= 1, got ", xyz.sizes());
  const at::ScalarType acc = acc_type(xyz, op, "xyz");
  const int64_t batch = xyz.size(0), n = xyz.size(1);
  TORCH_CHECK(npoint >= 1 && npoint <= n, op, ": npoint must be in [1, N = ", n, "], got ", npoint);
  TORCH_CHECK(start_idx >= 0 && start_idx < n, op, ": start_idx must be in [0, N = ", n, "), got ", start_idx);
  TORCH_CHECK(n < (int64_t(1) << 31), op, ": at most 2^31 - 1 points per cloud, got ", n);
  Tensor out = at::empty({batch, npoint}, xyz.options().dtype(at::kLong));
  if (batch == 0) return out;
  const PointCloudKernelTable& kern = point_cloud_kernels();
  const int64_t lanes = kern.vector_bytes / int64_t(at::elementSize(acc));
  Tensor keep;
  FpsParams p;
  p.lengths = lengths_of(lengths, keep, op, "lengths", batch, std::max(npoint, start_idx + 1), n);
  p.acc = acc == at::kDouble ? ScalarKind::Float64 : ScalarKind::Float32;
  p.batch = batch;
  p.c = xyz.size(2);
  p.n = n;
  p.npad = (n + lanes - 1) / lanes * lanes;
  p.npoint = npoint;
  p.start = start_idx;
  const Tensor planes = planes_of(xyz, acc, p.npad);
  p.planes = planes.const_data_ptr();
  p.out = out.data_ptr<int64_t>();
  const int64_t threads = at::get_num_threads();
  // Splitting one cloud pays only when each part's sweep outweighs a barrier per step by far.
  const int64_t parts = std::min<int64_t>({threads, 64, p.npad / 65536});
#if AT_PARALLEL_OPENMP
  // One cloud over several threads: every part of an OpenMP team runs concurrently, which the
  // per-step spin barrier needs (a nested call runs all parts in one thread, which is also fine).
  // Only clouds the bucketed sampler does not take (more than 3 channels, or a non-finite coordinate):
  // one thread on buckets outruns several on the full sweep.
  const bool split = batch < threads && parts >= 2 && !at::in_parallel_region() &&
                     (p.c > kFpsBucketMaxChannels || !at::isfinite(xyz).all().item<bool>());
#else
  const bool split = false;
#endif
  if (split) {
    Tensor dist = at::empty({p.npad}, xyz.options().dtype(acc));
    for (int64_t b = 0; b < batch; ++b) {
      FpsShared shared;
      at::parallel_for(0, parts, 1,
                       [&](int64_t q0, int64_t q1) { kern.fps_parts(p, b, q0, q1, parts, dist.data_ptr(), &shared); });
    }
  } else {
    Scratch scratch(kern.fps_scratch_bytes(p));
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) { kern.fps_clouds(p, b0, b1, scratch.for_thread()); });
  }
  return out;
}

// Morton code (10 bits per axis, C <= 3) of points quantised to the clouds' boxes: (B, R, C) -> (B, R).
// Non-finite coordinates land in cell 0 or 1023 (any cell keeps the search exact: it only orders points).
Tensor morton(const Tensor& x, const Tensor& lo, const Tensor& scale) {
  const Tensor cell =
      ((x - lo.unsqueeze(1)) * scale.unsqueeze(1)).floor_().nan_to_num_(0, 1023, 0).clamp_(0, 1023).to(at::kLong);
  const int64_t c = x.size(2);
  Tensor code = at::zeros({x.size(0), x.size(1)}, cell.options());
  for (int64_t bit = 0; bit < 10; ++bit)
    for (int64_t i = 0; i < c; ++i)
      code.bitwise_or_(cell.select(2, i).bitwise_right_shift(bit).bitwise_and_(1).bitwise_left_shift_(bit * c + i));
  return code;
}

// The spatial blocks of KnnParams: points sorted along a Morton curve into cells of kKnnCell (padded
// with +inf, as are the points past a cloud's length, and order -1 there), each cell's bounding box, and
// each query's starting cell. A NaN coordinate makes its cell's box NaN, which the search never skips.
struct KnnBlocks {
  Tensor planes, order, lo, hi, seed, finite;
};
KnnBlocks knn_blocks(const Tensor& q, const Tensor& pts, const std::optional<Tensor>& lengths) {
  const int64_t batch = pts.size(0), n = pts.size(1), c = pts.size(2);
  const double inf = std::numeric_limits<double>::infinity();
  Tensor p = pts;
  Tensor valid;
  if (lengths.has_value()) {
    valid = at::arange(n, lengths->options()).unsqueeze(0) < lengths->unsqueeze(1);
    p = pts.masked_fill(valid.logical_not().unsqueeze(2), inf);
  }
  // The quantisation box, NaN coordinates ignored (amin/amax would propagate them).
  const Tensor lo = p.nan_to_num(inf, inf, -inf).amin(1);
  const Tensor hi = (valid.defined() ? pts.masked_fill(valid.logical_not().unsqueeze(2), -inf) : pts)
                        .nan_to_num(-inf, inf, -inf)
                        .amax(1);
  const Tensor scale = 1023.0 / (hi - lo).clamp_min(1e-30);
  Tensor code = morton(pts, lo, scale);
  if (valid.defined()) code.masked_fill_(valid.logical_not(), std::numeric_limits<int64_t>::max());
  auto [sorted, perm] = code.sort(/*stable=*/true, 1, false);
  const int64_t npad = (n + kKnnCell - 1) / kKnnCell * kKnnCell, nb = npad / kKnnCell;
  const int64_t nbpad = (nb + 7) / 8 * 8;
  KnnBlocks k;
  k.planes = at::full({batch, c, npad}, inf, pts.options());
  k.planes.narrow(2, 0, n).copy_(p.gather(1, perm.unsqueeze(2).expand({batch, n, c})).transpose(1, 2));
  k.order = at::full({batch, npad}, -1, perm.options());
  k.order.narrow(1, 0, n).copy_(perm.masked_fill(sorted == std::numeric_limits<int64_t>::max(), -1));
  const Tensor cells = k.planes.view({batch, c, nb, kKnnCell});
  k.lo = at::full({batch, c, nbpad}, inf, pts.options());
  k.hi = at::full({batch, c, nbpad}, inf, pts.options());
  k.lo.narrow(2, 0, nb).copy_(cells.amin(3));
  k.hi.narrow(2, 0, nb).copy_(cells.amax(3));
  k.seed = at::searchsorted(sorted, morton(q, lo, scale)).clamp_max_(n - 1).div_(kKnnCell, "floor");
  Tensor finite = at::isfinite(pts).all(2);
  if (valid.defined()) finite.logical_or_(valid.logical_not());
  k.finite = finite.all(1).to(at::kByte).contiguous();
  return k;
}

std::tuple<Tensor, Tensor> knn_cpu(const Tensor& query, const Tensor& points, int64_t k,
                                   const std::optional<Tensor>& query_lengths, const std::optional<Tensor>& lengths) {
  constexpr const char* op = "knn";
  TORCH_CHECK(query.device().is_cpu() && points.device().is_cpu(), op, ": expected CPU tensors, got query on ",
              query.device(), " and points on ", points.device());
  TORCH_CHECK(query.dim() == 3 && points.dim() == 3 && query.size(0) == points.size(0) &&
                  query.size(2) == points.size(2) && query.size(2) >= 1,
              op, ": query must be (B, M, C) and points (B, N, C) with the same B and C >= 1, got ", query.sizes(),
              " and ", points.sizes());
  const at::ScalarType acc = acc_type(query, op, "query");
  TORCH_CHECK(points.scalar_type() == query.scalar_type(), op, ": points must have query's dtype ", query.scalar_type(),
              ", got ", points.scalar_type());
  const int64_t batch = query.size(0), m = query.size(1), n = points.size(1), c = query.size(2);
  TORCH_CHECK(k >= 1 && k <= n, op, ": k must be in [1, N = ", n, "], got ", k);
  Tensor dists = at::empty({batch, m, k}, query.options().dtype(acc));
  Tensor idx = at::empty({batch, m, k}, query.options().dtype(at::kLong));
  Tensor keep_q, keep_p;
  KnnParams p;
  p.query_lengths = lengths_of(query_lengths, keep_q, op, "query_lengths", batch, 0, m);
  p.lengths = lengths_of(lengths, keep_p, op, "lengths", batch, k, n);
  if (batch * m == 0) return {dists.to(query.scalar_type()), idx};
  const PointCloudKernelTable& kern = point_cloud_kernels();
  const int64_t lanes = kern.vector_bytes / int64_t(at::elementSize(acc));
  p.acc = acc == at::kDouble ? ScalarKind::Float64 : ScalarKind::Float32;
  p.batch = batch;
  p.m = m;
  p.n = n;
  p.c = c;
  p.k = k;
  const Tensor qc = query.to(acc).contiguous();
  // Low-dimensional clouds with enough work: the spatial-block search; otherwise brute force.
  Tensor planes;
  KnnBlocks blocks;
  if (c <= 3 && n >= 8 * kKnnCell && m * n >= (int64_t(1) << 20)) {
    blocks = knn_blocks(qc, points.to(acc), lengths);
    planes = blocks.planes;
    p.npad = planes.size(2);
    p.order = blocks.order.const_data_ptr<int64_t>();
    p.box_lo = blocks.lo.const_data_ptr();
    p.box_hi = blocks.hi.const_data_ptr();
    p.seed = blocks.seed.const_data_ptr<int64_t>();
    p.finite = blocks.finite.const_data_ptr<uint8_t>();
  } else {
    p.npad = (n + lanes - 1) / lanes * lanes;
    planes = planes_of(points, acc, p.npad);
  }
  p.query = qc.const_data_ptr();
  p.planes = planes.const_data_ptr();
  p.dists = dists.data_ptr();
  p.idx = idx.data_ptr<int64_t>();
  // Blocks of up to 16 queries, small enough that every thread gets several.
  const int64_t threads = at::get_num_threads();
  p.block = std::max<int64_t>(1, std::min<int64_t>(16, batch * m / (4 * threads)));
  const int64_t tasks = batch * ((m + p.block - 1) / p.block);
  Scratch scratch(kern.knn_scratch_bytes(p));
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) { kern.knn(p, t0, t1, scratch.for_thread()); });
  return {dists.to(query.scalar_type()), idx};
}

}  // namespace

TORCH_LIBRARY_IMPL(medkernels, CPU, m) {
  m.impl("furthest_point_sample", &furthest_point_sample_cpu);
  m.impl("knn", &knn_cpu);
}

}  // namespace medkernels::cpu
