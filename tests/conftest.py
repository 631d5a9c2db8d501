"""Shared fixtures: real data, the real bundled model, one embedding cache for the whole run.

Every test image is encoded once per session and then served from the cache,
which keeps the suite within its time budget on a 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DEMO_IMAGE = REPO / "demo" / "ct_abdomen.png"
DEMO_BOX = [95, 255, 190, 350]
WANT_S3 = IN_CI or os.environ.get("MEDSAM_TEST_S3", "") == "1"
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def require(condition: bool, reason: str) -> None:
    """Skip locally, fail in CI: a missing service or data set must never pass silently there."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def sample_data() -> Path:
    root = Path(os.environ.get("MEDSAM_SAMPLE_DATA", REPO.parent / "shared" / "data")).resolve()
    require(
        (root / "kvasir" / "images").is_dir() and (root / "busi" / "images").is_dir(),
        f"sample data not found at {root} (set MEDSAM_SAMPLE_DATA)",
    )
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


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto server per session; each test gets its own bucket on it."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        require(False, f"moto[server] is not installed ({exc})")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    try:
        server.start()
    except Exception as exc:  # pragma: no cover - depends on the machine
        require(False, f"moto server did not start ({exc})")
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(monkeypatch):
    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def new_bucket(request, s3_env):
    moto_endpoint = request.getfixturevalue("moto_endpoint")
    import fsspec

    bucket = f"medsam-test-{uuid.uuid4().hex[:16]}"
    fsspec.filesystem("s3", endpoint_url=moto_endpoint, use_listings_cache=False).mkdir(bucket)
    return moto_endpoint, bucket
