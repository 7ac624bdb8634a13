// Declarations of layerprof's native ops, shared by the binding and the implementations.
// Contracts: layerprof/stats/ops/stats.py (S: upper triangle only; accumulators fp32, or fp64 on CPU).
#pragma once
#include <torch/extension.h>

namespace layerprof {

void gram_update(at::Tensor S, const at::Tensor& x, const c10::optional<at::Tensor>& mask);
void cross_update(at::Tensor C, const at::Tensor& x, const at::Tensor& g, const c10::optional<at::Tensor>& mask);
void stats_update(at::Tensor S, at::Tensor C, at::Tensor q, const at::Tensor& x, const at::Tensor& g,
                  const c10::optional<at::Tensor>& mask);
void sketch_update(at::Tensor C_sketch, const at::Tensor& x, const at::Tensor& g, const at::Tensor& omega,
                   const c10::optional<at::Tensor>& mask);

#ifdef WITH_CUDA
void gram_update_cuda(at::Tensor S, const at::Tensor& x, const c10::optional<at::Tensor>& mask);
void cross_update_cuda(at::Tensor C, const at::Tensor& x, const at::Tensor& g, const c10::optional<at::Tensor>& mask);
void stats_update_cuda(at::Tensor S, at::Tensor C, at::Tensor q, const at::Tensor& x, const at::Tensor& g,
                       const c10::optional<at::Tensor>& mask);
void sketch_update_cuda(at::Tensor C_sketch, const at::Tensor& x, const at::Tensor& g, const at::Tensor& omega,
                        const c10::optional<at::Tensor>& mask);
#endif

}  // namespace layerprof
