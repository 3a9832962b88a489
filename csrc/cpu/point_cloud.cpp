// Furthest point sampling and k nearest neighbours behind medkernels.ops.furthest_point_sample and
// medkernels.ops.knn: CPU implementations of medkernels::furthest_point_sample and medkernels::knn.
//
// The torch side: checks, the points as vector-padded coordinate planes (float32, or float64 for
// float64 input), allocation and the thread split. The loops live in point_cloud_kernel.h.

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <algorithm>
#include <limits>
#include <optional>

#include "common.h"
#include "medkernels/cpu/isa.h"
#include "medkernels/cpu/point_cloud.h"

namespace medkernels::cpu {
namespace {

ScalarType acc_type(const Tensor& x, const char* op, const char* name) {
  const auto st = x.scalar_type();
  MK_CHECK(st == kFloat || st == kDouble || st == kHalf || st == kBFloat16, op, ": ", name,
           " must be float32, float64, float16 or bfloat16, got ", st);
  return st == kDouble ? kDouble : kFloat;
}

// (B, N, C) -> (B, C, npad) in acc, zero-padded.
Tensor planes_of(const Tensor& x, ScalarType acc, int64_t npad) {
  Tensor pl = zeros_on(x, {x.size(0), x.size(2), npad}, acc);
  pl.narrow(2, 0, x.size(1)).copy_(x.transpose(1, 2));
  return pl;
}

// lengths: (B,) int64 on the CPU with every value in [lo, hi]; returns its data (or null).
const int64_t* lengths_of(const std::optional<Tensor>& lengths, Tensor& keep, const char* op, const char* name,
                          int64_t batch, int64_t lo, int64_t hi) {
  if (!lengths.has_value()) return nullptr;
  const Tensor& l = *lengths;
  MK_CHECK(l.device().is_cpu() && l.scalar_type() == kLong && l.dim() == 1 && l.size(0) == batch, op, ": ", name,
           " must be a CPU int64 tensor of shape (", batch, "), got ", l.scalar_type(), " ", l.sizes(), " on ",
           l.device());
  keep = l.contiguous();
  const int64_t* d = keep.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b)
    MK_CHECK(d[b] >= lo && d[b] <= hi, op, ": ", name, "[", b, "] = ", d[b], " must be in [", lo, ", ", hi, "]");
  return d;
}

Tensor furthest_point_sample_cpu(const Tensor& xyz, int64_t npoint, const std::optional<Tensor>& lengths,
                                 int64_t start_idx) {
  constexpr const char* op = "furthest_point_sample";
  MK_CHECK(xyz.device().is_cpu(), op, ": xyz must be on the CPU, got ", xyz.device());
  MK_CHECK(xyz.dim() == 3 && xyz.size(2) >= 1, op, ": xyz must be (B, N, C) with C >= 1, got ", xyz.sizes());
  const ScalarType acc = acc_type(xyz, op, "xyz");
  const int64_t batch = xyz.size(0), n = xyz.size(1);
  MK_CHECK(npoint >= 1 && npoint <= n, op, ": npoint must be in [1, N = ", n, "], got ", npoint);
  MK_CHECK(start_idx >= 0 && start_idx < n, op, ": start_idx must be in [0, N = ", n, "), got ", start_idx);
  MK_CHECK(n < (int64_t(1) << 31), op, ": at most 2^31 - 1 points per cloud, got ", n);
  Tensor out = empty_on(xyz, {batch, npoint}, kLong);
  if (batch == 0) return out;
  const PointCloudKernelTable& kern = point_cloud_kernels();
  const int64_t lanes = kern.vector_bytes / int64_t(element_size(acc));
  Tensor keep;
  FpsParams p;
  p.lengths = lengths_of(lengths, keep, op, "lengths", batch, std::max(npoint, start_idx + 1), n);
  p.acc = acc == kDouble ? ScalarKind::Float64 : ScalarKind::Float32;
  p.batch = batch;
  p.c = xyz.size(2);
  p.n = n;
  p.npad = (n + lanes - 1) / lanes * lanes;
  p.npoint = npoint;
  p.start = start_idx;
  const Tensor planes = planes_of(xyz, acc, p.npad);
  p.planes = planes.const_data_ptr();
  p.out = out.data_ptr<int64_t>();
  const int64_t threads = num_threads();
  // Splitting one cloud pays only when each part's sweep outweighs a barrier per step by far.
  const int64_t parts = std::min<int64_t>({threads, 64, p.npad / 65536});
#if defined(MEDKERNELS_TORCH_OPENMP) && defined(_OPENMP)
  // One cloud over several threads: every part of an OpenMP team runs concurrently, which the
  // per-step spin barrier needs (a nested call runs all parts in one thread, which is also fine).
  // Only clouds the bucketed sampler does not take (more than 3 channels, or a non-finite coordinate):
  // one thread on buckets outruns several on the full sweep.
  const bool split =
      batch < threads && parts >= 2 && !omp_in_parallel() && (p.c > kFpsBucketMaxChannels || !all_finite(xyz));
#else
  const bool split = false;
#endif
  if (split) {
    Tensor dist = empty_on(xyz, {p.npad}, acc);
    for (int64_t b = 0; b < batch; ++b) {
      FpsShared shared;
      parallel_for(0, parts, 1,
                   [&](int64_t q0, int64_t q1) { kern.fps_parts(p, b, q0, q1, parts, dist.data_ptr(), &shared); });
    }
  } else {
    Scratch scratch(kern.fps_scratch_bytes(p));
    parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) { kern.fps_clouds(p, b0, b1, scratch.for_thread()); });
  }
  return out;
}

