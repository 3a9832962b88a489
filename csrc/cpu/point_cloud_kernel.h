// Point-cloud CPU kernel bodies: exact furthest point sampling and k nearest neighbours.
//
// Compiled once per instruction set (CMake generates the sources from csrc/cpu/isa_kernels.cpp.in), with
// -ffp-contract=off:
// a squared distance is sum_c (p_c - q_c)^2 added in channel order with every product and sum rounded,
// exactly as the pure-PyTorch references compute it, so ties and near-ties resolve the same way (same
// indices, not just close distances). No torch header here.
//
// Points arrive as coordinate planes (c, npad) so that one vector holds one coordinate of `lanes`
// consecutive points.
#pragma once

#include <sched.h>

#include <algorithm>

#include "medkernels/cpu/point_cloud.h"
#include "medkernels/cpu/simd.h"

namespace medkernels::cpu::MK_ISA {
namespace {

template <class T>
using ivec = typename Simd<T>::I;
template <class T>
struct LaneInt {
  using type = int32_t;
};
template <>
struct LaneInt<double> {
  using type = int64_t;
};

// Bit l set when lane l of the comparison mask m is true.
template <class T>
inline unsigned lane_bits(ivec<T> m) {
#if defined(__AVX512DQ__) && MK_VEC_BYTES == 64
  if constexpr (__is_same(T, float))
    return unsigned(_mm512_movepi32_mask(reinterpret_cast<__m512i&>(m)));
  else
    return unsigned(_mm512_movepi64_mask(reinterpret_cast<__m512i&>(m)));
#elif defined(__AVX__) && MK_VEC_BYTES == 32
  if constexpr (__is_same(T, float))
    return unsigned(__builtin_ia32_movmskps256(reinterpret_cast<vf32&>(m)));
  else
    return unsigned(__builtin_ia32_movmskpd256(reinterpret_cast<vf64&>(m)));
#elif defined(__SSE2__) && MK_VEC_BYTES == 16
  if constexpr (__is_same(T, float))
    return unsigned(__builtin_ia32_movmskps(reinterpret_cast<vf32&>(m)));
  else
    return unsigned(__builtin_ia32_movmskpd(reinterpret_cast<vf64&>(m)));
#else
  unsigned bits = 0;
  for (int l = 0; l < lanes<T>; ++l) bits |= unsigned(m[l] != 0) << l;
  return bits;
#endif
}

// The query's coordinates, broadcast once: fixed channel counts keep them in registers.
template <class T, int CC>
struct Query {
  vec<T> v[CC > 0 ? CC : 1];
  const T* q;
  int64_t qstride;
  Query(const T* q_, int64_t qstride_, int64_t c) : q(q_), qstride(qstride_) {
    if constexpr (CC > 0)
      for (int i = 0; i < CC; ++i) v[i] = vsplat<T>(q[i * qstride]);
    (void)c;
  }
  vec<T> at(int64_t i) const {
    if constexpr (CC > 0)
      return v[i];
    else
      return vsplat<T>(q[i * qstride]);
  }
};

// Squared distances of the `lanes` points at j (planes (c, npad)) to the query.
template <class T, int CC>
inline vec<T> sqdist(const T* planes, int64_t npad, int64_t c, const Query<T, CC>& q, int64_t j) {
  const int64_t cc = CC > 0 ? CC : c;
  vec<T> diff = vload(planes + j) - q.at(0);
  vec<T> d = diff * diff;
  for (int64_t i = 1; i < cc; ++i) {
    diff = vload(planes + i * npad + j) - q.at(i);
    d = d + diff * diff;
  }
  return d;
}

template <class T>
inline T sqdist1(const T* planes, int64_t npad, int64_t c, const T* q, int64_t qstride, int64_t j) {
  T diff = planes[j] - q[0];
  T d = diff * diff;
  for (int64_t i = 1; i < c; ++i) {
    diff = planes[i * npad + j] - q[i * qstride];
    d = d + diff * diff;
  }
  return d;
}

// ---- furthest point sampling -----------------------------------------------------------------------

template <class T>
struct Best {
  T val;
  int64_t idx;
};

// torch's NaN rules, which the textbook loop follows: torch.minimum propagates NaN, torch.argmax takes
// NaN as the maximum (the first NaN wins). So a point whose distance is NaN is taken next, and once a
// point with a NaN coordinate is the newest centre every distance is NaN and the lowest index follows.
template <class T>
inline bool is_nan(T v) {
  return v != v;
}
// (v, i) beats the best so far (b, bi) under argmax's order: NaN first, then larger, then lower index.
template <class T>
inline bool argmax_beats(T v, int64_t i, T b, int64_t bi) {
  if (is_nan(v)) return !is_nan(b) || i < bi;
  return !is_nan(b) && (v > b || (v == b && i < bi));
}

// dist[j] = min(dist[j], |p_j - q|^2) over [j0, j1) (whole vectors; lanes at n and above are vector
// padding and stay -inf); returns the largest new distance and its lowest index (argmax's order).
template <class T, int CC>
Best<T> fps_sweep(const T* planes, int64_t npad, int64_t c, const Query<T, CC>& q, T* dist, int64_t j0, int64_t j1,
                  int64_t n) {
  using I = ivec<T>;
  using IL = typename LaneInt<T>::type;
  const vec<T> ninf = vsplat<T>(T(-__builtin_inf()));
  vec<T> vmax = ninf;
  I vidx{};
  I cur = lane_iota<T>() + IL(j0);
  I any_nan{};
  const int64_t nfull = n > j0 ? j0 + (n - j0) / lanes<T> * lanes<T> : j0;  // vectors without padding
  const int64_t jfull = nfull < j1 ? nfull : j1;
  auto step = [&](int64_t j, bool tail) {
    const vec<T> d = sqdist<T, CC>(planes, npad, c, q, j);
    const vec<T> old = vload(dist + j);
    vec<T> nd = (d < old) | (d != d) ? d : old;  // torch.minimum: NaN wins
    if (tail) nd = cur < IL(n) ? nd : ninf;
    vstore(dist + j, nd);
    const I gt = nd > vmax;  // strictly: the first of equal maxima stays
    vmax = gt ? nd : vmax;
    vidx = gt ? cur : vidx;
    any_nan |= nd != nd;
    cur += IL(lanes<T>);
  };
  for (int64_t j = j0; j < jfull; j += lanes<T>) step(j, false);
  for (int64_t j = jfull; j < j1; j += lanes<T>) step(j, true);
  Best<T> b{T(-__builtin_inf()), -1};
  if (lane_bits<T>(any_nan)) {  // cold: the lowest index holding a NaN, as argmax
    for (int64_t j = j0; j < j1 && j < n; ++j)
      if (is_nan(dist[j])) return Best<T>{dist[j], j};
  }
  for (int l = 0; l < lanes<T>; ++l)
    if (int64_t(vidx[l]) < n && vmax[l] != T(-__builtin_inf()) && argmax_beats(vmax[l], int64_t(vidx[l]), b.val, b.idx))
      b = {vmax[l], int64_t(vidx[l])};
  return b;
}

// Distances start at +inf for real points and -inf for the vector padding (never the largest).
template <class T>
inline void fps_init(T* dist, int64_t j0, int64_t j1, int64_t n) {
  for (int64_t j = j0; j < j1; ++j) dist[j] = j < n ? T(__builtin_inf()) : T(-__builtin_inf());
}

inline int64_t fps_count(const FpsParams& p, int64_t b) { return p.lengths ? p.lengths[b] : p.n; }

// ---- furthest point sampling over buckets (finite clouds) --------------------------------------------
//
// The textbook loop updates every point's distance at every step; most updates change nothing. The
// cloud is split into buckets of kFpsLeaf points along a Morton curve, each with its bounding box and the largest
// distance among its points. A new centre q can lower a distance in a bucket only if the squared distance from q to the
// bucket's box is below the bucket's largest distance; that bound is computed with the same roundings, in the same
// order, as a point's distance (each |p_c - q_c| >= the box gap on axis c, and rounding is monotone), so
// it never exceeds any point's computed distance: skipping is exact, not approximate. The next centre is
// the largest bucket maximum, ties to the lowest point index, as argmax. Clouds with a non-finite
// coordinate keep the full sweep (torch's NaN rules; boxes of infinities bound nothing).

inline constexpr int64_t kFpsLeaf = 64;       // a multiple of every vector's lanes
inline constexpr int64_t kFpsMinBuckets = 8;  // fewer buckets than this: the plain sweep is as fast

template <class T>
struct FpsBuckets {
  int64_t nl = 0;         // buckets (each kFpsLeaf slots; the last one's tail is padding)
  T* xs = nullptr;        // (c, nl * kFpsLeaf) the coordinates in bucket order
  int32_t* id = nullptr;  // (nl * kFpsLeaf) the point each slot holds
  T* dist = nullptr;      // (nl * kFpsLeaf) its distance to the centres (padding: -inf)
  T* lo = nullptr;        // (c, nlpad) box corners per axis
  T* hi = nullptr;
  T* mx = nullptr;          // (nlpad) the largest distance in each bucket (padding buckets: -inf)
  int32_t* mi = nullptr;    // (nlpad) its lowest point index
  int32_t* perm = nullptr;  // (n) build workspace: indices, Morton codes, each twice (radix sort)
  int32_t* perm2 = nullptr;
  uint32_t* code = nullptr;
  uint32_t* code2 = nullptr;
  int64_t bytes = 0;  // how much scratch the layout takes
};

inline int64_t fps_bucket_count(int64_t n) { return (n + kFpsLeaf - 1) / kFpsLeaf; }

template <class T>
FpsBuckets<T> fps_bucket_layout(void* scratch, int64_t c, int64_t n) {
  FpsBuckets<T> k;
  k.nl = fps_bucket_count(n);
  const int64_t slots = k.nl * kFpsLeaf, nlpad = round_up(k.nl, 16);
  int64_t at = 0;  // bytes carved so far (scratch may be null: fps_bucket_bytes only measures)
  auto take = [&](int64_t bytes) {
    void* here = scratch ? static_cast<void*>(static_cast<char*>(scratch) + at) : nullptr;
    at += round_up(bytes, 64);
    return here;
  };
  k.xs = reinterpret_cast<T*>(take(c * slots * int64_t(sizeof(T))));
  k.id = reinterpret_cast<int32_t*>(take(slots * 4));
  k.dist = reinterpret_cast<T*>(take(slots * int64_t(sizeof(T))));
  k.lo = reinterpret_cast<T*>(take(c * nlpad * int64_t(sizeof(T))));
  k.hi = reinterpret_cast<T*>(take(c * nlpad * int64_t(sizeof(T))));
  k.mx = reinterpret_cast<T*>(take(nlpad * int64_t(sizeof(T))));
  k.mi = reinterpret_cast<int32_t*>(take(nlpad * 4));
  k.perm = reinterpret_cast<int32_t*>(take(n * 4));
  k.perm2 = reinterpret_cast<int32_t*>(take(n * 4));
  k.code = reinterpret_cast<uint32_t*>(take(n * 4));
  k.code2 = reinterpret_cast<uint32_t*>(take(n * 4));
  k.bytes = at;
  return k;
}

// The scratch bytes fps_bucket_layout carves (the same walk over a null base).
template <class T>
int64_t fps_bucket_bytes(int64_t c, int64_t n) {
  return fps_bucket_layout<T>(nullptr, c, n).bytes;
}

// ---- Morton order and block boxes (the FPS buckets and the kNN blocks) --------------------------------

// Spreads the low 10 bits of v to every third bit (bit i to bit 3i).
inline uint32_t spread3(uint32_t v) {
  v &= 0x3ffu;
  v = (v | (v << 16)) & 0x030000ffu;
  v = (v | (v << 8)) & 0x0300f00fu;
  v = (v | (v << 4)) & 0x030c30c3u;
  v = (v | (v << 2)) & 0x09249249u;
  return v;
}
// Spreads the low 15 bits of v to every second bit.
inline uint32_t spread2(uint32_t v) {
  v &= 0x7fffu;
  v = (v | (v << 8)) & 0x00ff00ffu;
  v = (v | (v << 4)) & 0x0f0f0f0fu;
  v = (v | (v << 2)) & 0x33333333u;
  v = (v | (v << 1)) & 0x55555555u;
  return v;
}

// The quantisation box of up to 3 channels for Morton codes: over the finite coordinates of n points
// (coordinate i of point j at x[j * ps + i * cs]), and whether every coordinate is finite.
template <class T>
struct MortonBox {
  T lo[3], scale[3], top;
  bool finite = true;
};
template <class T>
MortonBox<T> morton_box(const T* x, int64_t ps, int64_t cs, int64_t c, int64_t n) {
  MortonBox<T> m;
  const int bits = c == 1 ? 24 : c == 2 ? 15 : 10;  // 30-bit codes at most; cells exact in float32 (2^24)
  m.top = T((1u << bits) - 1);
  for (int64_t i = 0; i < c; ++i) {
    const T* xi = x + i * cs;
    T a = T(__builtin_inf()), z = T(-__builtin_inf()), nonfinite = T(0);
    for (int64_t j = 0; j < n; ++j) {  // branch-free: the common, finite case
      const T v = xi[j * ps];
      nonfinite += v - v;  // NaN once any coordinate is NaN or +-inf
      a = v < a ? v : a;
      z = v > z ? v : z;
    }
    if (nonfinite != T(0)) {  // again, over the finite coordinates only
      m.finite = false;
      a = T(__builtin_inf()), z = T(-__builtin_inf());
      for (int64_t j = 0; j < n; ++j) {
        const T v = xi[j * ps];
        if (v - v == T(0)) {
          a = v < a ? v : a;
          z = v > z ? v : z;
        }
      }
    }
    m.lo[i] = z >= a ? a : T(0);
    m.scale[i] = z > a ? m.top / (z - a) : T(0);
  }
  return m;
}

// Coordinate v's cell on axis i, spread to its bits of the Morton code; NaN lands in cell 0 and +-inf at the
// ends (any cell keeps the searches exact: the code only orders points and picks where a kNN query starts).
template <class T>
inline uint32_t morton_bits(T v, int64_t i, int64_t c, const MortonBox<T>& m) {
  T cell = (v - m.lo[i]) * m.scale[i];
  cell = cell > T(0) ? (cell < m.top ? cell : m.top) : T(0);  // NaN fails the first test: cell 0
  const uint32_t u = uint32_t(cell);
  return (c == 3 ? spread3(u) : c == 2 ? spread2(u) : u) << i;
}
// The Morton code of one point (coordinate i at p[i * cs]).
template <class T>
inline uint32_t morton_code(const T* p, int64_t cs, int64_t c, const MortonBox<T>& m) {
  uint32_t code = 0;
  for (int64_t i = 0; i < c; ++i) code |= morton_bits(p[i * cs], i, c, m);
  return code;
}
// The codes of n points (as morton_box's layout), axis by axis (a loop the compiler vectorises).
template <class T>
void morton_codes(const T* x, int64_t ps, int64_t cs, int64_t c, int64_t n, const MortonBox<T>& m, uint32_t* code) {
  for (int64_t j = 0; j < n; ++j) code[j] = 0;
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < n; ++j) code[j] |= morton_bits(x[j * ps + i * cs], i, c, m);
}

// Stable LSD radix sort of n (key, id) pairs by three 10-bit digits (30-bit keys), ids set to 0..n-1 first;
// key/id end pointing at the sorted arrays (either the inputs or the tmp buffers).
inline void morton_sort(uint32_t*& key, int32_t*& id, uint32_t* key_tmp, int32_t* id_tmp, int64_t n) {
  for (int64_t j = 0; j < n; ++j) id[j] = int32_t(j);
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = 10 * pass;
    uint32_t count[1025] = {};
    for (int64_t j = 0; j < n; ++j) ++count[((key[j] >> shift) & 1023u) + 1];
    for (int d = 0; d < 1024; ++d) count[d + 1] += count[d];
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t at = count[(key[j] >> shift) & 1023u]++;
      key_tmp[at] = key[j];
      id_tmp[at] = id[j];
    }
    std::swap(key, key_tmp);
    std::swap(id, id_tmp);
  }
}

