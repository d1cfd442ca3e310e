"""Build of the one compiled extension, ``wsseg_fast._C``.

CPU kernels (C++ with OpenMP; the sources are C++17, compiled in the standard
torch's headers require -- C++20 for torch 2.10+) are always built. CUDA kernels are built whenever a
CUDA toolkit and a CUDA build of torch are present -- a visible GPU is never
required -- or when ``WSSEG_FAST_FORCE_CUDA=1``; ``WSSEG_FAST_SKIP_CUDA_BUILD=1``
turns them off. ``TORCH_CUDA_ARCH_LIST`` defaults to ``8.0;9.0+PTX``.

Build with ``pip install --no-build-isolation -e .`` after the requirements, so
the extension is compiled against the torch that is installed.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


# torch.utils.cpp_extension reads CUDA_HOME once, at import: settle it first.
if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    if _flag("WSSEG_FAST_SKIP_CUDA_BUILD"):
        return False, "WSSEG_FAST_SKIP_CUDA_BUILD=1"
    if _flag("WSSEG_FAST_FORCE_CUDA"):
        return True, "WSSEG_FAST_FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return False, "no CUDA toolkit (nvcc) found; set CUDA_HOME"
    return True, f"torch CUDA {torch.version.cuda}, toolkit at {CUDA_HOME}"


def _pip_cuda_includes():
    """Headers that pip's nvidia-* wheels ship (cuda 13 keeps some only there)."""
    dirs = []
    for base in sys.path:
        dirs += glob.glob(os.path.join(base, "nvidia", "cu[0-9]*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def _extension():
    with_cuda, why = _want_cuda()
    print(f"wsseg_fast: CUDA kernels {'ON' if with_cuda else 'OFF'} ({why})", flush=True)
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx = ["-O3", "-fopenmp"]
    extra = {"cxx": cxx}
    kwargs = dict(
        include_dirs=include_dirs,
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    if not with_cuda:
        return CppExtension("wsseg_fast._C", sources, extra_compile_args=extra, **kwargs)
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    include_dirs += _pip_cuda_includes()
    extra["cxx"] = cxx + ["-DWSSEG_FAST_WITH_CUDA"]
    extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-DWSSEG_FAST_WITH_CUDA"]
    return CUDAExtension("wsseg_fast._C", sources, extra_compile_args=extra, **kwargs)


setup(
    packages=find_packages(include=["wsseg_fast", "wsseg_fast.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
