// The one binding file of layerprof._C: every native op, CPU and (when built) CUDA.
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "layerprof native accumulation ops; contracts in layerprof/ops/stats.py";
  m.def("gram_update", &layerprof::gram_update, "S += XᵀX (upper triangle), CPU", py::arg("S"), py::arg("x"),
        py::arg("mask") = py::none());
  m.def("cross_update", &layerprof::cross_update, "C += XᵀG, CPU", py::arg("C"), py::arg("x"), py::arg("g"),
        py::arg("mask") = py::none());
  m.def("stats_update", &layerprof::stats_update, "S += XᵀX (upper), C += XᵀG, q += ‖G‖², CPU", py::arg("S"),
        py::arg("C"), py::arg("q"), py::arg("x"), py::arg("g"), py::arg("mask") = py::none());
  m.def("sketch_update", &layerprof::sketch_update, "CΩ += Xᵀ(GΩ), CPU", py::arg("C_sketch"), py::arg("x"),
        py::arg("g"), py::arg("omega"), py::arg("mask") = py::none());
#ifdef WITH_CUDA
  m.def("gram_update_cuda", &layerprof::gram_update_cuda, "S += XᵀX (upper triangle), CUDA", py::arg("S"),
        py::arg("x"), py::arg("mask") = py::none());
  m.def("cross_update_cuda", &layerprof::cross_update_cuda, "C += XᵀG, CUDA", py::arg("C"), py::arg("x"),
        py::arg("g"), py::arg("mask") = py::none());
  m.def("stats_update_cuda", &layerprof::stats_update_cuda, "S += XᵀX (upper), C += XᵀG, q += ‖G‖², CUDA",
        py::arg("S"), py::arg("C"), py::arg("q"), py::arg("x"), py::arg("g"), py::arg("mask") = py::none());
  m.def("sketch_update_cuda", &layerprof::sketch_update_cuda, "CΩ += Xᵀ(GΩ), CUDA", py::arg("C_sketch"),
        py::arg("x"), py::arg("g"), py::arg("omega"), py::arg("mask") = py::none());
#endif
}