// The boxes of nb blocks of `block` consecutive points of coordinate planes (c, stride): lo/hi (c, nbpad),
// a NaN coordinate making its block's box NaN; blocks nb..nbpad (vector padding) get +inf boxes.
template <class T>
void block_boxes(const T* pl, int64_t stride, int64_t c, int64_t nb, int64_t block, T* lo, T* hi, int64_t nbpad) {
  const T inf = T(__builtin_inf());
  for (int64_t i = 0; i < c; ++i)
    for (int64_t l = 0; l < nbpad; ++l) {
      T a = inf, z = inf;
      if (l < nb) {
        const T* x = pl + i * stride + l * block;
        bool nan = false;
        a = x[0], z = x[0];
        for (int64_t s = 0; s < block; ++s) {  // branch-free min/max (NaN ignored), NaN noted apart
          const T v = x[s];
          nan |= v != v;
          a = v < a ? v : a;
          z = v > z ? v : z;
        }
        if (nan) a = z = T(__builtin_nan(""));
      }
      lo[i * nbpad + l] = a;
      hi[i * nbpad + l] = z;
    }
}

// The squared distances from the query to the `lanes` boxes g..g+lanes-1 (lo/hi (c, nbpad)): the gap per
// axis squared and summed in a distance's order and rounding, so never above the computed distance of a
// point inside (rounding is monotone); NaN where a box is NaN.
template <class T, int CC>
inline vec<T> box_bound(const T* lo, const T* hi, int64_t nbpad, int64_t c, const Query<T, CC>& q, int64_t g) {
  const int64_t cc = CC > 0 ? CC : c;
  vec<T> lb{};
  for (int64_t i = 0; i < cc; ++i) {
    const vec<T> below = vload(lo + i * nbpad + g) - q.at(i), above = q.at(i) - vload(hi + i * nbpad + g);
    vec<T> gap = below > above ? below : above;
    gap = gap > vec<T>{} ? gap : vec<T>{};
    lb = i == 0 ? gap * gap : lb + gap * gap;
  }
  return lb;
}

