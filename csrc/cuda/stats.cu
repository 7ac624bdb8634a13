// CUDA accumulation kernels for layerprof (the `cuda` backend).
//
// stats:  S += XᵀX on upper-triangle 64×64 tiles only, C += XᵀG, q += ‖G‖², rows masked.
// One launch covers both products: blockIdx.x enumerates the S tiles (ti <= tj) and then
// the C tiles; blockIdx.y splits the rows, and each block atomically adds its fp32 tile
// into the accumulator (split-K over rows keeps the device full at small d).
// Reduction order: with the row split, the order of the atomic adds (and of q's per-warp
// adds) varies from run to run, so results vary in the last bits. Under
// torch.use_deterministic_algorithms(True) the launcher uses one block per tile (every
// element of S and C has one writer, its rows summed in order) and q comes from torch's own
// reduction: bitwise reproducible (args.deterministic, stats_cuda.h).
//
//   FLOPs   rows·d_in·(d_in + 64) (triangle incl. diagonal tiles) + 2·rows·d_in·d_out
//   traffic each block streams rows × 128 inputs per 64×64 tile through shared memory;
//           masked rows are loaded as zeros (no gather copy)
//
// bf16/fp16 inputs use tensor cores through WMMA (16×16×16, fp32 accumulation; the products
// of bf16/fp16 values are exact in fp32). fp32 inputs use a SIMT fp32 path (no TF32), so
// results meet the fp32 GEMM error bound. Accumulators are fp32.
//
// This file includes no torch header: it compiles standalone with
//   nvcc -arch=sm_90 -std=c++17 -c csrc/cuda/stats.cu
// (a test does exactly that), and the torch-facing checks live in stats_cuda.cpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "stats_cuda.h"

