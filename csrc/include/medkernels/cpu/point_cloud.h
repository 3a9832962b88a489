// Point-cloud CPU kernel interface (furthest point sampling, k nearest neighbours): plain structs and
// function pointers, no torch.
#pragma once

#include <cstdint>

#include "medkernels/scalar_kind.h"

namespace medkernels::cpu {

// Furthest point sampling over coordinate planes. Distances are the sum over c = 0..C-1, in that order,
// of (p_c - q_c)^2, each step rounded (no fused multiply-add), so the indices equal the textbook loop's.
struct FpsParams {
  ScalarKind acc = ScalarKind::Float32;  // Float32 or Float64 (planes and distances)
  int64_t batch = 0, c = 0, npad = 0, npoint = 0, start = 0;
  const void* planes = nullptr;      // (batch, c, npad): coordinate planes, npad a whole number of vectors
  const int64_t* lengths = nullptr;  // (batch,) points per cloud (all npad-padded), or null: every cloud has n
  int64_t n = 0;                     // points per cloud when lengths is null
  int64_t* out = nullptr;            // (batch, npoint)
};

// Clouds of at most this many channels, all finite, are sampled over spatial buckets (exact, and most
// buckets skipped at most steps) by fps_clouds; others by the full sweep.
inline constexpr int64_t kFpsBucketMaxChannels = 3;

// Shared state of one cloud sampled by `parts` threads together (one spin barrier per step).
struct FpsShared {
  int64_t arrived = 0;           // monotone: parts * steps finished
  double best_val[2][64] = {};   // per step parity and part: the part's largest distance
  int64_t best_idx[2][64] = {};  // and its lowest index
};

struct KnnParams {
  ScalarKind acc = ScalarKind::Float32;
  int64_t batch = 0, m = 0, n = 0, c = 0, k = 0, npad = 0;
  const void* query = nullptr;             // (batch, m, c) contiguous
  const void* planes = nullptr;            // (batch, c, npad): the points' coordinate planes
  const int64_t* query_lengths = nullptr;  // (batch,) or null
  const int64_t* lengths = nullptr;        // (batch,) or null
  void* dists = nullptr;                   // (batch, m, k) in the acc type
  int64_t* idx = nullptr;                  // (batch, m, k)
  int64_t block = 16;                      // queries per task
  // Spatial blocks (low C): planes hold the points sorted along a Morton curve, in blocks of
  // kKnnCell points (padding +inf); order maps a sorted position to the point's index, and each query
  // starts at its own cell's block and skips blocks whose bounding box is provably too far.
  const int64_t* order = nullptr;   // (batch, npad) or null: plain brute force over the planes
  const void* box_lo = nullptr;     // (batch, c, npad / kKnnCell)
  const void* box_hi = nullptr;     // (batch, c, npad / kKnnCell)
  const int64_t* seed = nullptr;    // (batch, m): the block each query starts at
  const uint8_t* finite = nullptr;  // (batch,): 1 when every coordinate of the cloud's points is finite
};
inline constexpr int64_t kKnnCell = 32;
// The block boxes are padded to a multiple of kKnnBoxPad: whole vectors of boxes for every instruction
// set (16 float32 lanes with AVX-512).
inline constexpr int64_t kKnnBoxPad = 16;

// What knn_build writes, per cloud (the KnnParams spatial-block fields, owned by the caller): planes
// (batch, c, npad) and order (batch, npad) in Morton order (padding +inf / -1), box_lo/box_hi
// (batch, c, round_up(npad / kKnnCell, kKnnBoxPad)) (padding boxes +inf), seed (batch, m), finite (batch).
struct KnnBlockBuild {
  const void* points = nullptr;  // (batch, n, c) contiguous, in the acc type
  void* planes = nullptr;
  int64_t* order = nullptr;
  void* box_lo = nullptr;
  void* box_hi = nullptr;
  int64_t* seed = nullptr;
  uint8_t* finite = nullptr;
};

struct PointCloudKernelTable {
  const char* isa;
  int vector_bytes;
  // Whole clouds b0..b1, one thread each.
  void (*fps_clouds)(const FpsParams&, int64_t b0, int64_t b1, void* scratch);
  // (The full sweep only, for clouds the buckets do not take.) Parts [q0, q1) of `parts` of cloud b, run concurrently
  // with the other parts (a spin barrier per step: every part must be running); dist is the cloud's (npad) distance
  // buffer shared by the parts.
  void (*fps_parts)(const FpsParams&, int64_t b, int64_t q0, int64_t q1, int64_t parts, void* dist, FpsShared* shared);
  int64_t (*fps_scratch_bytes)(const FpsParams&);
  // Tasks: (batch, block of `block` queries).
  void (*knn)(const KnnParams&, int64_t task_begin, int64_t task_end, void* scratch);
  int64_t (*knn_scratch_bytes)(const KnnParams&);
  // The spatial blocks of clouds b0..b1 (C <= 3; p.query, p.lengths, p.npad set), one thread each.
  void (*knn_build)(const KnnParams&, const KnnBlockBuild&, int64_t b0, int64_t b1, void* scratch);
  int64_t (*knn_build_scratch_bytes)(const KnnParams&);
};

}  // namespace medkernels::cpu
