// Selective scan (Mamba, arXiv 2312.00752) CUDA kernels, forward and backward. No torch header.
//
// One thread block per (batch, channel) row; 128 threads x 8 tokens make a 1024-token chunk. For each
// state index n the chunk's pairs (exp(dt A_n), dt u B_n) are combined by a block-wide scan under
// (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2), seeded with the state carried from the previous chunk,
// so the (batch, dim, seqlen, dstate) state never reaches memory and seqlen is unbounded; the state
// before each chunk is saved for the backward. The backward walks the chunks in reverse, recomputes
// the states from those checkpoints and runs the adjoint recurrence as a reverse block scan. All
// reductions are in fixed order except variable dB/dC, which sum over the channels of a group with
// fp32 atomics (as mamba_ssm). Offsets are 64-bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "medkernels/cuda/selective_scan.h"

namespace medkernels::cuda {
namespace {

constexpr int kThreads = kScanThreads, kItems = kScanItems, kChunk = kScanChunk, kWarps = kThreads / 32;
constexpr float kLog2e = 1.4426950408889634f;

template <class T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_f<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <class T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// An affine map h -> a h + b; compose(x, y) applies x first, then y.
struct Pair {
  float a, b;
};
__device__ __forceinline__ Pair compose(Pair x, Pair y) { return {x.a * y.a, y.a * x.b + y.b}; }

__device__ __forceinline__ Pair shfl_up(Pair v, int off) {
  return {__shfl_up_sync(0xffffffffu, v.a, off), __shfl_up_sync(0xffffffffu, v.b, off)};
}
__device__ __forceinline__ Pair shfl_down(Pair v, int off) {
  return {__shfl_down_sync(0xffffffffu, v.a, off), __shfl_down_sync(0xffffffffu, v.b, off)};
}

// Exclusive scan of per-thread aggregates over the block, in thread order (or reverse thread order),
// seeded by `seed`. Returns seed o (aggregates of the threads before this one); *total gets
// seed o (all aggregates). `smem` holds kWarps pairs. Contains two __syncthreads.
template <bool kReverse>
__device__ Pair block_exclusive_scan(Pair agg, Pair seed, Pair* total, Pair* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  Pair incl = agg;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const Pair other = kReverse ? shfl_down(incl, off) : shfl_up(incl, off);
    if (kReverse ? lane + off < 32 : lane >= off) incl = compose(other, incl);
  }
  if (lane == (kReverse ? 0 : 31)) smem[warp] = incl;
  __syncthreads();
  Pair before = seed;  // seed o (warps before this one)
  Pair all = seed;
#pragma unroll
  for (int i = 0; i < kWarps; ++i) {
    const int w = kReverse ? kWarps - 1 - i : i;
    if (kReverse ? w > warp : w < warp) before = compose(before, smem[w]);
    all = compose(all, smem[w]);
  }
  const Pair prev = kReverse ? shfl_down(incl, 1) : shfl_up(incl, 1);
  const bool first = kReverse ? lane == 31 : lane == 0;
  *total = all;
  __syncthreads();  // smem may be reused by the next scan
  return first ? before : compose(before, prev);
}

// Sum over the block in a fixed order; the result is valid in thread 0. `smem` holds kWarps floats.
__device__ float block_sum(float v, float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float s = 0.f;
  if (threadIdx.x == 0)
    for (int w = 0; w < kWarps; ++w) s += smem[w];
  __syncthreads();
  return s;
}

__device__ __forceinline__ float softplus_f(float x) { return x <= 20.f ? log1pf(expf(x)) : x; }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }

template <class T, bool kVarB, bool kVarC>
struct Row {
  const T *u, *delta, *z, *B, *C;
  const float *Bf, *Cf;
  float D, bias;
  int64_t row, L, N;
  __device__ Row(const ScanCudaParams& p, int64_t row_index) {
    row = row_index;
    const int64_t b = row / p.dim, d = row % p.dim;
    L = p.seqlen;
    N = p.dstate;
    u = static_cast<const T*>(p.u) + b * p.u_b + d * p.u_d;
    delta = static_cast<const T*>(p.delta) + b * p.delta_b + d * p.delta_d;
    z = p.z ? static_cast<const T*>(p.z) + b * p.z_b + d * p.z_d : nullptr;
    B = kVarB ? static_cast<const T*>(p.B) + b * p.B_b + (d / (p.dim / p.groups_B)) * p.B_g : nullptr;
    C = kVarC ? static_cast<const T*>(p.C) + b * p.C_b + (d / (p.dim / p.groups_C)) * p.C_g : nullptr;
    Bf = kVarB ? nullptr : static_cast<const float*>(p.B) + d * p.dstate;
    Cf = kVarC ? nullptr : static_cast<const float*>(p.C) + d * p.dstate;
    D = p.D ? p.D[d] : 0.f;
    bias = p.delta_bias ? p.delta_bias[d] : 0.f;
  }
  __device__ float Bv(const ScanCudaParams& p, int64_t n, int64_t t) const {
    return kVarB ? (t < L ? to_f(B[n * p.B_n + t * p.B_l]) : 0.f) : Bf[n];
  }
  __device__ float Cv(const ScanCudaParams& p, int64_t n, int64_t t) const {
    return kVarC ? (t < L ? to_f(C[n * p.C_n + t * p.C_l]) : 0.f) : Cf[n];
  }
};

