// The one binding file of layerprof._C. Every native op is declared once, as a torch.library
// schema in the `layerprof` namespace, and its kernels are registered here: the CPU kernel for
// the CPU dispatch key and, when built WITH_CUDA, the CUDA kernel for the CUDA key. Python calls
// torch.ops.layerprof.<op>, the dispatcher picks the kernel by the tensors' device, and
// torch.compile / torch.library.opcheck see real ops (fake implementations: layerprof/stats/ops/library.py).
// Contracts: layerprof/stats/ops/stats.py (S: upper triangle only; accumulators fp32, or fp64 on CPU).
#include "ops.h"

TORCH_LIBRARY(layerprof, m) {
  m.def("gram_update(Tensor(a!) S, Tensor x, Tensor? mask=None) -> ()");
  m.def("cross_update(Tensor(a!) C, Tensor x, Tensor g, Tensor? mask=None) -> ()");
  m.def("stats_update(Tensor(a!) S, Tensor(b!) C, Tensor(c!) q, Tensor x, Tensor g, Tensor? mask=None) -> ()");
  m.def("sketch_update(Tensor(a!) C_sketch, Tensor x, Tensor g, Tensor omega, Tensor? mask=None) -> ()");
}

TORCH_LIBRARY_IMPL(layerprof, CPU, m) {
  m.impl("gram_update", &layerprof::gram_update);
  m.impl("cross_update", &layerprof::cross_update);
  m.impl("stats_update", &layerprof::stats_update);
  m.impl("sketch_update", &layerprof::sketch_update);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(layerprof, CUDA, m) {
  m.impl("gram_update", &layerprof::gram_update_cuda);
  m.impl("cross_update", &layerprof::cross_update_cuda);
  m.impl("stats_update", &layerprof::stats_update_cuda);
  m.impl("sketch_update", &layerprof::sketch_update_cuda);
}
#endif

// Importing the module loads the library above; the module itself only says what was built.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "layerprof native accumulation ops: torch.ops.layerprof.{gram,cross,stats,sketch}_update";
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
