"""Loading weights safely and fingerprinting them.

Checkpoints come from users, from MedSAM's own training script and from our
trainer, so three layouts are accepted: a plain state dict, a training
checkpoint ``{"model": ..., "optimizer": ..., "epoch": ...}``, and keys with
DataParallel's ``module.`` prefix. ``weights_only=True`` always: a checkpoint is
data, never code.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from medsam_core.errors import CheckpointError

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Return the model's tensors from any accepted checkpoint layout."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; give the path of a local .pth file (nothing is ever downloaded)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Never pass on torch's advice to retry with weights_only=False: that is the attack.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" (it refers to {found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {path.name} holds Python objects besides tensors{what}; such files can run code "
            "when loaded and are refused. Save the weights alone: torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read as PyTorch weights ({first_line[:200]}); "
            "it may be truncated, or contain code objects that are refused for safety"
        ) from None
    return unwrap_state_dict(raw, source=str(path))


def unwrap_state_dict(raw: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    state = raw
    if isinstance(state, Mapping):
        for key in _WRAPPER_KEYS:
            inner = state.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                state = inner
                break
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{source} holds no state dict (found {type(raw).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], family: str, source: str) -> None:
    """Load strictly, turning PyTorch's wall of key names into a short, useful error."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (first: {'; '.join(mismatched[:3])})")
        raise CheckpointError(
            f"{source} does not fit model family '{family}': {'; '.join(parts)}. "
            "Check that the model family given for it is the one this checkpoint was trained as."
        )
    model.load_state_dict(state, strict=True)


def module_digest(module: nn.Module) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the weights.

    The digest of the image encoder keys the embedding cache: a fine-tune that
    leaves the encoder untouched keeps the same digest, so every cached
    embedding stays valid.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
