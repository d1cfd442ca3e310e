"""SAM's image encoder behind one interface, on four backends.

- ``torch``: eager PyTorch.
- ``compile``: ``torch.compile`` of the same module (first batch pays the compilation).
- ``onnxruntime``: an exported ONNX graph (``export_onnx``; exported on first use
  when no file is given) run by ONNX Runtime (CUDA provider on a GPU, else CPU).
- ``tensorrt``: a TensorRT engine built from the ONNX file (needs TensorRT and a GPU).

Every backend takes a float32 ``[B, 3, S, S]`` batch (the model's ``preprocess``) and returns the
feature levels the decoder reads, float32: ``[[B, 256, g, g]]`` for SAM 1, ``[[B, 256, 64, 64],
[B, 32, 256, 256], [B, 64, 128, 128]]`` for SAM 2.1 (the ONNX file and the TensorRT engine have one
output per level: ``embeddings``, ``level1``, ``level2``).
"""

from __future__ import annotations

import os
import tempfile
import warnings

import torch

from wsseg_fast.errors import UserError
from wsseg_fast.io import atomic_output, atomic_write_bytes

BACKENDS = ("torch", "compile", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "bf16", "fp16")


class EncoderBackendError(UserError, RuntimeError):
    """A backend that cannot run here, with the reason."""


def level_names(levels: int) -> list[str]:
    """The output names of an exported encoder with ``levels`` feature levels."""
    return ["embeddings"] + [f"level{i}" for i in range(1, levels)]


def export_onnx(encoder: torch.nn.Module, out: str | os.PathLike, *, opset: int = 17) -> str:
    """Export ``encoder`` (a model's ``image_encoder``, returning a tensor or a list of levels) to ONNX
    with a dynamic batch axis, one output per level. Written to a temporary name and renamed, so a
    killed export leaves no partial file."""
    out = os.fspath(out)
    size = encoder.img_size
    dummy = torch.zeros(2, 3, size, size)
    with torch.no_grad():
        outputs = encoder.eval()(dummy[:1])
    names = level_names(len(outputs) if isinstance(outputs, (list, tuple)) else 1)
    axes = {name: {0: "batch"} for name in ["images", *names]}
    with atomic_output(out) as tmp:
        # The TorchScript exporter takes ~4 s for the tiny encoder where the dynamo
        # exporter takes ~40 s; the latter is the fallback once the former is gone.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    encoder,
                    (dummy,),
                    tmp,
                    input_names=["images"],
                    output_names=names,
                    dynamic_axes=axes,
                    opset_version=opset,
                    dynamo=False,
                )
            except (TypeError, RuntimeError, NotImplementedError):
                batch = torch.export.Dim("batch", min=1, max=1024)
                program = torch.onnx.export(
                    encoder,
                    (dummy,),
                    input_names=["images"],
                    output_names=names,
                    dynamic_shapes={"x": {0: batch}},
                    opset_version=opset,
                    dynamo=True,
                )
                program.save(tmp)
    return out


def export_tensorrt(
    onnx_path: str | os.PathLike, out: str | os.PathLike, *, fp16: bool = False, max_batch: int = 8
) -> str:
    """Build a serialized TensorRT engine from an ONNX encoder file."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EncoderBackendError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    shape = tuple(network.get_input(0).shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, (1, *shape), (1, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise EncoderBackendError(f"TensorRT failed to build an engine from {onnx_path}")
    atomic_write_bytes(out, engine)
    return os.fspath(out)


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise EncoderBackendError(
            "the tensorrt backend needs the TensorRT Python package (pip install tensorrt) and a CUDA GPU; "
            "it is not installed here — use --backend onnxruntime or torch"
        ) from None
    if not torch.cuda.is_available():
        raise EncoderBackendError("the tensorrt backend needs a CUDA GPU; none is visible here")
    return trt


class ImageEncoderRunner:
    """Runs SAM's image encoder on one backend: ``runner(batch)`` -> embeddings.

    Args:
        encoder: the ``ImageEncoderViT`` (``build_image_encoder``); used by ``torch``
            and ``compile``, and exported when an ONNX file is needed but not given.
        backend: one of :data:`BACKENDS`.
        model_file: the exported ONNX file (``onnxruntime``) or TensorRT engine (``tensorrt``).
        export_dir: where to export the ONNX file when ``model_file`` is not given.
        precision: compute precision of the torch backends (``bf16``/``fp16`` by autocast).
        device: ``cpu`` or ``cuda``.
    """

    def __init__(
        self,
        encoder,
        backend: str = "torch",
        *,
        model_file: str | None = None,
        export_dir: str | None = None,
        precision: str = "fp32",
        device: str | torch.device = "cpu",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"encoder backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and backend in ("onnxruntime", "tensorrt"):
            raise ValueError(
                f"the {backend} backend runs the exported graph's precision; use precision fp32 "
                "(build a fp16 TensorRT engine with export-encoder --fp16)"
            )
        self.backend, self.precision, self.device = backend, precision, torch.device(device)
        self.img_size = encoder.img_size
        if backend in ("torch", "compile"):
            self.module = encoder.to(self.device).eval()
            self._fn = torch.compile(self.module, dynamic=False) if backend == "compile" else self.module
        elif backend == "onnxruntime":
            if model_file is None:
                export_dir = export_dir or tempfile.mkdtemp(prefix="wsseg-fast-onnx-")
                model_file = export_onnx(encoder, os.path.join(export_dir, "image_encoder.onnx"))
            self._session = self._ort_session(model_file)
        else:
            trt = import_tensorrt()
            if model_file is None:
                raise EncoderBackendError(
                    "the tensorrt backend needs an engine: wsseg-fast export-encoder --format tensorrt"
                )
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            with open(model_file, "rb") as f:
                self._engine = runtime.deserialize_cuda_engine(f.read())
            self._context = self._engine.create_execution_context()
        self.model_file = model_file

    def _ort_session(self, path: str):
        try:
            import onnxruntime as ort
        except ImportError:
            raise EncoderBackendError("the onnxruntime backend needs onnxruntime: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EncoderBackendError(
                    "onnxruntime on cuda needs onnxruntime-gpu (CUDAExecutionProvider is missing)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        return ort.InferenceSession(path, options, providers=providers)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (3, self.img_size, self.img_size):
            raise ValueError(
                f"image encoder: batch must be [B, 3, {self.img_size}, {self.img_size}], got {tuple(batch.shape)}"
            )
        if self.backend in ("torch", "compile"):
            batch = batch.to(self.device, torch.float32)
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
            with torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "fp32"):
                out = self._fn(batch)
            return [t.float() for t in (out if isinstance(out, (list, tuple)) else [out])]
        if self.backend == "onnxruntime":
            outputs = self._session.run(None, {self._session.get_inputs()[0].name: batch.float().cpu().numpy()})
            return [torch.from_numpy(out) for out in outputs]
        return self._run_tensorrt(batch)

    def _run_tensorrt(self, batch: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - needs a GPU
        engine, context = self._engine, self._context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        x = batch.to("cuda", torch.float32).contiguous()
        context.set_input_shape(names[0], tuple(x.shape))
        context.set_tensor_address(names[0], x.data_ptr())
        outputs = []
        for name in names[1:]:  # one output per feature level
            out = torch.empty(tuple(context.get_tensor_shape(name)), device="cuda", dtype=torch.float32)
            context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        torch.cuda.current_stream().synchronize()
        return outputs
