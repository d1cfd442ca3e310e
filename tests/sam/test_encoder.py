"""Image-encoder backends against eager PyTorch (tiny encoder)."""

import os

import numpy as np
import pytest
import torch

from wsseg_fast.cache import EmbeddingCache
from wsseg_fast.sam import EncoderBackendError, ImageEncoderRunner, SamEngine, build_image_encoder, export_onnx


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    enc = build_image_encoder("tiny")
    with torch.no_grad():  # non-zero position terms, so the export is really checked
        enc.pos_embed.normal_(0, 0.1)
        for block in enc.blocks:
            block.attn.rel_pos_h.normal_(0, 0.1)
            block.attn.rel_pos_w.normal_(0, 0.1)
    return enc


@pytest.fixture(scope="module")
def onnx_file(encoder, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return export_onnx(encoder, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_onnxruntime_matches_eager(encoder, onnx_file):
    x = torch.randn(3, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    [eager] = ImageEncoderRunner(encoder, "torch")(x)
    ort = ImageEncoderRunner(encoder, "onnxruntime", model_file=onnx_file)
    assert eager.shape == (3, 256, 16, 16)
    torch.testing.assert_close(ort(x)[0], eager, atol=1e-4, rtol=0)  # batch of 3 through a graph exported at 2
    torch.testing.assert_close(ort(x[:1])[0], eager[:1], atol=1e-4, rtol=0)


def test_engine_exports_once_into_the_cache(tmp_path):
    pytest.importorskip("onnxruntime")
    images = [np.random.default_rng(i).integers(0, 256, (60, 90, 3), dtype=np.uint8) for i in range(3)]
    ort = SamEngine("tiny", backend="onnxruntime", cache=EmbeddingCache(tmp_path))
    torch_engine = SamEngine("tiny", backend="torch", cache=EmbeddingCache(tmp_path))
    assert ort.identity != torch_engine.identity  # backend is part of the key
    a, b = ort.embed(images, batch_size=2), torch_engine.embed(images, batch_size=3)
    assert ort.stats.encoded == 3 and len(os.listdir(tmp_path / "encoders")) == 1
    for x, y in zip(a, b):
        torch.testing.assert_close(x.tensor.float(), y.tensor.float(), atol=2e-3, rtol=1e-3)  # fp16 storage
    assert (
        SamEngine("tiny", backend="onnxruntime", cache=EmbeddingCache(tmp_path))
        .embed(images)[0]
        .tensor.equal(a[0].tensor)
    )


def test_bad_batch_and_settings(encoder):
    with pytest.raises(ValueError, match=r"batch must be \[B, 3, 256, 256\]"):
        ImageEncoderRunner(encoder, "torch")(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="backend must be one of"):
        ImageEncoderRunner(encoder, "tvm")
    with pytest.raises(ValueError, match="precision fp32"):
        ImageEncoderRunner(encoder, "onnxruntime", precision="fp16")


def test_tensorrt_says_why_it_cannot_run(encoder, tmp_path):
    try:
        import tensorrt  # noqa: F401

        has_trt = torch.cuda.is_available()
    except ImportError:
        has_trt = False
    if has_trt:
        pytest.skip("TensorRT and a GPU are here: covered by the GPU run")
    with pytest.raises(EncoderBackendError, match="tensorrt backend needs"):
        ImageEncoderRunner(encoder, "tensorrt", model_file=str(tmp_path / "x.engine"))


def test_bf16_autocast_is_close(encoder):
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    [eager] = ImageEncoderRunner(encoder, "torch")(x)
    [bf16] = ImageEncoderRunner(encoder, "torch", precision="bf16")(x)
    assert bf16.dtype == torch.float32
    assert (bf16 - eager).abs().max() < 0.1 * eager.abs().max()


@pytest.mark.slow
def test_compile_matches_eager(encoder):
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    [eager] = ImageEncoderRunner(encoder, "torch")(x)
    torch.testing.assert_close(ImageEncoderRunner(encoder, "compile")(x)[0], eager, atol=1e-4, rtol=1e-4)


def test_export_encoder_cli(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from wsseg_fast.cli import main

    assert main(["export-encoder", "--model", "tiny", "--format", "onnx", "--out", str(tmp_path / "e.onnx")]) == 0
    runner = ImageEncoderRunner(build_image_encoder("tiny"), "onnxruntime", model_file=str(tmp_path / "e.onnx"))
    x = torch.randn(1, 3, 256, 256)
    torch.testing.assert_close(
        runner(x)[0], ImageEncoderRunner(build_image_encoder("tiny"), "torch")(x)[0], atol=1e-4, rtol=0
    )
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert (
            main(["export-encoder", "--model", "tiny", "--format", "tensorrt", "--out", str(tmp_path / "e.engine")])
            == 2
        )
        assert "TensorRT" in capsys.readouterr().err


def test_missing_encoder_file(tmp_path):
    with pytest.raises(EncoderBackendError, match="encoder file not found"):
        SamEngine("tiny", backend="onnxruntime", encoder_file=str(tmp_path / "none.onnx"))
