"""The wsseg_fast.ops package: op modules load on first use, and an exported name is its
function even where a module shares it (ops/slic.py defines slic), whatever was imported
first."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import wsseg_fast

ROOT = Path(wsseg_fast.__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent(
    """
    import importlib, sys, types
    import wsseg_fast.ops as ops
    loaded = [m for m in sys.modules if m.startswith("wsseg_fast.ops.") and m != "wsseg_fast.ops._backend"]
    assert loaded == [], loaded  # nothing but the backend choice until an op is used
    modules = {name: f"wsseg_fast.ops.{module}" for name, module in ops._EXPORTS.items()}
    if sys.argv[1] == "modules first":
        for module in modules.values():
            importlib.import_module(module)
        from wsseg_fast.ops.slic import SPEC  # a submodule's own names stay reachable
        assert SPEC.name == "slic"
    from wsseg_fast.ops import random_walk, slic, superpixel_pool
    for module in modules.values():
        importlib.import_module(module)
    for name, module in modules.items():
        value = getattr(ops, name)
        assert not isinstance(value, types.ModuleType), (name, value)
        assert value is getattr(sys.modules[module], name), name
    assert (slic, random_walk, superpixel_pool) == (ops.slic, ops.random_walk, ops.superpixel_pool)
    print("ok")
    """
)


@pytest.mark.parametrize("order", ["modules first", "functions first"])
def test_exported_names_are_the_functions(order):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the kernels are not needed here
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, order], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