namespace layerprof_cuda {

constexpr int TILE = 64;     // output tile (TILE × TILE)
constexpr int KSTEP = 32;    // rows per shared-memory stage
constexpr int THREADS = 128; // 4 warps

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T zero_of();
template <>
__device__ __forceinline__ float zero_of<float>() { return 0.f; }
template <>
__device__ __forceinline__ __half zero_of<__half>() { return __float2half(0.f); }
template <>
__device__ __forceinline__ __nv_bfloat16 zero_of<__nv_bfloat16>() { return __float2bfloat16(0.f); }

// (ti, tj) of tile t: upper-triangle S tiles first (row-major over ti <= tj), then C tiles.
struct TileCoord {
  int ti, tj;
  bool is_s;
};

__device__ TileCoord tile_of(int t, int nt_in, int nt_out, int n_s_tiles) {
  TileCoord c;
  if (t < n_s_tiles) {
    int i = 0, row_len = nt_in;
    while (t >= row_len) {
      t -= row_len;
      ++i;
      --row_len;
    }
    c.ti = i;
    c.tj = i + t;
    c.is_s = true;
  } else {
    t -= n_s_tiles;
    c.ti = t / nt_out;
    c.tj = t % nt_out;
    c.is_s = false;
  }
  return c;
}

// Load a KSTEP × TILE stage of columns [col0, col0+TILE) of a row-major (rows × ld) matrix,
// rows [r0, r0+KSTEP) ∩ [r_begin, r_end), masked rows and out-of-range columns as zero.
template <typename T>
__device__ __forceinline__ void load_stage(T* sm, const T* base, int64_t ld, int64_t r0, int64_t r_end, int col0,
                                           int ncols, const uint8_t* mask, float* sq) {
  for (int e = threadIdx.x; e < KSTEP * TILE; e += THREADS) {
    int k = e / TILE, c = e % TILE;
    int64_t r = r0 + k;
    int col = col0 + c;
    T v = zero_of<T>();
    if (r < r_end && col < ncols && (mask == nullptr || mask[r])) v = base[r * ld + col];
    sm[k * TILE + c] = v;
    if (sq != nullptr) {
      float f = to_f32(v);
      *sq += f * f;
    }
  }
}

__device__ void flush_tile(const float* acc_sm, float* out, int64_t ldo, int row0, int nrows, int col0, int ncols,
                           bool upper_only) {
  for (int e = threadIdx.x; e < TILE * TILE; e += THREADS) {
    int i = e / TILE, j = e % TILE;
    int r = row0 + i, c = col0 + j;
    if (r < nrows && c < ncols && (!upper_only || r <= c)) atomicAdd(out + (int64_t)r * ldo + c, acc_sm[e]);
  }
}

// Both operands of one stage: A = columns ti of X; B = columns tj of X (S tile) or of G (C tile,
// whose first tile row also sums ‖G‖² of the columns it loads).
template <typename T>
__device__ __forceinline__ void load_operands(T* sa, T* sb, const T* x, int64_t ldx, const T* g, int64_t ldg,
                                              const uint8_t* mask, int64_t r0, int64_t r_end, const TileCoord& tc,
                                              int d_in, int d_out, float* sq) {
  load_stage<T>(sa, x, ldx, r0, r_end, tc.ti * TILE, d_in, mask, nullptr);
  if (tc.is_s)
    load_stage<T>(sb, x, ldx, r0, r_end, tc.tj * TILE, d_in, mask, nullptr);
  else
    load_stage<T>(sb, g, ldg, r0, r_end, tc.tj * TILE, d_out, mask, (tc.ti == 0) ? sq : nullptr);
}

__device__ void add_q(float sq, float* q) {
  // Warp reduction then one atomic per warp (q == null: the caller sums ‖G‖² itself, deterministically).
  if (q == nullptr) return;
  for (int off = 16; off > 0; off >>= 1) sq += __shfl_down_sync(0xffffffffu, sq, off);
  if ((threadIdx.x & 31) == 0 && sq != 0.f) atomicAdd(q, sq);
}

// Epilogue shared by both kernels: the tile (staged in shared memory) into S or C, and q.
__device__ void finish_tile(const float* acc_sm, const TileCoord& tc, float* S, int64_t lds, float* C, int64_t ldc,
                            float* q, int d_in, int d_out, float sq) {
  if (tc.is_s)
    flush_tile(acc_sm, S, lds, tc.ti * TILE, d_in, tc.tj * TILE, d_in, true);
  else
    flush_tile(acc_sm, C, ldc, tc.ti * TILE, d_in, tc.tj * TILE, d_out, false);
  if (!tc.is_s && tc.ti == 0) add_q(sq, q);
}

// Tensor-core path for 16-bit inputs.
template <typename T>
__global__ void __launch_bounds__(THREADS)
stats_wmma_kernel(const T* __restrict__ x, int64_t ldx, const T* __restrict__ g, int64_t ldg,
                  const uint8_t* __restrict__ mask, float* S, int64_t lds, float* C, int64_t ldc, float* q,
                  int64_t rows, int d_in, int d_out, int64_t rows_per_split, int nt_in, int nt_out, int n_s_tiles) {
  using namespace nvcuda;
  __shared__ __align__(32) T sa[KSTEP * TILE];
  __shared__ __align__(32) T sb[KSTEP * TILE];
  __shared__ __align__(32) float acc_sm[TILE * TILE];
  TileCoord tc = tile_of(blockIdx.x, nt_in, nt_out, n_s_tiles);
  const int64_t r_begin = (int64_t)blockIdx.y * rows_per_split;
  const int64_t r_end = min(rows, r_begin + rows_per_split);
  const int warp = threadIdx.x / 32;  // warp w owns output rows [16w, 16w+16) of the tile
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[TILE / 16];
#pragma unroll
  for (int f = 0; f < TILE / 16; ++f) wmma::fill_fragment(acc[f], 0.f);
  float sq = 0.f;
  for (int64_t r0 = r_begin; r0 < r_end; r0 += KSTEP) {
    load_operands<T>(sa, sb, x, ldx, g, ldg, mask, r0, r_end, tc, d_in, d_out, &sq);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < KSTEP; k += 16) {
      // A = Xᵀ: A[m][k] = sa[k][m], i.e. column-major with leading dimension TILE.
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> a;
      wmma::load_matrix_sync(a, sa + k * TILE + warp * 16, TILE);
#pragma unroll
      for (int f = 0; f < TILE / 16; ++f) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
        wmma::load_matrix_sync(b, sb + k * TILE + f * 16, TILE);
        wmma::mma_sync(acc[f], a, b, acc[f]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int f = 0; f < TILE / 16; ++f)
    wmma::store_matrix_sync(acc_sm + warp * 16 * TILE + f * 16, acc[f], TILE, wmma::mem_row_major);
  __syncthreads();
  finish_tile(acc_sm, tc, S, lds, C, ldc, q, d_in, d_out, sq);
}

// SIMT fp32 path: each thread owns a 4 × 8 block of the 64 × 64 tile.
__global__ void __launch_bounds__(THREADS)
stats_f32_kernel(const float* __restrict__ x, int64_t ldx, const float* __restrict__ g, int64_t ldg,
                 const uint8_t* __restrict__ mask, float* S, int64_t lds, float* C, int64_t ldc, float* q,
                 int64_t rows, int d_in, int d_out, int64_t rows_per_split, int nt_in, int nt_out, int n_s_tiles) {
  __shared__ float sa[KSTEP * TILE];
  __shared__ float sb[KSTEP * TILE];
  __shared__ float acc_sm[TILE * TILE];
  TileCoord tc = tile_of(blockIdx.x, nt_in, nt_out, n_s_tiles);
  const int64_t r_begin = (int64_t)blockIdx.y * rows_per_split;
  const int64_t r_end = min(rows, r_begin + rows_per_split);
  const int tr = threadIdx.x / 8;  // 16 thread rows × 4 = 64
  const int tcn = threadIdx.x % 8; // 8 thread cols × 8 = 64
  float acc[4][8] = {};
  float sq = 0.f;
  for (int64_t r0 = r_begin; r0 < r_end; r0 += KSTEP) {
    load_operands<float>(sa, sb, x, ldx, g, ldg, mask, r0, r_end, tc, d_in, d_out, &sq);
    __syncthreads();
    for (int k = 0; k < KSTEP; ++k) {
      float av[4], bv[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = sa[k * TILE + tr * 4 + i];
#pragma unroll
      for (int j = 0; j < 8; ++j) bv[j] = sb[k * TILE + tcn * 8 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc_sm[(tr * 4 + i) * TILE + tcn * 8 + j] = acc[i][j];
  __syncthreads();
  finish_tile(acc_sm, tc, S, lds, C, ldc, q, d_in, d_out, sq);
}

}  // namespace layerprof_cuda

extern "C" int layerprof_stats_cuda(const LayerprofStatsArgs* a) {
  using namespace layerprof_cuda;
  if (a->rows <= 0) return 0;
  const int nt_in = (a->d_in + TILE - 1) / TILE;
  const int nt_out = (a->d_out + TILE - 1) / TILE;
  const int n_s = a->with_s ? nt_in * (nt_in + 1) / 2 : 0;
  const int n_c = a->with_c ? nt_in * nt_out : 0;
  const int tiles = n_s + n_c;
  if (tiles == 0) return 0;
  // Split rows so that about 4 blocks per SM exist, each with at least 4 stages of rows.
  int64_t want = (4LL * a->sms + tiles - 1) / tiles;
  int64_t max_splits = (a->rows + 4 * KSTEP - 1) / (4 * KSTEP);
  int64_t splits = want < 1 ? 1 : (want > max_splits ? max_splits : want);
  if (splits < 1 || a->deterministic) splits = 1;  // deterministic: each output element has one writer
  int64_t per = (a->rows + splits - 1) / splits;
  per = (per + KSTEP - 1) / KSTEP * KSTEP;
  splits = (a->rows + per - 1) / per;
  dim3 grid(tiles, (unsigned)splits);
  cudaStream_t stream = static_cast<cudaStream_t>(a->stream);
  switch (a->dtype) {
    case LAYERPROF_F32:
      stats_f32_kernel<<<grid, THREADS, 0, stream>>>(
          static_cast<const float*>(a->x), a->ldx, static_cast<const float*>(a->g), a->ldg, a->mask, a->S, a->lds,
          a->C, a->ldc, a->q, a->rows, a->d_in, a->d_out, per, nt_in, nt_out, n_s);
      break;
    case LAYERPROF_F16:
      stats_wmma_kernel<__half><<<grid, THREADS, 0, stream>>>(
          static_cast<const __half*>(a->x), a->ldx, static_cast<const __half*>(a->g), a->ldg, a->mask, a->S, a->lds,
          a->C, a->ldc, a->q, a->rows, a->d_in, a->d_out, per, nt_in, nt_out, n_s);
      break;
    case LAYERPROF_BF16:
      stats_wmma_kernel<__nv_bfloat16><<<grid, THREADS, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(a->x), a->ldx, static_cast<const __nv_bfloat16*>(a->g), a->ldg, a->mask,
          a->S, a->lds, a->C, a->ldc, a->q, a->rows, a->d_in, a->d_out, per, nt_in, nt_out, n_s);
      break;
    default:
      return 1;
  }
  return static_cast<int>(cudaGetLastError());
}