// Builds the buckets of the cloud's first n points (planes (c, npad), c <= 3, every coordinate finite; m
// their box): the points sorted along a Morton curve, cut into runs of kFpsLeaf. Any order keeps the sampling
// exact; this one keeps each bucket's box small.
template <class T>
void fps_bucket_build(FpsBuckets<T>& k, const T* pl, int64_t npad, int64_t c, int64_t n, const MortonBox<T>& m) {
  const int64_t slots = k.nl * kFpsLeaf, nlpad = round_up(k.nl, 16);
  uint32_t* key = k.code;
  int32_t* perm = k.perm;
  morton_codes(pl, 1, npad, c, n, m, key);
  morton_sort(key, perm, k.code2, k.perm2, n);
  for (int64_t s = 0; s < slots; ++s) {
    const bool real = s < n;
    const int32_t j = perm[real ? s : n - 1];  // padding repeats a real point, with distance -inf
    k.id[s] = j;
    k.dist[s] = real ? T(__builtin_inf()) : T(-__builtin_inf());
    for (int64_t i = 0; i < c; ++i) k.xs[i * slots + s] = pl[i * npad + j];
  }
  // (the last bucket's box also covers the point its padding repeats: a looser bound, still exact)
  block_boxes(k.xs, slots, c, k.nl, kFpsLeaf, k.lo, k.hi, nlpad);
  for (int64_t l = 0; l < nlpad; ++l) {
    const bool real = l < k.nl;
    k.mx[l] = real ? T(__builtin_inf()) : T(-__builtin_inf());  // padding buckets are never visited
    k.mi[l] = real ? k.id[l * kFpsLeaf] : INT32_MAX;
  }
}

