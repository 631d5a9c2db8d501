"""Which backend a predictor gets: the one place that knows all three, so none of them imports another's
choice (``openvino_backend`` builds on ``backends``, and this module on both)."""

from __future__ import annotations

from pathlib import Path

from medsam_core.backends import BACKENDS, OnnxBackend, TorchBackend
from medsam_core.models import LoadedModel
from medsam_core.openvino_backend import OpenVinoBackend


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def make_backend(
    model: LoadedModel, backend: str = "auto", onnx_dir: str | Path | None = None
) -> TorchBackend | OnnxBackend:
    """ "auto": ONNX Runtime for the small model on a CPU when an export folder is given, else PyTorch.

    OpenVINO (``openvino_backend``, 2x the encoder's speed on CPUs with AVX512-BF16) is asked for by
    name only: with it in the inference worker, chromium's full-resolution brush autosave on a
    2048 px image never fired (``tests/test_browser_editor.py``, with fp32 too), for a reason not
    yet found. ViT families stay on PyTorch: their graphs exceed protobuf's 2 GB limit (ViT-H)
    and they belong on a GPU anyway.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        use_onnx = (
            model.device.type == "cpu" and model.family.name == "lite" and onnx_dir is not None and onnx_available()
        )
        backend = "onnx" if use_onnx else "torch"
    if backend in ("onnx", "openvino"):
        if onnx_dir is None:
            raise ValueError(f"the {backend} backend needs a folder for its exported graphs")
        return OpenVinoBackend(model, onnx_dir) if backend == "openvino" else OnnxBackend(model, onnx_dir)
    return TorchBackend(model)
