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

  // --- sparse affinity random walk ---
  // features [B, D, H, W] float32/float64 -> [B, K, H, W], K = |disc(radius)|:
  // exp(-mean_d dist) to each neighbour, 0 outside the image.
  m.def("local_affinity(Tensor features, int radius, bool squared) -> Tensor");
  // x [B, C, H, W], weights [B, K, H, W] (row-normalised transition D^-1 A^beta)
  // -> x after `steps` steps of x(i) <- sum_k weights[k, i] x(i + off_k).
  m.def("random_walk(Tensor x, Tensor weights, int radius, int steps) -> Tensor");
  // (grad_x, grad_weights) of random_walk; recomputes the walk from checkpoints.
  m.def("random_walk_backward(Tensor grad, Tensor x, Tensor weights, int radius, int steps) -> (Tensor, Tensor)");
}

// ---- Fuzzy-logic constraint losses (wsseg_fast/ops/box_constraint.py,
// ---- wsseg_fast/ops/pairwise_constraint.py). Each loss is a fused "stats" op
// ---- (every quantifier's sum in one pass) and a "grad" op (the pixel gradient
// ---- of those sums in one pass); the few-number epilogue runs in PyTorch.
TORCH_LIBRARY_FRAGMENT(wsseg_fast, m) {
  // probs [B, C, H, W] float32/64, boxes [B, N, 4] float64, labels [B, N] int64 ->
  // lines [B, N, H + W] (per box row/column sums of pi_0(p)^p_exists),
  // outside [B, N] (sum of pi_0(p)^p_forall outside the class's boxes, at the
  // class's first box), outside_count [B, N].
  m.def(
      "box_constraint_stats(Tensor probs, Tensor boxes, Tensor labels, float p_forall, float p_exists, "
      "bool stable) -> (Tensor, Tensor, Tensor)");
  m.def(
      "box_constraint_grad(Tensor grad_lines, Tensor grad_outside, Tensor probs, Tensor boxes, Tensor labels, "
      "float p_forall, float p_exists, bool stable) -> Tensor");
  // probs [B, C, H, W], lab [B, 3, H, W] float32, offsets [K, 2] int64 ->
  // sums [B, C] of (1 - pi_1(same))^p_forall over similar neighbours, counts [B].
  m.def(
      "pairwise_constraint_stats(Tensor probs, Tensor lab, Tensor offsets, float threshold, float p_forall, "
      "bool stable) -> (Tensor, Tensor)");
  m.def(
      "pairwise_constraint_grad(Tensor grad_sums, Tensor probs, Tensor lab, Tensor offsets, float threshold, "
      "float p_forall, bool stable) -> Tensor");
}

// --- SLIC superpixels and superpixel pooling ---
TORCH_LIBRARY_FRAGMENT(wsseg_fast, m) {
  // images [B, 3, H, W] uint8 or float32 RGB in [0, 1], mask [B, H, W] bool or None
  // -> [B, H, W] int32 labels 0..K_b-1 in raster order of first pixel, -1 outside the mask.
  m.def(
      "slic(Tensor images, Tensor? mask, int n_segments, float compactness, int max_iter, "
      "bool enforce_connectivity, float min_size_factor, float max_size_factor) -> Tensor");
  // x [B, C, H, W] float32/float64, labels [B, H, W] int32/int64 (-1: none), reduce 'mean'|'max'
  // -> (pooled [B, C, H, W], argmax [B, C, K] int64 for 'max' (first arg-max pixel, -1 for an empty
  // superpixel), [0] for 'mean'). K = max label + 1.
  m.def("superpixel_pool(Tensor x, Tensor labels, str reduce) -> (Tensor, Tensor)");
  // grad [B, C, H, W], labels, argmax of the forward -> grad_x: each superpixel's summed grad at its arg-max.
  m.def("superpixel_pool_max_backward(Tensor grad, Tensor labels, Tensor argmax) -> Tensor");
}