// One step of the bucketed loop: the centre q lowers the distances it can, and the next centre is returned.
template <class T, int CC>
int64_t fps_bucket_step(FpsBuckets<T>& k, int64_t c, const Query<T, CC> q) {  // by value: kept in registers
  using I = ivec<T>;
  const int64_t slots = k.nl * kFpsLeaf, nlpad = round_up(k.nl, 16);
  for (int64_t l0 = 0; l0 < k.nl; l0 += lanes<T>) {
    unsigned visit = lane_bits<T>(box_bound<T, CC>(k.lo, k.hi, nlpad, c, q, l0) < vload(k.mx + l0));
    while (visit) {
      const int64_t l = l0 + __builtin_ctz(visit);
      visit &= visit - 1;
      // Sweep bucket l: new distances, then its largest and that value's lowest point index.
      T* dist = k.dist + l * kFpsLeaf;
      vec<T> vmax = vsplat<T>(T(-__builtin_inf()));
      for (int64_t s = 0; s < kFpsLeaf; s += lanes<T>) {
        const vec<T> d = sqdist<T, CC>(k.xs + l * kFpsLeaf, slots, c, q, s);
        const vec<T> old = vload(dist + s);
        const vec<T> nd = d < old ? d : old;
        vstore(dist + s, nd);
        vmax = nd > vmax ? nd : vmax;
      }
      T m = vmax[0];
      for (int j = 1; j < lanes<T>; ++j) m = vmax[j] > m ? vmax[j] : m;
      int32_t mi = INT32_MAX;
      for (int64_t s = 0; s < kFpsLeaf; s += lanes<T>) {
        const I eq = vload(dist + s) == vsplat<T>(m);
        unsigned bits = lane_bits<T>(eq);
        while (bits) {
          const int j = __builtin_ctz(bits);
          bits &= bits - 1;
          mi = std::min(mi, k.id[s + j + l * kFpsLeaf]);
        }
      }
      k.mx[l] = m;
      k.mi[l] = mi;
    }
  }
  // The next centre: the largest bucket maximum, ties to the lowest point index.
  T best = T(-__builtin_inf());
  int32_t best_i = INT32_MAX;
  for (int64_t l = 0; l < k.nl; ++l) {
    const T v = k.mx[l];
    if (v > best || (v == best && k.mi[l] < best_i)) {
      best = v;
      best_i = k.mi[l];
    }
  }
  return best_i;
}

