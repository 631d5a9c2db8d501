"""The encoder compiled by OpenVINO, in bfloat16 where the CPU has it (issue 12: a volume costs one
encode per slice, and LiteMedSAM's encoder is 75 GFLOPs at 256 px, since it keeps a 64 x 64 grid
through every stage).

Measured with ``bench/encoder.py`` on the 2-core development machine (AMD EPYC with AVX512-BF16),
ms per 256 px slice: ONNX Runtime fp32 651, OpenVINO fp32 616, OpenVINO bf16 344; two streams of
one image each (``NUM_STREAMS`` 2) give 3.4 slices/s where one batch of 4 gives 2.9. ONNX Runtime's
static int8 (QDQ, per channel, calibrated on the shared images) was no faster than fp32 and its masks
reached a mean Dice of 0.83, so it was not kept.

What bf16 costs: Dice of the masks from ground-truth boxes against the fp32 PyTorch reference,
0.997 mean on Kvasir and 0.996 on BUSI (issue 12's bar: 0.99); ``bench/encoder.py --quant openvino``
repeats it. The decoder stays on ONNX Runtime in fp32, so a prompt on a given embedding gives the
same mask as with the ``onnx`` backend, and the server's check of a client's mask is exact.

The exported graphs are the ``onnx`` backend's (one export per weights digest); compiling them
takes under half a second, so nothing compiled is kept on disk. Not the default (``backend_choice``
says why): ``MEDSAM_INFERENCE_BACKEND=openvino`` asks for it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsam_core.backends import OnnxBackend

STREAMS = 2  # two images in flight, one core each: better use of 2 cores than one image on both


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def encoder_precision(core: Any) -> str:
    """bf16 where the CPU computes it natively, else f32; ``MEDSAM_OPENVINO_PRECISION`` overrides."""
    chosen = os.environ.get("MEDSAM_OPENVINO_PRECISION", "").strip().lower()
    if chosen in ("f32", "bf16"):
        return chosen
    return "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


class OpenVinoBackend(OnnxBackend):
    """``OnnxBackend`` with the encoder run by OpenVINO; decoding is inherited unchanged."""

    name = "openvino"

    def _load_encoder(self, path: Path, options: Any) -> None:
        """Compiles the exported encoder (no ONNX Runtime session for it: it would never run)."""
        import openvino as ov

        self._lock = threading.Lock()
        core = ov.Core()
        self.precision = encoder_precision(core)
        graph = core.read_model(str(path))
        size = self.model.family.preprocessor.input_size
        graph.reshape({"image": [1, 3, size, size]})  # one image per request; streams give the parallelism
        threads = max(1, torch.get_num_threads())
        config = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": min(STREAMS, threads),
        }
        self.compiled = core.compile_model(graph, "CPU", config)
        self.requests = ov.AsyncInferQueue(self.compiled, min(STREAMS, threads))

    def encode_batch(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) -> (B, 256, 64, 64) float32; the images of a batch run on parallel streams.

        One queue serves the process, so concurrent callers take turns (the queue is not re-entrant).
        """
        batch = images.cpu().numpy()
        out: list[np.ndarray | None] = [None] * len(batch)

        def done(request: Any, index: int) -> None:
            out[index] = np.array(request.get_output_tensor(0).data[0], dtype=np.float32)

        with self._lock:
            self.requests.set_callback(done)
            for index, image in enumerate(batch):
                self.requests.start_async({"image": image[None]}, index)
            self.requests.wait_all()
        return np.stack([o for o in out if o is not None])