// ---- forward ------------------------------------------------------------------------------------

// One state lane's forward scan over this thread's tokens of a chunk, from the state `h_in` entering
// the chunk: bv = B_t, (da, dbu) = (exp(dt_t A), dt_t u_t B_t) and h = h_t. Padding tokens (t >= L) are
// the identity (1, 0). *total is the whole chunk composed; every thread of the block must call this.
template <class R>
__device__ __forceinline__ void scan_state(const ScanCudaParams& p, const R& r, int64_t n, int64_t t0, float a2,
                                           const float* dt, const float* uf, float h_in, Pair* smem, float* bv,
                                           float* da, float* dbu, float* h, Pair* total) {
  Pair agg{1.f, 0.f};
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t t = t0 + i;
    bv[i] = r.Bv(p, n, t);
    da[i] = t < r.L ? exp2f(dt[i] * a2) : 1.f;
    dbu[i] = t < r.L ? dt[i] * uf[i] * bv[i] : 0.f;
    agg = compose(agg, Pair{da[i], dbu[i]});
  }
  float hv = block_exclusive_scan<false>(agg, Pair{0.f, h_in}, total, smem).b;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    hv = da[i] * hv + dbu[i];
    h[i] = hv;
  }
}

template <class T, bool kVarB, bool kVarC>
__global__ void __launch_bounds__(kThreads) fwd_kernel(ScanCudaParams p) {
  __shared__ Pair smem[kWarps];
  __shared__ float carry[kScanMaxState];
  const Row<T, kVarB, kVarC> r(p, blockIdx.x);
  const int64_t N = r.N, L = r.L;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) carry[n] = p.initial_state ? p.initial_state[r.row * N + n] : 0.f;
  __syncthreads();
  for (int64_t c = 0; c < p.n_chunks; ++c) {
    __syncthreads();  // thread 0's last carry update of the previous chunk is visible
    const int64_t t0 = c * kChunk + int64_t(threadIdx.x) * kItems;
    float uf[kItems], dt[kItems], y[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int64_t t = t0 + i;
      const bool ok = t < L;
      uf[i] = ok ? to_f(r.u[t]) : 0.f;
      const float raw = ok ? to_f(r.delta[t]) + r.bias : 0.f;
      dt[i] = ok ? (p.softplus ? softplus_f(raw) : raw) : 0.f;
      y[i] = 0.f;
    }
    for (int64_t n = threadIdx.x; n < N; n += kThreads) p.checkpoints[(r.row * p.n_chunks + c) * N + n] = carry[n];
    for (int64_t n = 0; n < N; ++n) {
      const float a2 = p.A[(r.row % p.dim) * N + n] * kLog2e;
      float bv[kItems], da[kItems], dbu[kItems], h[kItems];
      Pair total;
      scan_state(p, r, n, t0, a2, dt, uf, carry[n], smem, bv, da, dbu, h, &total);
#pragma unroll
      for (int i = 0; i < kItems; ++i) y[i] += h[i] * r.Cv(p, n, t0 + i);
      if (threadIdx.x == 0) carry[n] = total.b;
    }
    T* out = static_cast<T*>(p.out) + r.row * L;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int64_t t = t0 + i;
      if (t >= L) continue;
      float o = y[i] + r.D * uf[i];
      if (r.z) {
        const float zv = to_f(r.z[t]);
        o *= zv * sigmoid_f(zv);
      }
      out[t] = from_f<T>(o);
    }
  }
  __syncthreads();
  for (int64_t n = threadIdx.x; n < N; n += kThreads) p.last_state[r.row * N + n] = carry[n];
}

// ---- backward -----------------------------------------------------------------------------------
//   g_t = dL/dh_t = gy_t C_t + exp(dt_{t+1} A) g_{t+1},  g_{L-1} also gets dL/d last_state
//   dB_t += g_t dt_t u_t,  dC_t += gy_t h_t,  dA += g_t dA_t h_{t-1} dt_t  (dA_t h_{t-1} = h_t - dt_t u_t B_t)
//   ddt_t = sum_n g_t dA_t h_{t-1} A + u_t <g_t, B_t>,  du_t = gy_t D + dt_t <g_t, B_t>

