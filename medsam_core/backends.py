"""Where the encoder and decoder run: PyTorch (the reference, and what training
uses) or ONNX Runtime (about twice as fast on a CPU, same outputs).

Both take and return plain numpy arrays in the model's input frame, and both
run ``PromptDecoder``, so switching backend cannot change what a prompt means.
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from medsam_core.models import LoadedModel
from medsam_core.prompt_decoder import PromptDecoder

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "openvino")
# Part of the export folder's name: bump it when the exported graphs change, so an old
# export (version 1: the encoder's batch fixed at 1) is never picked up again.
EXPORT_VERSION = 2


class TorchBackend:
    name = "torch"

    def __init__(self, model: LoadedModel):
        self.model = model
        self.decoder = PromptDecoder(model.module.prompt_encoder, model.module.mask_decoder).eval()

    def encode(self, image: torch.Tensor) -> np.ndarray:
        """(1, 3, S, S) -> (256, 64, 64) float32."""
        embedding: np.ndarray = self.encode_batch(image)[0]
        return embedding

    @torch.inference_mode()
    def encode_batch(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) -> (B, 256, 64, 64) float32."""
        out: torch.Tensor = self.model.module.image_encoder(images.to(self.model.device))
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def decode(
        self,
        embedding: np.ndarray,
        coords: np.ndarray,
        labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        dev = self.model.device
        masks, iou = self.decoder(
            torch.from_numpy(embedding).to(dev),
            torch.from_numpy(coords).to(dev),
            torch.from_numpy(labels).to(dev),
            torch.from_numpy(mask_input).to(dev),
            torch.from_numpy(has_mask).to(dev),
        )
        return masks.float().cpu().numpy(), iou.float().cpu().numpy()


class OnnxBackend:
    """Exports the model once per weights digest into ``export_dir`` and runs it with ONNX Runtime."""

    name = "onnx"

    def __init__(self, model: LoadedModel, export_dir: str | Path):
        import onnxruntime as ort

        self.model = model
        folder = Path(export_dir) / f"{model.family.name}-{model.model_digest[:16]}-v{EXPORT_VERSION}"
        encoder_path, decoder_path = folder / "encoder.onnx", folder / "decoder.onnx"
        if not (encoder_path.exists() and decoder_path.exists()):
            _export(model, folder)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        providers = ["CPUExecutionProvider"]
        self._load_encoder(encoder_path, options)
        # The decoder's input shape changes with the number of boxes, and ONNX Runtime's CPU
        # arena keeps the peak of every shape it has seen for the life of the process (a
        # 32-box prompt left 1.6 GB behind). Without the arena, memory goes back after each call.
        decoder_options = ort.SessionOptions()
        decoder_options.graph_optimization_level = options.graph_optimization_level
        decoder_options.intra_op_num_threads = options.intra_op_num_threads
        decoder_options.enable_cpu_mem_arena = False
        # Idle decoder threads spinning for work took the cores from the numpy and torch steps
        # around each decode (and from the other direction of a propagation).
        decoder_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.decoder = ort.InferenceSession(str(decoder_path), decoder_options, providers=providers)

    def _load_encoder(self, path: Path, options: Any) -> None:
        """The encoder's runtime; ``OpenVinoBackend`` compiles the same graph its own way instead."""
        import onnxruntime as ort

        self.encoder = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def encode(self, image: torch.Tensor) -> np.ndarray:
        """(1, 3, S, S) -> (256, 64, 64) float32."""
        embedding: np.ndarray = self.encode_batch(image)[0]
        return embedding

    def encode_batch(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) -> (B, 256, 64, 64) float32."""
        (out,) = self.encoder.run(None, {"image": images.cpu().numpy()})
        embeddings: np.ndarray = out
        return embeddings

    def decode(
        self,
        embedding: np.ndarray,
        coords: np.ndarray,
        labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        masks, iou = self.decoder.run(
            None,
            {
                "image_embeddings": embedding,
                "point_coords": coords,
                "point_labels": labels,
                "mask_input": mask_input,
                "has_mask_input": has_mask,
            },
        )
        return masks, iou


def _export(model: LoadedModel, folder: Path) -> None:
    """Write both graphs atomically, so a crash or a concurrent exporter never leaves half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to ONNX in %s (once per weights version)", model.family.name, folder)
    module = model.module.cpu()
    size = model.family.preprocessor.input_size
    decoder = PromptDecoder(module.prompt_encoder, module.mask_decoder).eval()
    dummy_decoder = (
        torch.zeros(1, 256, 64, 64),
        torch.zeros(2, 3, 2),
        torch.tensor([[1.0, 2.0, 3.0]] * 2),
        torch.zeros(2, 1, 256, 256),
        torch.zeros(1),
    )
    batch_axis = {"image": {0: "batch"}, "embeddings": {0: "batch"}}
    jobs = [
        ("encoder.onnx", module.image_encoder, (torch.zeros(1, 3, size, size),), ["image"], ["embeddings"], batch_axis),
        (
            "decoder.onnx",
            decoder,
            dummy_decoder,
            ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
            ["masks", "iou_predictions"],
            {
                "point_coords": {0: "prompts", 1: "tokens"},
                "point_labels": {0: "prompts", 1: "tokens"},
                "mask_input": {0: "prompts"},
                "masks": {0: "prompts"},
                "iou_predictions": {0: "prompts"},
            },
        ),
    ]
    for filename, net, args, inputs, outputs, axes in jobs:
        tmp = folder / f".{filename}.{uuid.uuid4().hex}.tmp"
        hooks = _batch_free_patch_merging(net)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    net,
                    args,
                    str(tmp),
                    input_names=inputs,
                    output_names=outputs,
                    dynamic_axes=axes,
                    opset_version=17,
                    dynamo=False,
                )
            if filename == "encoder.onnx":
                _channel_means_as_convs(tmp)
            os.replace(tmp, folder / filename)
        finally:
            for hook in hooks:
                hook.remove()
            tmp.unlink(missing_ok=True)
    model.module.to(model.device)


