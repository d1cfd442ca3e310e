"""The embedding cache: keys, round trips, corruption, pruning, concurrent writers."""

import multiprocessing as mp
import os
import time

import numpy as np
import pytest
import torch

from wsseg_fast.cache import CorruptEntryWarning, EmbeddingCache, pixels_digest
from wsseg_fast.sam import Embedding

IDENTITY = {"model": "tiny", "weights": "w1", "backend": "torch", "precision": "fp32", "preprocessing": "p1"}


def _embedding(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Embedding(torch.randn(256, 16, 16, generator=g), (120, 200), (154, 256))


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_round_trip(tmp_path, dtype):
    cache = EmbeddingCache(tmp_path, dtype=dtype)
    emb = _embedding()
    key = cache.key("pixels", IDENTITY)
    assert cache.get(key) is None
    cache.put(key, emb)
    back = cache.get(key)
    assert back.original_size == (120, 200) and back.input_size == (154, 256)
    assert back.tensor.dtype == (torch.float16 if dtype == "fp16" else torch.float32)
    torch.testing.assert_close(
        back.tensor.float(), emb.tensor, atol=2e-3 if dtype == "fp16" else 0, rtol=1e-3 if dtype == "fp16" else 0
    )
    assert cache.info()["entries"] == 1 and not cache.info()["temporary_files"]


def test_key_covers_pixels_and_encoder_identity(tmp_path):
    cache = EmbeddingCache(tmp_path)
    image = np.zeros((4, 5, 3), np.uint8)
    base = cache.key(pixels_digest(image), IDENTITY)
    changed = image.copy()
    changed[0, 0, 0] = 1
    assert cache.key(pixels_digest(changed), IDENTITY) != base
    assert pixels_digest(image.reshape(5, 4, 3)) != pixels_digest(image)  # same bytes, other shape
    for field in IDENTITY:
        assert cache.key(pixels_digest(image), {**IDENTITY, field: "other"}) != base, field
    assert EmbeddingCache(tmp_path, dtype="fp32").key(pixels_digest(image), IDENTITY) != base


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_entry_is_reported_dropped_and_missed(tmp_path, damage):
    cache = EmbeddingCache(tmp_path)
    key = cache.key("x", IDENTITY)
    path = cache.put(key, _embedding())
    data = bytearray(open(path, "rb").read())
    if damage == "flip":
        data[-100] ^= 0xFF  # inside the tensor bytes
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"\x00" * 64)
    open(path, "wb").write(bytes(data))
    with pytest.warns(CorruptEntryWarning, match="dropped corrupt entry"):
        assert cache.get(key) is None
    assert not os.path.exists(path)


def test_verify_reports_and_removes(tmp_path):
    cache = EmbeddingCache(tmp_path)
    paths = [cache.put(cache.key(str(i), IDENTITY), _embedding(i)) for i in range(3)]
    with open(paths[1], "r+b") as f:
        f.seek(-10, 2)
        f.write(b"0123456789")
    kept = cache.verify(remove=False)
    assert kept["ok"] == 2 and len(kept["corrupt"]) == 1 and "checksum" in kept["corrupt"][0]["problem"]
    assert os.path.exists(paths[1])
    assert len(cache.verify()["corrupt"]) == 1 and not os.path.exists(paths[1])
    assert cache.verify() == {"ok": 2, "corrupt": [], "removed": True}


def test_prune_removes_least_recently_used_first(tmp_path):
    cache = EmbeddingCache(tmp_path)
    keys = [cache.key(str(i), IDENTITY) for i in range(4)]
    now = time.time()
    for i, key in enumerate(keys):
        os.utime(cache.put(key, _embedding(i)), (now - 1000 + i, now - 1000 + i))
    cache.get(keys[0])  # a read makes entry 0 the most recent
    size = os.path.getsize(cache.path(keys[0]))
    result = cache.prune(max_bytes=2 * size)
    assert result["removed"] == 2 and result["bytes"] == 2 * size
    assert [k for k in keys if os.path.exists(cache.path(k))] == [keys[0], keys[3]]
    assert cache.prune(older_than=500)["removed"] == 1  # entry 3 was last used 997 s ago
    stale = os.path.join(os.path.dirname(cache.path(keys[0])), ".tmp-dead")
    open(stale, "wb").write(b"half an entry")
    os.utime(stale, (now - 7200, now - 7200))
    cache.prune(max_bytes=10**9)
    assert not os.path.exists(stale)


def _writer(root, worker, rounds):
    cache = EmbeddingCache(root)
    for r in range(rounds):
        for i in range(3):  # the same keys as the other writer, and one of its own
            cache.put(cache.key(f"shared{i}", IDENTITY), _embedding(i))
            got = cache.get(cache.key(f"shared{(i + 1) % 3}", IDENTITY))
            assert got is None or torch.equal(got.tensor, _embedding((i + 1) % 3).tensor.half())
        cache.put(cache.key(f"own{worker}-{r}", IDENTITY), _embedding(100 + worker))


def test_two_processes_writing_corrupt_nothing(tmp_path):
    ctx = mp.get_context("fork")  # separate processes; fork spares re-importing torch
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 15)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = EmbeddingCache(tmp_path)
    assert cache.verify() == {"ok": 3 + 2 * 15, "corrupt": [], "removed": True}
    assert cache.info()["temporary_files"] == 0


def test_file_digest_is_remembered(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    f = tmp_path / "weights.bin"
    f.write_bytes(b"a" * 1000)
    d1 = cache.file_digest(f)
    assert cache.file_digest(f) == d1
    f.write_bytes(b"b" * 1001)  # new size/mtime -> recomputed
    assert cache.file_digest(f) != d1
