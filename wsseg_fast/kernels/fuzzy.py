"""Fuzzy-logic helpers shared by the Triton constraint kernels (the Triton twin of
``csrc/include/wsseg/fuzzy.h``): the summands of LTN's quantifiers and their derivatives."""

from __future__ import annotations

import triton
import triton.language as tl

# LTN's eps = 1e-4, written out: pi_0(x) = 0.9999 x + 0.0001, pi_1(x) = 0.9999 x.
#
# A NaN operand gives a NaN, as pow does in the C++ cores: the tests compare the loss of a NaN
# input on every backend. Hence `x <= 0` (false for NaN) picks the 0, and tl.maximum propagates
# NaN (its default, fmax, would turn NaN into the 1e-30 floor).


@triton.jit
def _floored(x):
    return tl.maximum(x, 1e-30, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def power(x, p, P_IS_2: tl.constexpr):
    if P_IS_2:
        return x * x
    return tl.where(x <= 0, 0.0, tl.exp2(p * tl.log2(_floored(x))))


@triton.jit
def power_grad(x, p, P_IS_2: tl.constexpr):
    """d/dx x^p."""
    if P_IS_2:
        return 2.0 * x
    return p * tl.exp2((p - 1.0) * tl.log2(_floored(x)))


@triton.jit
def lifted_power(a, p, STABLE: tl.constexpr, P_IS_2: tl.constexpr):
    """pi_0(a)^p (a^p when not stable): pMean's summand, and pMeanError's of a negated operand."""
    if STABLE:
        a = a * 0.9999 + 0.0001
    return power(a, p, P_IS_2)


@triton.jit
def lifted_power_grad(a, p, STABLE: tl.constexpr, P_IS_2: tl.constexpr):
    if STABLE:
        return power_grad(a * 0.9999 + 0.0001, p, P_IS_2) * 0.9999
    return power_grad(a, p, P_IS_2)


@triton.jit
def error_power(s, p, STABLE: tl.constexpr, P_IS_2: tl.constexpr):
    """(1 - pi_1(s))^p: pMeanError's summand of a truth s."""
    if STABLE:
        s = s * 0.9999
    return power(1.0 - s, p, P_IS_2)


@triton.jit
def error_power_grad(s, p, STABLE: tl.constexpr, P_IS_2: tl.constexpr):
    if STABLE:
        return -power_grad(1.0 - s * 0.9999, p, P_IS_2) * 0.9999
    return -power_grad(1.0 - s, p, P_IS_2)