template <class T, bool kVarB, bool kVarC>
__global__ void __launch_bounds__(kThreads) bwd_kernel(ScanCudaParams p) {
  __shared__ Pair smem[kWarps];
  __shared__ float fsmem[kWarps];
  __shared__ float carry_g[kScanMaxState];  // dA_{t+1} g_{t+1} entering the last token of the chunk
  __shared__ float acc_A[kScanMaxState], acc_B[kScanMaxState], acc_C[kScanMaxState];
  const int64_t rows_per_block = p.det_channels > 0 ? p.det_channels : 1;
  for (int64_t k = 0; k < rows_per_block; ++k) {
    __syncthreads();  // the previous channel's shared state has been written out
    const Row<T, kVarB, kVarC> r(p, int64_t(blockIdx.x) * rows_per_block + k);
    const int64_t N = r.N, L = r.L, d = r.row % p.dim, b = r.row / p.dim;
    for (int64_t n = threadIdx.x; n < N; n += kThreads) {
      carry_g[n] = p.grad_last ? p.grad_last[r.row * N + n] : 0.f;
      acc_A[n] = acc_B[n] = acc_C[n] = 0.f;
    }
    __syncthreads();
    const T* gout = static_cast<const T*>(p.grad_out) + b * p.grad_out_b + d * p.grad_out_d;
    float sum_D = 0.f, sum_bias = 0.f;
    for (int64_t c = p.n_chunks - 1; c >= 0; --c) {
      const int64_t t0 = c * kChunk + int64_t(threadIdx.x) * kItems;
      const int64_t chunk_end = (c + 1) * kChunk < L ? (c + 1) * kChunk - 1 : L - 1;  // last real token
      float uf[kItems], raw[kItems], dt[kItems], gy[kItems], gdt[kItems], gu[kItems];
      float dt_after = 0.f;  // dt of token t0 + kItems (the next thread's first)
#pragma unroll
      for (int i = 0; i <= kItems; ++i) {
        const int64_t t = t0 + i;
        const bool ok = t < L;
        const float rw = ok ? to_f(r.delta[t]) + r.bias : 0.f;
        const float dtv = ok ? (p.softplus ? softplus_f(rw) : rw) : 0.f;
        if (i == kItems) {
          dt_after = dtv;
          break;
        }
        raw[i] = rw;
        dt[i] = dtv;
        uf[i] = ok ? to_f(r.u[t]) : 0.f;
        gy[i] = ok ? to_f(gout[t]) : 0.f;
      }
      const float* ckpt = p.checkpoints + (r.row * p.n_chunks + c) * N;
      if (r.z) {  // the gate needs y: recompute it over all states
        float y[kItems] = {};
        for (int64_t n = 0; n < N; ++n) {
          float bv[kItems], da[kItems], dbu[kItems], h[kItems];
          Pair total;
          scan_state(p, r, n, t0, p.A[d * N + n] * kLog2e, dt, uf, ckpt[n], smem, bv, da, dbu, h, &total);
#pragma unroll
          for (int i = 0; i < kItems; ++i) y[i] += h[i] * r.Cv(p, n, t0 + i);
        }
        T* dz = static_cast<T*>(p.dz) + r.row * L;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          const int64_t t = t0 + i;
          if (t >= L) continue;
          const float zv = to_f(r.z[t]), s = sigmoid_f(zv), o = y[i] + r.D * uf[i];
          dz[t] = from_f<T>(gy[i] * o * s * (1.f + zv * (1.f - s)));
          gy[i] *= zv * s;
        }
      }
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        sum_D += gy[i] * uf[i];
        gdt[i] = 0.f;
        gu[i] = gy[i] * r.D;
      }
      for (int64_t n = 0; n < N; ++n) {
        const float a_n = p.A[d * N + n], a2 = a_n * kLog2e;
        float h[kItems], dbu[kItems], bv[kItems], da[kItems];
        Pair total;
        scan_state(p, r, n, t0, a2, dt, uf, ckpt[n], smem, bv, da, dbu, h, &total);
        // adjoint: g_i = a'_i g_{i+1} + b'_i, scanned from the chunk's end
        Pair radj[kItems];
        Pair ragg{1.f, 0.f};
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i) {
          const int64_t t = t0 + i;
          const float cv = r.Cv(p, n, t);
          if (t > chunk_end) {
            radj[i] = Pair{0.f, 0.f};
          } else if (t == chunk_end) {
            radj[i] = Pair{0.f, gy[i] * cv + carry_g[n]};
          } else {
            const float dt_next = i + 1 < kItems ? dt[i + 1] : dt_after;
            radj[i] = Pair{exp2f(dt_next * a2), gy[i] * cv};
          }
          ragg = compose(ragg, radj[i]);
        }
        Pair rtotal;
        float gv = block_exclusive_scan<true>(ragg, Pair{0.f, 0.f}, &rtotal, smem).b;
        float part_A = 0.f, part_B = 0.f, part_C = 0.f;
        float g_first = 0.f;
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i) {
          const int64_t t = t0 + i;
          gv = radj[i].a * gv + radj[i].b;
          if (t >= L) continue;
          const float x = gv * (h[i] - dbu[i]);
          part_A += x * dt[i];
          gdt[i] += x * a_n + uf[i] * gv * bv[i];
          gu[i] += dt[i] * gv * bv[i];
          const float gb = gv * dt[i] * uf[i], gc = gy[i] * h[i];
          // Deterministic mode: this block owns its partial row and this thread its tokens: plain adds.
          if (kVarB && p.det_channels > 0)
            p.dB[(int64_t(blockIdx.x) * N + n) * L + t] += gb;
          else if (kVarB)
            atomicAdd(p.dB + ((b * p.groups_B + d / (p.dim / p.groups_B)) * N + n) * L + t, gb);
          else
            part_B += gb;
          if (kVarC && p.det_channels > 0)
            p.dC[(int64_t(blockIdx.x) * N + n) * L + t] += gc;
          else if (kVarC)
            atomicAdd(p.dC + ((b * p.groups_C + d / (p.dim / p.groups_C)) * N + n) * L + t, gc);
          else
            part_C += gc;
          if (i == 0) g_first = gv * da[0];
        }
        part_A = block_sum(part_A, fsmem);
        if (!kVarB) part_B = block_sum(part_B, fsmem);
        if (!kVarC) part_C = block_sum(part_C, fsmem);
        if (threadIdx.x == 0) {
          acc_A[n] += part_A;
          acc_B[n] += part_B;
          acc_C[n] += part_C;
          carry_g[n] = g_first;  // thread 0 holds the chunk's first token
        }
        __syncthreads();
      }
      T* du = static_cast<T*>(p.du) + r.row * L;
      T* ddelta = static_cast<T*>(p.ddelta) + r.row * L;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const int64_t t = t0 + i;
        if (t >= L) continue;
        float g = gdt[i];
        if (p.softplus && raw[i] <= 20.f) g *= sigmoid_f(raw[i]);
        sum_bias += g;
        ddelta[t] = from_f<T>(g);
        du[t] = from_f<T>(gu[i]);
      }
    }
    sum_D = block_sum(sum_D, fsmem);
    sum_bias = block_sum(sum_bias, fsmem);
    if (threadIdx.x == 0) {
      p.dD_part[r.row] = sum_D;
      p.dbias_part[r.row] = sum_bias;
    }
    for (int64_t n = threadIdx.x; n < N; n += kThreads) {
      p.dA_part[r.row * N + n] = acc_A[n];
      if (!kVarB) p.dB[r.row * N + n] = acc_B[n];
      if (!kVarC) p.dC[r.row * N + n] = acc_C[n];
      p.dinit[r.row * N + n] = carry_g[n];
    }
  }  // the channels of this block
}