def _batch_free_patch_merging(net: torch.nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """TinyViT's PatchMerging reshapes with ``len(x)``, which the ONNX tracer records as the
    constant 1, so a batch of 2 would fail. These hooks do that reshape first with
    ``x.shape[0]`` (traced as the input's size), leaving the module's own branch unused;
    the computation is the same. Other encoders have no PatchMerging and get no hook."""
    hooks = []
    for module in net.modules():
        if type(module).__name__ == "PatchMerging" and hasattr(module, "input_resolution"):
            height, width = cast("tuple[int, int]", module.input_resolution)

            def to_image(_: torch.nn.Module, args: tuple[Any, ...], h: int = height, w: int = width) -> Any:
                x = args[0]
                return (x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2),) if x.ndim == 3 else None

            hooks.append(module.register_forward_pre_hook(to_image))
    return hooks


def _channel_means_as_convs(path: Path) -> None:
    """Make each image's embedding independent of its batch, so ``encode_many`` gives exactly
    what ``encode`` gives. ONNX Runtime sums a channel mean (``ReduceMean`` over axis 1, the
    neck's LayerNorm2d) in another order for a batch of one than for more, which flips about
    0.1% of the fp16-rounded values; a 1x1 convolution with weights 1/C is the same mean and
    runs image by image. (A transpose to the last axis does not help: the optimiser undoes it.)
    """
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = graph_model.graph
    channels = {
        v.name: v.type.tensor_type.shape.dim[1].dim_value
        for v in list(graph.value_info) + list(graph.input)
        if len(v.type.tensor_type.shape.dim) == 4 and v.type.tensor_type.shape.dim[1].HasField("dim_value")
    }
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        c = channels.get(node.input[0]) if node.input else None
        if node.op_type != "ReduceMean" or list(attrs.get("axes", [])) != [1] or attrs.get("keepdims", 1) != 1 or not c:
            nodes.append(node)
            continue
        weight = f"{node.output[0]}_mean_weight"
        graph.initializer.append(numpy_helper.from_array(np.full((1, c, 1, 1), 1.0 / c, np.float32), weight))
        nodes.append(helper.make_node("Conv", [node.input[0], weight], list(node.output), name=node.name))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))