std::tuple<Tensor, Tensor> knn_cpu(const Tensor& query, const Tensor& points, int64_t k,
                                   const std::optional<Tensor>& query_lengths, const std::optional<Tensor>& lengths) {
  constexpr const char* op = "knn";
  MK_CHECK(query.device().is_cpu() && points.device().is_cpu(), op, ": expected CPU tensors, got query on ",
           query.device(), " and points on ", points.device());
  MK_CHECK(query.dim() == 3 && points.dim() == 3 && query.size(0) == points.size(0) &&
               query.size(2) == points.size(2) && query.size(2) >= 1,
           op, ": query must be (B, M, C) and points (B, N, C) with the same B and C >= 1, got ", query.sizes(),
           " and ", points.sizes());
  const ScalarType acc = acc_type(query, op, "query");
  MK_CHECK(points.scalar_type() == query.scalar_type(), op, ": points must have query's dtype ", query.scalar_type(),
           ", got ", points.scalar_type());
  const int64_t batch = query.size(0), m = query.size(1), n = points.size(1), c = query.size(2);
  MK_CHECK(k >= 1 && k <= n, op, ": k must be in [1, N = ", n, "], got ", k);
  Tensor dists = empty_on(query, {batch, m, k}, acc);
  Tensor idx = empty_on(query, {batch, m, k}, kLong);
  Tensor keep_q, keep_p;
  KnnParams p;
  p.query_lengths = lengths_of(query_lengths, keep_q, op, "query_lengths", batch, 0, m);
  p.lengths = lengths_of(lengths, keep_p, op, "lengths", batch, k, n);
  if (batch * m == 0) return {dists.to(query.scalar_type()), idx};
  const PointCloudKernelTable& kern = point_cloud_kernels();
  const int64_t lanes = kern.vector_bytes / int64_t(element_size(acc));
  p.acc = acc == kDouble ? ScalarKind::Float64 : ScalarKind::Float32;
  p.batch = batch;
  p.m = m;
  p.n = n;
  p.c = c;
  p.k = k;
  const Tensor qc = query.to(acc).contiguous();
  // Low-dimensional clouds with enough work: the spatial-block search; otherwise brute force.
  p.query = qc.const_data_ptr();
  Tensor planes, order, box_lo, box_hi, seed, finite;
  if (c <= 3 && n >= 8 * kKnnCell && n < (int64_t(1) << 31) && m * n >= (int64_t(1) << 20)) {
    // Low-dimensional clouds with enough work: the spatial-block search, its blocks built by the kernel
    // (points in Morton order, cells of kKnnCell with their boxes, each query's starting cell).
    p.npad = (n + kKnnCell - 1) / kKnnCell * kKnnCell;
    const int64_t nbpad = (p.npad / kKnnCell + kKnnBoxPad - 1) / kKnnBoxPad * kKnnBoxPad;
    const Tensor pc = points.to(acc).contiguous();
    planes = empty_on(pc, {batch, c, p.npad});
    order = empty_on(pc, {batch, p.npad}, kLong);
    box_lo = empty_on(pc, {batch, c, nbpad});
    box_hi = empty_on(pc, {batch, c, nbpad});
    seed = empty_on(pc, {batch, m}, kLong);
    finite = empty_on(pc, {batch}, kByte);
    KnnBlockBuild o;
    o.points = pc.const_data_ptr();
    o.planes = planes.data_ptr();
    o.order = order.data_ptr<int64_t>();
    o.box_lo = box_lo.data_ptr();
    o.box_hi = box_hi.data_ptr();
    o.seed = seed.data_ptr<int64_t>();
    o.finite = finite.data_ptr<uint8_t>();
    Scratch build_scratch(kern.knn_build_scratch_bytes(p));
    parallel_for(0, batch, 1,
                 [&](int64_t b0, int64_t b1) { kern.knn_build(p, o, b0, b1, build_scratch.for_thread()); });
    p.order = order.const_data_ptr<int64_t>();
    p.box_lo = box_lo.const_data_ptr();
    p.box_hi = box_hi.const_data_ptr();
    p.seed = seed.const_data_ptr<int64_t>();
    p.finite = finite.const_data_ptr<uint8_t>();
  } else {
    p.npad = (n + lanes - 1) / lanes * lanes;
    planes = planes_of(points, acc, p.npad);
  }
  p.planes = planes.const_data_ptr();
  p.dists = dists.data_ptr();
  p.idx = idx.data_ptr<int64_t>();
  // Blocks of up to 16 queries, small enough that every thread gets several.
  const int64_t threads = num_threads();
  p.block = std::max<int64_t>(1, std::min<int64_t>(16, batch * m / (4 * threads)));
  const int64_t tasks = batch * ((m + p.block - 1) / p.block);
  Scratch scratch(kern.knn_scratch_bytes(p));
  parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) { kern.knn(p, t0, t1, scratch.for_thread()); });
  return {dists.to(query.scalar_type()), idx};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(medkernels, CPU, m) {
  MK_IMPL(m, "furthest_point_sample", furthest_point_sample_cpu);
  MK_IMPL(m, "knn", knn_cpu);
}

}  // namespace medkernels::cpu
