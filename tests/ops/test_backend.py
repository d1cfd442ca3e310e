"""Backend choice: argument, environment variable, reasons, and life without _C."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from wsseg_fast.ops import BackendUnavailableError, available_backends, batch_linear_assignment
from wsseg_fast.ops._backend import OpSpec, choose
from wsseg_fast.ops.linear_assignment import SPEC


def test_auto_prefers_the_compiled_cpu_kernel():
    assert choose(SPEC, "auto", torch.device("cpu")) == "cpu"


def test_environment_variable_replaces_auto(monkeypatch):
    monkeypatch.setenv("WSSEG_FAST_BACKEND", "torch")
    assert choose(SPEC, "auto", torch.device("cpu")) == "torch"
    assert choose(SPEC, "cpu", torch.device("cpu")) == "cpu"  # an explicit argument wins
    monkeypatch.setenv("WSSEG_FAST_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match=r"backend 'cuda' \(\$WSSEG_FAST_BACKEND\) cannot run"):
        batch_linear_assignment(torch.rand(1, 2, 2))
    monkeypatch.setenv("WSSEG_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match=r"\$WSSEG_FAST_BACKEND must be one of"):
        batch_linear_assignment(torch.rand(1, 2, 2))


def test_reasons_are_reported():
    table = available_backends("batch_linear_assignment", "cpu")
    assert table["torch"] == "available" and table["cpu"] == "available"
    assert "CUDA tensors" in table["cuda"]
    with pytest.raises(ValueError, match="unknown op"):
        available_backends("no_such_op")
    spec = OpSpec("only_torch", backends=("torch",))
    assert "has no 'cpu' implementation" in spec.why_unavailable("cpu", torch.device("cpu"))
    assert choose(spec, "auto", torch.device("cpu")) == "torch"


def test_without_the_extension_a_warning_and_the_reference_still_work():
    script = textwrap.dedent(
        """
        import sys, warnings
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "wsseg_fast._C":
                    raise ImportError("simulated: extension not built")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch
            from wsseg_fast.ops import batch_linear_assignment, available_backends
        assert any("wsseg_fast._C failed to load" in str(w.message) for w in caught), caught
        print(batch_linear_assignment(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])).tolist())
        print(available_backends("batch_linear_assignment")["cpu"])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[[1, 0]]"
    assert "failed to load" in lines[1] and "simulated" in lines[1]