template <class T>
int launch(bool bwd, const ScanCudaParams& p, cudaStream_t stream) {
  const int64_t rows_per_block = bwd && p.det_channels > 0 ? p.det_channels : 1;
  const dim3 grid(static_cast<unsigned>(p.batch * p.dim / rows_per_block)), block(kThreads);
  const bool vb = p.groups_B > 0, vc = p.groups_C > 0;
#define MK_LAUNCH(VB, VC)                                   \
  if (vb == VB && vc == VC) {                               \
    if (bwd)                                                \
      bwd_kernel<T, VB, VC><<<grid, block, 0, stream>>>(p); \
    else                                                    \
      fwd_kernel<T, VB, VC><<<grid, block, 0, stream>>>(p); \
  }
  MK_LAUNCH(true, true)
  MK_LAUNCH(true, false)
  MK_LAUNCH(false, true)
  MK_LAUNCH(false, false)
#undef MK_LAUNCH
  return static_cast<int>(cudaGetLastError());
}

int dispatch(bool bwd, const ScanCudaParams& p, void* stream) {
  if (p.batch * p.dim == 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case ScalarKind::Float32: return launch<float>(bwd, p, s);
    case ScalarKind::Float16: return launch<__half>(bwd, p, s);
    case ScalarKind::BFloat16: return launch<__nv_bfloat16>(bwd, p, s);
    default: break;  // no float64 kernel: the torch side never asks for one
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace

int selective_scan_fwd_cuda(const ScanCudaParams& p, void* stream) { return dispatch(false, p, stream); }
int selective_scan_bwd_cuda(const ScanCudaParams& p, void* stream) { return dispatch(true, p, stream); }

}  // namespace medkernels::cuda
