"""`wsseg-fast cache info|verify|prune`."""

import os

import torch

from wsseg_fast.cache import EmbeddingCache
from wsseg_fast.cli import main
from wsseg_fast.sam import Embedding

IDENTITY = {"model": "tiny", "weights": "w", "backend": "torch", "precision": "fp32", "preprocessing": "p"}


def _fill(root, n):
    cache = EmbeddingCache(root)
    return [
        cache.put(cache.key(str(i), IDENTITY), Embedding(torch.full((256, 16, 16), float(i)), (10, 10), (256, 256)))
        for i in range(n)
    ]


def test_info_verify_prune(tmp_path, capsys):
    paths = _fill(tmp_path, 3)
    assert main(["cache", "info", "--cache", str(tmp_path)]) == 0
    assert "3 embeddings" in capsys.readouterr().out
    with open(paths[0], "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x7f")
    assert main(["cache", "verify", "--cache", str(tmp_path), "--keep-corrupt"]) == 1
    out = capsys.readouterr().out
    assert "checksum mismatch" in out and "2 entries ok, 1 corrupt" in out and os.path.exists(paths[0])
    assert main(["cache", "verify", "--cache", str(tmp_path)]) == 1
    assert not os.path.exists(paths[0])
    assert main(["cache", "verify", "--cache", str(tmp_path)]) == 0
    size = os.path.getsize(paths[1])
    assert main(["cache", "prune", "--cache", str(tmp_path), "--max-size", str(size)]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert main(["cache", "prune", "--cache", str(tmp_path)]) == 2  # needs a limit
    assert main(["cache", "info", "--cache", str(tmp_path / "none")]) == 2
    assert "no cache at" in capsys.readouterr().err
