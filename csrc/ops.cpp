// Every operator schema of wsseg_fast, once. Kernels register per dispatch key
// in csrc/cpu/ (CPU) and csrc/cuda/ (CUDA); Python adds fake (meta) kernels,
// autograd formulas and the Triton implementations in wsseg_fast/ops/.
#include <Python.h>
#include <torch/library.h>

// Importing wsseg_fast._C only has to load this library: the static
// registrations below do the rest. No Python API is used, so one build serves
// every CPython >= 3.10 (py_limited_api).
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(wsseg_fast, m) {
  // cost [B, W, T] float32/float64/int64 -> [B, W] int64, the column of each
  // row or -1. check=false reports a bad problem as an all -1 row instead of
  // raising, which keeps the CUDA path free of host synchronisation.
  m.def("batch_linear_assignment(Tensor cost, bool maximize=False, bool check=True) -> Tensor");

  // --- sparse affinity random walk (issue 4) ---
  // features [B, D, H, W] float32/float64 -> [B, K, H, W], K = |disc(radius)|:
  // exp(-mean_d dist) to each neighbour, 0 outside the image.
  m.def("local_affinity(Tensor features, int radius, bool squared) -> Tensor");
  // x [B, C, H, W], weights [B, K, H, W] (row-normalised transition D^-1 A^beta)
  // -> x after `steps` steps of x(i) <- sum_k weights[k, i] x(i + off_k).
  m.def("random_walk(Tensor x, Tensor weights, int radius, int steps) -> Tensor");
  // (grad_x, grad_weights) of random_walk; recomputes the walk from checkpoints.
  m.def("random_walk_backward(Tensor grad, Tensor x, Tensor weights, int radius, int steps) -> (Tensor, Tensor)");
}
