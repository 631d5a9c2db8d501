"""The one-way dependency rule, checked on what really gets imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = ["medsam_core." + m for m in ("imageio", "models", "predictor", "cache", "evaluation", "outputs",
                                      "metrics", "deidentify", "backends")]
STORE = ["portal.store." + m for m in ("models", "store", "blobs", "embeddings", "migrate", "settings")] + [
    "portal.store.services." + m for m in ("annotations", "images", "masks", "model_versions", "projects",
                                           "users", "gc")]


def imported_after(modules: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {line.split(".")[0] for line in out.splitlines()}


@pytest.mark.parametrize("modules, forbidden", [
    (CORE, {"portal", "workers", "sqlalchemy", "celery", "gradio", "fastapi", "pydantic_settings"}),
    (STORE, {"workers", "celery", "gradio", "fastapi"}),
])
def test_imports_point_one_way(modules, forbidden):
    assert imported_after(modules) & forbidden == set()
