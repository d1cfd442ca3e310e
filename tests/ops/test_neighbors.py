import pytest
import torch

from wsseg_fast.ops import dilated_offsets, neighbor_offsets
from wsseg_fast.ops.neighbors import shifted


def test_disc_offsets():
    offsets = neighbor_offsets(5)
    assert len(offsets) == 69  # PSA/IRN's radius-5 neighbourhood
    assert ((offsets**2).sum(1) < 25).all()
    assert [0, 0] in offsets.tolist()
    assert offsets.tolist() == sorted(offsets.tolist())  # dy, then dx ascending
    assert neighbor_offsets(1).tolist() == [[0, 0]]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="radius"):
            neighbor_offsets(bad)


def test_dilated_offsets():
    assert dilated_offsets().tolist() == [[-2, -2], [-2, 0], [-2, 2], [0, -2], [0, 2], [2, -2], [2, 0], [2, 2]]
    assert len(dilated_offsets(3, 1, include_center=True)) == 9
    with pytest.raises(ValueError, match="kernel_size"):
        dilated_offsets(4)


def test_shifted():
    x = torch.arange(12.0).reshape(1, 3, 4)
    out, valid = shifted(x, 1, -1, fill=-1)
    assert out[0, 0, 1] == x[0, 1, 0] and out[0, 0, 0] == -1 and not valid[0, 0] and not valid[2, 3]
    out, valid = shifted(x, 5, 0)
    assert not valid.any() and (out == 0).all()