template <class T, int CC>
void fps_clouds_t(const FpsParams& p, int64_t b0, int64_t b1, void* scratch) {
  for (int64_t b = b0; b < b1; ++b) {
    const T* pl = static_cast<const T*>(p.planes) + b * p.c * p.npad;
    const int64_t n = fps_count(p, b), nr = round_up(n, lanes<T>);
    int64_t* out = p.out + b * p.npoint;
    int64_t last = p.start;
    out[0] = last;
    const bool bucketed = p.c <= kFpsBucketMaxChannels && fps_bucket_count(n) >= kFpsMinBuckets;
    const MortonBox<T> box = bucketed ? morton_box(pl, 1, p.npad, p.c, n) : MortonBox<T>{};
    if (bucketed && box.finite) {
      FpsBuckets<T> k = fps_bucket_layout<T>(scratch, p.c, n);
      fps_bucket_build(k, pl, p.npad, p.c, n, box);
      for (int64_t i = 1; i < p.npoint; ++i) {
        last = fps_bucket_step<T, CC>(k, p.c, Query<T, CC>(pl + last, p.npad, p.c));
        out[i] = last;
      }
      continue;
    }
    T* dist = static_cast<T*>(scratch);
    fps_init(dist, 0, nr, n);
    for (int64_t i = 1; i < p.npoint; ++i) {
      const Query<T, CC> q(pl + last, p.npad, p.c);
      last = fps_sweep<T, CC>(pl, p.npad, p.c, q, dist, 0, nr, n).idx;
      out[i] = last;
    }
  }
}

inline void spin_until(const int64_t* counter, int64_t target) {
  int spins = 0;
  while (__atomic_load_n(counter, __ATOMIC_ACQUIRE) < target) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (++spins == 256) {  // the other threads may be descheduled (shared machines): let them run
      sched_yield();
      spins = 0;
    }
  }
}

// Parts [q0, q1) of `parts` of cloud b. Every step, each part sweeps its slice of the cloud, posts its
// best, and waits until all parts have posted (a monotone counter: no reset races); then every thread
// reduces the posts in part order, so all agree on the same next point.
template <class T, int CC>
void fps_parts_t(const FpsParams& p, int64_t b, int64_t q0, int64_t q1, int64_t parts, void* dist_v, FpsShared* sh) {
  T* dist = static_cast<T*>(dist_v);
  const T* pl = static_cast<const T*>(p.planes) + b * p.c * p.npad;
  const int64_t n = fps_count(p, b), nr = round_up(n, lanes<T>);
  const int64_t chunk = round_up((nr + parts - 1) / parts, lanes<T>);
  for (int64_t part = q0; part < q1; ++part) {
    const int64_t j0 = part * chunk, j1 = j0 + chunk < nr ? j0 + chunk : nr;
    if (j0 < j1) fps_init(dist, j0, j1, n);
  }
  int64_t* out = p.out + b * p.npoint;
  int64_t last = p.start;
  if (q0 == 0) out[0] = last;
  for (int64_t i = 1; i < p.npoint; ++i) {
    const Query<T, CC> q(pl + last, p.npad, p.c);
    const int slot = int(i & 1);
    for (int64_t part = q0; part < q1; ++part) {
      const int64_t j0 = part * chunk, j1 = j0 + chunk < nr ? j0 + chunk : nr;
      const Best<T> bb = j0 < j1 ? fps_sweep<T, CC>(pl, p.npad, p.c, q, dist, j0, j1, n) : Best<T>{T(-1), -1};
      sh->best_val[slot][part] = double(bb.val);
      sh->best_idx[slot][part] = bb.idx;
    }
    __atomic_fetch_add(&sh->arrived, q1 - q0, __ATOMIC_ACQ_REL);
    spin_until(&sh->arrived, parts * i);
    double best = -__builtin_inf();
    int64_t best_i = -1;
    for (int64_t part = 0; part < parts; ++part)  // parts in index order: argmax's order across parts
      if (sh->best_idx[slot][part] >= 0 &&
          (best_i < 0 || argmax_beats(sh->best_val[slot][part], sh->best_idx[slot][part], best, best_i))) {
        best = sh->best_val[slot][part];
        best_i = sh->best_idx[slot][part];
      }
    last = best_i;
    if (q0 == 0) out[i] = last;
  }
}

// Calls f.template operator()<T, CC>() with T the compute type and CC = 3 for three channels (kept
// in registers), else 0 (any number).
template <class F>
inline void with_point_types(ScalarKind acc, int64_t c, F&& f) {
  auto channels = [&]<class T>() {
    if (c == 3)
      f.template operator()<T, 3>();
    else
      f.template operator()<T, 0>();
  };
  if (acc == ScalarKind::Float64)
    channels.template operator()<double>();
  else
    channels.template operator()<float>();
}

