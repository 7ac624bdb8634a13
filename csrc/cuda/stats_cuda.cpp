// Torch-facing side of the CUDA backend: named input checks, then the torch-free launcher.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "../ops.h"
#include "stats_cuda.h"

namespace layerprof {
namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return LAYERPROF_F32;
    case at::kHalf: return LAYERPROF_F16;
    case at::kBFloat16: return LAYERPROF_BF16;
    default: TORCH_CHECK(false, "the cuda backend takes float32, float16 or bfloat16 inputs, got ", t);
  }
  return -1;
}

void check_acc(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == x.device(), name, " must be on ", x.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32 (the cuda backend accumulates in fp32)");
  TORCH_CHECK(t.dim() < 2 || t.stride(1) == 1, name, " must have contiguous rows");
}

void launch(at::Tensor* S, at::Tensor* C, at::Tensor* q, const at::Tensor& x_in, const at::Tensor* g_in,
            const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 2, "x must be a 2-D CUDA tensor (rows × d_in)");
  c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in.contiguous();
  at::Tensor g;
  if (g_in != nullptr) {
    TORCH_CHECK(g_in->is_cuda() && g_in->dim() == 2 && g_in->size(0) == x.size(0),
                "g must be a 2-D CUDA tensor with the rows of x");
    TORCH_CHECK(g_in->scalar_type() == x.scalar_type(), "x and g must share a dtype");
    g = g_in->contiguous();
  }
  at::Tensor m;
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 1 && mask->size(0) == x.size(0),
                "mask must be a bool tensor of shape (rows,)");
    m = mask->to(x.device()).contiguous().view(at::kByte);
  }
  LayerprofStatsArgs a{};
  a.x = x.data_ptr();
  a.ldx = x.stride(0);
  a.g = g.defined() ? g.data_ptr() : nullptr;
  a.ldg = g.defined() ? g.stride(0) : 0;
  a.mask = m.defined() ? m.data_ptr<uint8_t>() : nullptr;
  a.S = S ? S->data_ptr<float>() : nullptr;
  a.lds = S ? S->stride(0) : 0;
  a.C = C ? C->data_ptr<float>() : nullptr;
  a.ldc = C ? C->stride(0) : 0;
  // Under torch.use_deterministic_algorithms(True): one block per tile, and ‖G‖² by torch's own
  // (deterministic) reduction below instead of the kernel's atomics.
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  a.deterministic = deterministic ? 1 : 0;
  a.q = (q && !deterministic) ? q->data_ptr<float>() : nullptr;
  a.rows = x.size(0);
  a.d_in = static_cast<int>(x.size(1));
  a.d_out = g.defined() ? static_cast<int>(g.size(1)) : 0;
  a.dtype = dtype_code(x.scalar_type());
  a.with_s = S != nullptr;
  a.with_c = C != nullptr;
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.device().index());
  a.sms = sms > 0 ? sms : 1;
  a.stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  int err = layerprof_stats_cuda(&a);
  TORCH_CHECK(err == 0, "layerprof stats kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
  if (deterministic && q != nullptr && g.defined()) {
    at::Tensor rows = m.defined() ? g.index({m.view(at::kBool)}) : g;
    q->add_(rows.to(at::kFloat).pow(2).sum());
  }
}

}  // namespace

void stats_update_cuda(at::Tensor S, at::Tensor C, at::Tensor q, const at::Tensor& x, const at::Tensor& g,
                       const c10::optional<at::Tensor>& mask) {
  check_acc(S, x, "S");
  check_acc(C, x, "C");
  check_acc(q, x, "q");
  TORCH_CHECK(S.size(0) == x.size(1) && S.size(1) == x.size(1), "S must be (d_in, d_in)");
  TORCH_CHECK(C.size(0) == x.size(1) && C.size(1) == g.size(1), "C must be (d_in, d_out)");
  launch(&S, &C, &q, x, &g, mask);
}

void gram_update_cuda(at::Tensor S, const at::Tensor& x, const c10::optional<at::Tensor>& mask) {
  check_acc(S, x, "S");
  TORCH_CHECK(S.size(0) == x.size(1) && S.size(1) == x.size(1), "S must be (d_in, d_in)");
  launch(&S, nullptr, nullptr, x, nullptr, mask);
}

void cross_update_cuda(at::Tensor C, const at::Tensor& x, const at::Tensor& g, const c10::optional<at::Tensor>& mask) {
  check_acc(C, x, "C");
  TORCH_CHECK(C.size(0) == x.size(1) && C.size(1) == g.size(1), "C must be (d_in, d_out)");
  at::Tensor q = at::zeros({}, C.options());  // the kernel's ‖G‖² side product, discarded
  launch(nullptr, &C, &q, x, &g, mask);
}

void sketch_update_cuda(at::Tensor C_sketch, const at::Tensor& x, const at::Tensor& g, const at::Tensor& omega,
                        const c10::optional<at::Tensor>& mask) {
  // GΩ (rows × k) in the input dtype by cuBLAS, then the cross kernel.
  at::Tensor go = at::mm(g, omega.to(g.scalar_type()));
  cross_update_cuda(C_sketch, x, go, mask);
}

}  // namespace layerprof
