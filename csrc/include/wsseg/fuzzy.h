// Fuzzy-logic building blocks of the fused constraint losses, host+device.
// LTN semantics: pi_0(x) = (1 - eps) x + eps, pi_1(x) = (1 - eps) x; see
// wsseg_fast/fuzzy.py, which the kernels are tested against.
#pragma once

#include <cmath>

#include "wsseg/common.h"

namespace wsseg {
namespace fuzzy {

constexpr double kEps = 1e-4;

template <typename T>
WSSEG_HD T pi_0(T x) {
  return T(1 - kEps) * x + T(kEps);
}

template <typename T>
WSSEG_HD T pi_1(T x) {
  return T(1 - kEps) * x;
}

// x^p with the common exponents exact and fast.
template <typename T>
WSSEG_HD T power(T x, T p) {
  if (p == T(2)) return x * x;
  if (p == T(1)) return x;
  return pow(x, p);
}

// The summand of a quantifier over truths a whose value is a^p after pi_0:
// pMean's (pi_0(a))^p, and pMeanError's (1 - pi_1(1 - a))^p = (pi_0(a))^p for
// a negated operand. `stable` off: a^p.
template <typename T>
WSSEG_HD T lifted_power(T a, T p, bool stable) {
  return power(stable ? pi_0(a) : a, p);
}

// d/da of lifted_power.
template <typename T>
WSSEG_HD T lifted_power_grad(T a, T p, bool stable) {
  const T base = stable ? pi_0(a) : a;
  const T scale = stable ? T(1 - kEps) : T(1);
  if (p == T(2)) return T(2) * base * scale;
  if (p == T(1)) return scale;
  return p * pow(base, p - T(1)) * scale;
}

// pMeanError summand of a truth s: (1 - pi_1(s))^p, and its derivative in s.
template <typename T>
WSSEG_HD T error_power(T s, T p, bool stable) {
  return power(T(1) - (stable ? pi_1(s) : s), p);
}

template <typename T>
WSSEG_HD T error_power_grad(T s, T p, bool stable) {
  const T base = T(1) - (stable ? pi_1(s) : s);
  const T scale = stable ? T(1 - kEps) : T(1);
  if (p == T(2)) return -T(2) * base * scale;
  if (p == T(1)) return -scale;
  return -p * pow(base, p - T(1)) * scale;
}

}  // namespace fuzzy
}  // namespace wsseg