void fps_clouds_entry(const FpsParams& p, int64_t b0, int64_t b1, void* scratch) {
  with_point_types(p.acc, p.c, [&]<class T, int CC>() { fps_clouds_t<T, CC>(p, b0, b1, scratch); });
}
void fps_parts_entry(const FpsParams& p, int64_t b, int64_t q0, int64_t q1, int64_t parts, void* dist, FpsShared* sh) {
  with_point_types(p.acc, p.c, [&]<class T, int CC>() { fps_parts_t<T, CC>(p, b, q0, q1, parts, dist, sh); });
}
int64_t fps_scratch_bytes(const FpsParams& p) {
  const int64_t plain = round_up(p.npad * (p.acc == ScalarKind::Float64 ? 8 : 4), 64);
  const int64_t buckets =
      p.acc == ScalarKind::Float64 ? fps_bucket_bytes<double>(p.c, p.npad) : fps_bucket_bytes<float>(p.c, p.npad);
  return std::max(plain, buckets);
}

// ---- k nearest neighbours --------------------------------------------------------------------------

// kNN's order: by distance, NaN after +inf, then by index (a stable sort's order, as torch.sort).
template <class T>
inline bool knn_before(T d, int64_t j, T e, int64_t k) {
  if (d < e) return true;
  if (d > e) return false;
  if (d == e) return j < k;
  return is_nan(d) == is_nan(e) ? j < k : is_nan(e);  // at least one NaN
}

// The k best (distance, index) pairs so far in knn_before's order (candidates may arrive in any index
// order: the spatial-block search visits points out of order). Until k are held every candidate
// enters, whatever its distance (+inf, NaN), so all k slots are always filled.
template <class T>
struct TopK {
  T* d;
  int64_t* i;
  int64_t k, count = 0;
  T thr = T(__builtin_nan(""));  // the k-th distance once full; NaN before: every candidate passes the filter
  int64_t thr_i = INT64_MAX;
  void reset() {
    count = 0;
    thr = T(__builtin_nan(""));
    thr_i = INT64_MAX;
  }
  bool wants(T dv, int64_t jv) const { return count < k || knn_before(dv, jv, thr, thr_i); }
  void insert(T dv, int64_t jv) {
    int64_t pos = count < k ? count++ : k - 1;
    while (pos > 0 && knn_before(dv, jv, d[pos - 1], i[pos - 1])) {
      d[pos] = d[pos - 1];
      i[pos] = i[pos - 1];
      --pos;
    }
    d[pos] = dv;
    i[pos] = jv;
    if (count == k) thr = d[k - 1], thr_i = i[k - 1];
  }
  // Offers the `lanes` distances d of points j..j+lanes-1 (index map `order`, -1 for padding; or the
  // identity). The filter !(d > thr) passes everything while thr is NaN, and NaN distances always
  // (wants() then decides).
  void offer(vec<T> d, int64_t j, const int64_t* order) {
    unsigned bits = ~lane_bits<T>(d > vsplat<T>(thr)) & ((1u << lanes<T>)-1);
    while (bits) {
      const int l = __builtin_ctz(bits);
      bits &= bits - 1;
      const int64_t jv = order ? order[j + l] : j + l;
      if (jv >= 0 && wants(d[l], jv)) insert(d[l], jv);
    }
  }
};

template <class T, int CC>
void knn_query(const KnnParams& p, const T* pl, int64_t n, const T* q, TopK<T>& top) {
  const Query<T, CC> qv(q, 1, p.c);
  const int64_t nv = n / lanes<T> * lanes<T>;
  for (int64_t j = 0; j < nv; j += lanes<T>) top.offer(sqdist<T, CC>(pl, p.npad, p.c, qv, j), j, nullptr);
  for (int64_t j = nv; j < n; ++j) {
    const T d = sqdist1(pl, p.npad, p.c, q, 1, j);
    if (top.wants(d, j)) top.insert(d, j);
  }
}

// The spatial-block search: blocks of kKnnCell Morton-sorted points, visited from the query's own
// block onwards (so the threshold tightens at once), `lanes` block boxes at a time; a block is skipped
// when its box's lower bound exceeds the k-th distance by more than rounding could explain, so
// every point that could enter (or tie) is still offered: the result equals brute force.
template <class T, int CC>
void knn_query_blocks(const KnnParams& p, const T* pl, const int64_t* order, const T* lo, const T* hi, int64_t nbpad,
                      int64_t seed, const T* q, TopK<T>& top) {
  constexpr int L = lanes<T>;
  const Query<T, CC> qv(q, 1, p.c);
  const T slack = T(1) + T(sizeof(T) == 4 ? 1e-5 : 1e-12);
  const int64_t groups = nbpad / L, g0 = seed / L;
  for (int64_t s = 0; s < groups; ++s) {
    const int64_t g = g0 + s < groups ? g0 + s : g0 + s - groups;
    const vec<T> lb = box_bound<T, CC>(lo, hi, nbpad, p.c, qv, g * L);
    // every box while not full (thr NaN), and boxes whose bound is NaN (a NaN coordinate)
    unsigned bits = ~lane_bits<T>(lb > vsplat<T>(top.thr * slack)) & ((1u << L) - 1);
    while (bits) {
      const int l = __builtin_ctz(bits);
      bits &= bits - 1;
      if (lb[l] > top.thr * slack) continue;  // the threshold tightened meanwhile
      const int64_t j0 = (g * L + l) * kKnnCell;
      if (j0 >= p.npad) break;  // the boxes' vector padding (lanes in order: the rest is padding too)
      for (int64_t j = j0; j < j0 + kKnnCell; j += L) top.offer(sqdist<T, CC>(pl, p.npad, p.c, qv, j), j, order);
    }
  }
}

