"""Prompt encoder + mask decoder as one module with plain tensor inputs.

Boxes become two corner points (labels 2 and 3) and a prompt without a box gets
SAM's padding point (label -1), exactly what ``PromptEncoder.forward`` does.
Folding both into point tensors gives one graph for boxes, points and their
mix, which both the PyTorch path and the ONNX export run, so the two cannot
drift apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

BOX_CORNER_LABELS = (2.0, 3.0)
PAD_LABEL = -1.0


class PromptDecoder(nn.Module):
    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module):
        super().__init__()
        # segment-anything's PromptEncoder and MaskDecoder (untyped): their parts are reached by name.
        self.prompt_encoder: Any = prompt_encoder
        self.mask_decoder: Any = mask_decoder

    def _sparse(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        embedding: torch.Tensor = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
        labels = labels.unsqueeze(-1)
        embedding = embedding * (labels != PAD_LABEL).to(embedding.dtype)
        embedding = embedding + pe.not_a_point_embed.weight * (labels == PAD_LABEL).to(embedding.dtype)
        for index in range(pe.num_point_embeddings):
            embedding = embedding + pe.point_embeddings[index].weight * (labels == index).to(embedding.dtype)
        return embedding

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates are in the model's input frame. Returns all 4 mask logits and their IoU scores."""
        pe = self.prompt_encoder
        batch = point_coords.shape[0]
        sparse = self._sparse(point_coords, point_labels)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask_input * pe.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask
        # One embedding per prompt up front, so the decoder never takes its
        # repeat_interleave branch, whose batch size would be frozen by tracing.
        image = image_embeddings.expand(batch, -1, -1, -1)
        image_pe = pe.get_dense_pe().expand(batch, -1, -1, -1)
        decoder = self.mask_decoder
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        return _run_decoder(decoder, image + dense, image_pe, tokens)


def _run_decoder(
    decoder: Any, src: torch.Tensor, pos_src: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.predict_masks`` minus its batch expansion (upstream SAM always repeats)."""
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + decoder.num_mask_tokens), :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack(
        [decoder.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(decoder.num_mask_tokens)],
        dim=1,
    )
    b, c, h, w = upscaled.shape
    masks = (hyper @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
    return masks, decoder.iou_prediction_head(iou_token_out)


def build_prompt_arrays(
    boxes: np.ndarray | None, points: np.ndarray | None, point_labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(B, 4) boxes and (N, 2) points, in the model frame -> (B, T, 2) coords and (B, T) labels.

    Every box gets the same points; with no box, one prompt of the points plus padding.
    """
    parts_c, parts_l = [], []
    n_prompts = 1 if boxes is None else len(boxes)
    if points is not None and len(points):
        if point_labels is None:
            raise TypeError("points need their point_labels")
        parts_c.append(np.broadcast_to(points[None].astype(np.float32), (n_prompts, len(points), 2)))
        parts_l.append(np.broadcast_to(point_labels[None].astype(np.float32), (n_prompts, len(points))))
    if boxes is not None:
        parts_c.append(np.asarray(boxes, np.float32).reshape(n_prompts, 2, 2))
        parts_l.append(np.broadcast_to(np.asarray(BOX_CORNER_LABELS, np.float32), (n_prompts, 2)))
    else:
        parts_c.append(np.zeros((n_prompts, 1, 2), np.float32))
        parts_l.append(np.full((n_prompts, 1), PAD_LABEL, np.float32))
    coords = np.ascontiguousarray(np.concatenate(parts_c, axis=1), dtype=np.float32)
    labels = np.ascontiguousarray(np.concatenate(parts_l, axis=1), dtype=np.float32)
    return coords, labels
