"""Each family's exact input recipe, and the inverse for coordinates and masks.

A model only performs as published when it sees its images the way it was
trained: LiteMedSAM and MedSAM min-max normalise to [0, 1], SAM uses ImageNet
statistics on 0-255; LiteMedSAM and SAM keep the aspect ratio and pad, MedSAM
ViT-B squashes to 1024x1024.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Preprocessor:
    input_size: int
    keep_aspect: bool
    normalisation: str  # "minmax" | "imagenet"
    resample: str  # "area" (INTER_AREA-like, LiteMedSAM) | "bicubic"

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        if not self.keep_aspect:
            return self.input_size, self.input_size
        scale = self.input_size / max(height, width)
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))

    def to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> float32 (1, 3, S, S), zero-padded bottom/right."""
        height, width = rgb.shape[:2]
        new_h, new_w = self.resized_size(height, width)
        resized: np.ndarray = np.asarray(_resize(rgb, new_h, new_w, self.resample), dtype=np.float32)
        if self.normalisation == "minmax":
            low, high = float(resized.min()), float(resized.max())
            resized = (resized - low) / max(high - low, 1e-8)
        else:
            resized = (resized - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        out = np.zeros((self.input_size, self.input_size, 3), dtype=np.float32)
        out[:new_h, :new_w] = resized
        return torch.from_numpy(out).permute(2, 0, 1).unsqueeze(0).contiguous()

    def scale_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Map (..., 2) x/y pixel coordinates of the original image into the model frame."""
        height, width = original_size
        new_h, new_w = self.resized_size(height, width)
        scaled = np.asarray(coords, dtype=np.float32).copy()
        scaled[..., 0] *= new_w / width
        scaled[..., 1] *= new_h / height
        return scaled

    def logits_to_original(self, low_res: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """(B, 1, h, w) low-res logits -> (B, 1, H, W) logits at the original resolution."""
        new_h, new_w = self.resized_size(*original_size)
        if low_res.shape[-1] != self.input_size:
            low_res = F.interpolate(
                low_res, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        cropped = low_res[..., :new_h, :new_w]
        return F.interpolate(cropped, size=original_size, mode="bilinear", align_corners=False)


def _resize(rgb: np.ndarray, new_h: int, new_w: int, resample: str) -> Image.Image:
    image = Image.fromarray(rgb)
    if (new_h, new_w) == rgb.shape[:2]:
        return image
    if resample == "area":
        # cv2.INTER_AREA, which LiteMedSAM was trained with, averages boxes when
        # shrinking and is bilinear when enlarging.
        shrinking = new_h * new_w < rgb.shape[0] * rgb.shape[1]
        method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    else:
        method = Image.Resampling.BICUBIC
    return image.resize((new_w, new_h), method)


LITE = Preprocessor(input_size=256, keep_aspect=True, normalisation="minmax", resample="area")
MEDSAM_VIT = Preprocessor(input_size=1024, keep_aspect=False, normalisation="minmax", resample="bicubic")
SAM_VIT = Preprocessor(input_size=1024, keep_aspect=True, normalisation="imagenet", resample="bicubic")