// The spatial-block search for a finite query over a finite cloud, in two passes. First a threshold:
// the k-th smallest distance among the points of the blocks around the query's own (Morton neighbours,
// at least k + kKnnCell points), which bounds the true k-th distance from above. Then every point within
// it: blocks whose box bound (computed in the distance's own order and rounding, so never above a
// point's computed distance) is at most the threshold are read, and their points at most the threshold
// collected. The k smallest of those in knn_before's order (a selection, then a sort of k) are exactly
// brute force's, ties included: every point at or below the true k-th distance was collected.
template <class T>
struct KnnCand {
  T d;
  int64_t j;
};

template <class T, int CC>
int64_t knn_query_collect(const KnnParams& p, const T* pl, const int64_t* order, const T* lo, const T* hi,
                          int64_t nbpad, int64_t seed, const T* q, T* near, KnnCand<T>* cand, uint64_t* keys) {
  constexpr int L = lanes<T>;
  const Query<T, CC> qv(q, 1, p.c);
  const int64_t nb = p.npad / kKnnCell;
  // Pass 1: the threshold from the blocks around the seed.
  const int64_t want = (p.k + kKnnCell - 1) / kKnnCell + 4;  // measured: +4 beats +1, +2, +6, +9
  int64_t b0 = seed - want / 2;
  b0 = b0 + want > nb ? nb - want : b0;
  b0 = b0 < 0 ? 0 : b0;
  const int64_t b1 = b0 + want < nb ? b0 + want : nb;
  int64_t cnt = 0;
  for (int64_t j = b0 * kKnnCell; j < b1 * kKnnCell; j += L) {
    vstore(near + cnt, sqdist<T, CC>(pl, p.npad, p.c, qv, j));  // padding points are +inf
    cnt += L;
  }
  std::nth_element(near, near + (p.k - 1), near + cnt);
  const T t = near[p.k - 1];
  const vec<T> tv = vsplat<T>(t);
  // Pass 2: every point within t.
  int64_t found = 0;
  const bool use_keys = sizeof(T) == 4 && p.n <= int64_t(UINT32_MAX);
  for (int64_t g = 0; g < nbpad; g += L) {
    unsigned bits = lane_bits<T>(box_bound<T, CC>(lo, hi, nbpad, p.c, qv, g) <= tv);
    while (bits) {
      const int64_t blk = g + __builtin_ctz(bits);
      bits &= bits - 1;
      if (blk >= nb) break;  // the boxes' vector padding (+inf boxes never pass; kept for clarity)
      for (int64_t j = blk * kKnnCell; j < (blk + 1) * kKnnCell; j += L) {
        const vec<T> d = sqdist<T, CC>(pl, p.npad, p.c, qv, j);
        unsigned in = lane_bits<T>(d <= tv);
        while (in) {
          const int l = __builtin_ctz(in);
          in &= in - 1;
          const int64_t jv = order[j + l];
          if (jv < 0) continue;
          if (use_keys) {
            // float32: one integer key per candidate, the distance's bits (>= 0, so they order as the
            // values do) above the index, so keys order by distance, then index
            const float dv = float(d[l]);
            uint32_t bits32;
            __builtin_memcpy(&bits32, &dv, 4);
            keys[found++] = (uint64_t(bits32) << 32) | uint64_t(jv);
          } else {
            cand[found++] = KnnCand<T>{d[l], jv};
          }
        }
      }
    }
  }
  if (use_keys) {
    if (found > p.k) std::nth_element(keys, keys + (p.k - 1), keys + found);
    std::sort(keys, keys + p.k);
    for (int64_t r = 0; r < p.k; ++r) {
      const uint32_t bits32 = uint32_t(keys[r] >> 32);
      float dv;
      __builtin_memcpy(&dv, &bits32, 4);
      cand[r] = KnnCand<T>{T(dv), int64_t(keys[r] & 0xffffffffu)};
    }
  } else {
    auto before = [](const KnnCand<T>& a, const KnnCand<T>& b) { return knn_before(a.d, a.j, b.d, b.j); };
    if (found > p.k) std::nth_element(cand, cand + (p.k - 1), cand + found, before);
    std::sort(cand, cand + p.k, before);
  }
  return found;
}

