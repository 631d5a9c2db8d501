"""Shared fixtures: real data, the real bundled model, one embedding cache for the whole run.

Every test image is encoded once per session and then served from the cache,
which keeps the suite within its time budget on a 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DEMO_IMAGE = REPO / "demo" / "ct_abdomen.png"
DEMO_BOX = [95, 255, 190, 350]


def require(condition: bool, reason: str) -> None:
    """Skip locally, fail in CI: a missing service or data set must never pass silently there."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def sample_data() -> Path:
    root = Path(os.environ.get("MEDSAM_SAMPLE_DATA", REPO.parent / "shared" / "data")).resolve()
    require((root / "kvasir" / "images").is_dir() and (root / "busi" / "images").is_dir(),
            f"sample data not found at {root} (set MEDSAM_SAMPLE_DATA)")
    return root


def first_pairs(root: Path, name: str, n: int) -> list[tuple[Path, Path]]:
    images = sorted((root / name / "images").glob("*.png"))[:n]
    return [(p, root / name / "masks" / p.name) for p in images]


def tight_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One MEDSAM_DATA_DIR for every CLI run: ONNX export and embeddings are made once."""
    return tmp_path_factory.mktemp("medsam_data")


@pytest.fixture(scope="session")
def lite_model():
    from medsam_core.models import load_model

    return load_model("lite", device="cpu")


@pytest.fixture(scope="session")
def shared_cache(data_dir):
    from medsam_core.cache import DirectoryEmbeddingStore, EmbeddingCache

    return EmbeddingCache(DirectoryEmbeddingStore(data_dir / "embeddings", 2 * 1024**3), memory_items=64)


@pytest.fixture(scope="session")
def predictor(lite_model, shared_cache, data_dir):
    """The production path: ONNX Runtime on the CPU, persistent cache."""
    from medsam_core.predictor import Predictor

    return Predictor(lite_model, shared_cache, backend="onnx", onnx_dir=data_dir / "onnx")


@pytest.fixture(scope="session")
def demo_rgb() -> np.ndarray:
    return np.asarray(Image.open(DEMO_IMAGE).convert("RGB"))


@pytest.fixture()
def run_medsam(data_dir):
    """Run the installed console script the way a user does."""

    def run(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "MEDSAM_DATA_DIR": str(data_dir), **(env or {})}
        exe = Path(sys.executable).with_name("medsam")
        return subprocess.run([str(exe), *args], capture_output=True, text=True, env=full_env, timeout=timeout)

    return run
