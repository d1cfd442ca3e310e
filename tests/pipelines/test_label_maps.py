import numpy as np
import pytest
import torch
from PIL import Image

from wsseg_fast.data.labels import palette
from wsseg_fast.pipelines.label_maps import list_images, read_image, read_label, write_label


def test_palette_png_round_trip_keeps_indices(tmp_path):
    labels = torch.tensor([[0, 1, 2], [21, 255, 7]])
    write_label(tmp_path / "a.png", labels)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "P"
        assert im.getpalette() == palette()  # the project's one palette (wsseg_fast.data.labels)
    assert torch.equal(read_label(tmp_path / "a.png"), labels)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # the atomic write leaves nothing behind


def test_grayscale_labels_read_and_colour_labels_rejected(tmp_path):
    Image.fromarray(np.array([[0, 3], [255, 1]], np.uint8)).save(tmp_path / "g.png")
    assert read_label(tmp_path / "g.png").tolist() == [[0, 3], [255, 1]]
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="mode 'RGB'"):
        read_label(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="labels"):
        write_label(tmp_path / "x.png", torch.tensor([[256]]))


def test_list_images(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        list_images(tmp_path / "none")
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path)
    Image.fromarray(np.full((3, 4), 9, np.uint8)).save(tmp_path / "b.jpg")
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.jpg"]
    assert read_image(tmp_path / "b.jpg").shape == (3, 4, 3)  # grayscale -> RGB
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="same stem"):
        list_images(tmp_path)