template <class T, int CC>
void knn_t(const KnnParams& p, int64_t t0, int64_t t1, void* scratch) {
  Carver cv{reinterpret_cast<uintptr_t>(scratch)};
  TopK<T> top{cv.take<T>(p.k), cv.take<int64_t>(p.k), p.k};
  T* near = p.order ? cv.take<T>(p.npad) : nullptr;                    // the first pass's distances
  KnnCand<T>* cand = p.order ? cv.take<KnnCand<T>>(p.npad) : nullptr;  // the second pass's candidates
  uint64_t* keys = p.order ? cv.take<uint64_t>(p.npad) : nullptr;      // (float32: as integer keys)
  const int64_t nblocks = (p.m + p.block - 1) / p.block;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / nblocks, m0 = (t % nblocks) * p.block, m1 = m0 + p.block < p.m ? m0 + p.block : p.m;
    const int64_t mq = p.query_lengths ? p.query_lengths[b] : p.m, n = p.lengths ? p.lengths[b] : p.n;
    const T* pl = static_cast<const T*>(p.planes) + b * p.c * p.npad;
    for (int64_t m = m0; m < m1; ++m) {
      T* od = static_cast<T*>(p.dists) + (b * p.m + m) * p.k;
      int64_t* oi = p.idx + (b * p.m + m) * p.k;
      if (m >= mq) {  // a padded query: no neighbours
        for (int64_t r = 0; r < p.k; ++r) od[r] = T(0), oi[r] = -1;
        continue;
      }
      top.reset();
      const T* q = static_cast<const T*>(p.query) + (b * p.m + m) * p.c;
      const bool finite_q = [&] {
        T acc = 0;
        for (int64_t c = 0; c < p.c; ++c) acc += q[c] - q[c];
        return acc == acc;
      }();
      if (p.order && p.finite[b] && finite_q) {
        const int64_t nbpad = round_up(p.npad / kKnnCell, kKnnBoxPad);
        knn_query_collect<T, CC>(p, pl, p.order + b * p.npad, static_cast<const T*>(p.box_lo) + b * p.c * nbpad,
                                 static_cast<const T*>(p.box_hi) + b * p.c * nbpad, nbpad, p.seed[b * p.m + m], q, near,
                                 cand, keys);
        for (int64_t r = 0; r < p.k; ++r) od[r] = cand[r].d, oi[r] = cand[r].j;
        continue;
      }
      if (p.order) {
        const int64_t nbpad = round_up(p.npad / kKnnCell, kKnnBoxPad);
        knn_query_blocks<T, CC>(p, pl, p.order + b * p.npad, static_cast<const T*>(p.box_lo) + b * p.c * nbpad,
                                static_cast<const T*>(p.box_hi) + b * p.c * nbpad, nbpad, p.seed[b * p.m + m], q, top);
      } else {
        knn_query<T, CC>(p, pl, n, q, top);
      }
      // k <= every cloud's length, so the search always fills all k slots; never leave memory unset
      for (int64_t r = 0; r < p.k; ++r)
        od[r] = r < top.count ? top.d[r] : T(__builtin_inf()), oi[r] = r < top.count ? top.i[r] : -1;
    }
  }
}

template <class T>
void knn_build_t(const KnnParams& p, const KnnBlockBuild& o, int64_t b0, int64_t b1, void* scratch) {
  const int64_t c = p.c, nb = p.npad / kKnnCell, nbpad = round_up(nb, kKnnBoxPad);
  Carver cv{reinterpret_cast<uintptr_t>(scratch)};
  uint32_t* key_a = cv.take<uint32_t>(p.n);
  uint32_t* key_b = cv.take<uint32_t>(p.n);
  int32_t* id_a = cv.take<int32_t>(p.n);
  int32_t* id_b = cv.take<int32_t>(p.n);
  const T inf = T(__builtin_inf());
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t n = p.lengths ? p.lengths[b] : p.n;
    const T* pts = static_cast<const T*>(o.points) + b * p.n * c;
    const MortonBox<T> box = morton_box(pts, c, 1, c, n);
    o.finite[b] = box.finite;
    uint32_t* ka = key_a;
    int32_t* ia = id_a;
    morton_codes(pts, c, 1, c, n, box, ka);
    morton_sort(ka, ia, key_b, id_b, n);
    T* pl = static_cast<T*>(o.planes) + b * c * p.npad;
    int64_t* order = o.order + b * p.npad;
    for (int64_t s = 0; s < p.npad; ++s) {
      const bool real = s < n;
      order[s] = real ? ia[s] : -1;
      for (int64_t i = 0; i < c; ++i) pl[i * p.npad + s] = real ? pts[int64_t(ia[s]) * c + i] : inf;
    }
    // Each block's box; a NaN coordinate makes it NaN (the threshold-free search then never skips it).
    block_boxes(pl, p.npad, c, nb, kKnnCell, static_cast<T*>(o.box_lo) + b * c * nbpad,
                static_cast<T*>(o.box_hi) + b * c * nbpad, nbpad);
    // Each query starts at the block where its own code would sort.
    const T* qs = static_cast<const T*>(p.query) + b * p.m * c;
    for (int64_t m = 0; m < p.m; ++m) {
      const uint32_t code = morton_code(qs + m * c, 1, c, box);
      int64_t pos = std::lower_bound(ka, ka + n, code) - ka;
      pos = pos < n ? pos : n - 1;
      o.seed[b * p.m + m] = pos / kKnnCell;
    }
  }
}

void knn_build_entry(const KnnParams& p, const KnnBlockBuild& o, int64_t b0, int64_t b1, void* scratch) {
  if (p.acc == ScalarKind::Float64)
    knn_build_t<double>(p, o, b0, b1, scratch);
  else
    knn_build_t<float>(p, o, b0, b1, scratch);
}
int64_t knn_build_scratch_bytes(const KnnParams& p) { return 4 * round_up(p.n * 4, 64) + 64; }

void knn_entry(const KnnParams& p, int64_t t0, int64_t t1, void* scratch) {
  with_point_types(p.acc, p.c, [&]<class T, int CC>() { knn_t<T, CC>(p, t0, t1, scratch); });
}
int64_t knn_scratch_bytes(const KnnParams& p) {
  const int64_t t = p.acc == ScalarKind::Float64 ? 8 : 4;
  const int64_t collect = p.order ? round_up(p.npad * t, 64) + round_up(p.npad * 16, 64) + round_up(p.npad * 8, 64) : 0;
  return round_up(p.k * 8, 64) * 2 + collect + 64;
}

#define MK_STR2(x) #x
#define MK_STR(x) MK_STR2(x)
const PointCloudKernelTable kPointCloudTable{MK_STR(MK_ISA),     MK_VEC_BYTES,       &fps_clouds_entry,
                                             &fps_parts_entry,   &fps_scratch_bytes, &knn_entry,
                                             &knn_scratch_bytes, &knn_build_entry,   &knn_build_scratch_bytes};
#undef MK_STR
#undef MK_STR2

}  // namespace
}  // namespace medkernels::cpu::MK_ISA
