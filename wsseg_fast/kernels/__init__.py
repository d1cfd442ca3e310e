"""Triton kernels of wsseg_fast.

Each module holds a kernel and its launcher registered with
``torch.library.triton_op`` (so ``torch.compile`` sees it); the public ops in
``wsseg_fast.ops`` choose between backends.
"""
