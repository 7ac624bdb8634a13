// The C interface between the torch-free CUDA kernels (stats.cu) and the torch-facing
// wrapper (stats_cuda.cpp). Plain C types only, so stats.cu compiles with bare nvcc.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum LayerprofDtype { LAYERPROF_F32 = 0, LAYERPROF_F16 = 1, LAYERPROF_BF16 = 2 };

typedef struct {
  const void* x;       // rows × d_in, row-major, leading dimension ldx
  int64_t ldx;
  const void* g;       // rows × d_out, row-major, leading dimension ldg (may be null when with_c == 0)
  int64_t ldg;
  const uint8_t* mask; // rows bytes, nonzero = keep; null = keep all
  float* S;            // d_in × d_in, upper triangle written
  int64_t lds;
  float* C;            // d_in × d_out
  int64_t ldc;
  float* q;            // scalar
  int64_t rows;
  int d_in;
  int d_out;
  int dtype;           // LayerprofDtype of x and g
  int with_s;
  int with_c;
  int sms;             // multiprocessor count, for the row split
  int deterministic;   // 1: one block per tile (no split over rows) and q left to the caller: every sum in a
                       // fixed order, bitwise reproducible; 0: split-K over rows with float atomics (faster
                       // at small d; the order of the atomic adds varies from run to run)
  void* stream;        // cudaStream_t
} LayerprofStatsArgs;

// Returns 0 on success, else a cudaError_t (or 1 for an unsupported dtype).
int layerprof_stats_cuda(const LayerprofStatsArgs* args);

#ifdef __cplusplus
}
#endif
