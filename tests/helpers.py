"""Shared test helpers: which backends run here, and Triton GPU compilation."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

import wsseg_fast
from wsseg_fast.ops import OP_SPECS


def device_of(backend: str) -> str:
    """Where a backend's test tensors live: CUDA for 'cuda' (and 'triton' when a GPU is present)."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def backends_here(op: str) -> list:
    """pytest params: every backend of `op`, skipped with the reason when it cannot run here."""
    params = []
    spec = OP_SPECS[op]
    for backend in spec.backends:
        reason = spec.why_unavailable(backend, torch.device(device_of(backend)))
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        if backend == "triton":
            marks.append(pytest.mark.triton)
        params.append(pytest.param(backend, id=backend, marks=marks))
    return params


def skip_unless_available(op: str, backend: str) -> None:
    """Skip the calling test, with the reason, when `backend` cannot run `op` here."""
    reason = OP_SPECS[op].why_unavailable(backend, torch.device(device_of(backend)))
    if reason:
        pytest.skip(reason)


_COMPILE = r"""
import importlib, pickle, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
module, kernel, signature, variants, capabilities = pickle.load(sys.stdin.buffer)
fn = getattr(importlib.import_module(module), kernel)
sizes = []
for constexprs in variants:
    sig = dict(signature, **{name: "constexpr" for name in constexprs})
    for cc in capabilities:
        source = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", cc, 32))
        sizes.append(len(compiled.asm["cubin"]))
print(sizes)
"""


def compile_triton_for_gpu(module: str, kernel: str, signature: dict, variants: list, capabilities=(80, 90)) -> list:
    """Compile a Triton kernel to cubins for NVIDIA GPUs of the given compute
    capabilities, without a GPU: the whole compiler pipeline, which the
    interpreter skips (type errors in loops and branches show up only here).
    Runs in a subprocess because the interpreter replaces @triton.jit here.
    Returns the cubin sizes."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE],
        input=pickle.dumps((module, kernel, signature, variants, list(capabilities))),
        capture_output=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        raise AssertionError(f"Triton compilation of {module}.{kernel} failed:\n{proc.stderr.decode()[-4000:]}")
    return eval(proc.stdout.decode().strip().splitlines()[-1])


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Autouse wherever a conftest imports it: prompt-sized tensors gain nothing from
    threads, and on a shared 2-core machine OpenMP's spinning threads made them up to
    10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchrun_two_cpu_processes(script, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 script args`` with one OMP thread per process and
    this checkout on PYTHONPATH (the script may live in a temporary directory, wsseg_fast uninstalled)."""
    root = os.path.dirname(os.path.dirname(wsseg_fast.__file__))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=root,
    )
