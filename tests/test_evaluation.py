"""Queued evaluation and the promotion gate, through the REST API of a real `medsam serve` (web + workers).

An uploaded checkpoint is evaluated on the project's frozen validation images
by a job on the training worker; the model list then shows its validation
Dice, and the gate promotes it without force when it is at least as good as
the active version, and refuses one that is worse. A project without approved
labels has no validation images to score on: the upload says so, and the gate
still refuses to promote blind.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from tests.conftest import first_pairs
from tests.test_api import call, kvasir_zip, ok, running_portal, wait_job

USERS = {"boss": "admin", "rita": "reviewer"}


@pytest.fixture(scope="module")
def api(tmp_path_factory, data_dir):
    # The torch backend: three versions of one encoder, and no ONNX export per decoder variant.
    with running_portal(
        tmp_path_factory.mktemp("evaluation"),
        USERS,
        {"MEDSAM_MIN_TRAINING_IMAGES": "2", "MEDSAM_TRAINING_GPU": "false", "MEDSAM_INFERENCE_BACKEND": "torch"},
    ) as portal:
        yield portal


def checkpoint(worse: bool = False) -> bytes:
    """The bundled LiteMedSAM weights as a user saves them; ``worse`` negates the first mask's hypernetwork
    output, which inverts that mask (validation Dice near 0) and leaves the encoder, and its embeddings, as is."""
    from medsam_core.models import bundled_lite_checkpoint

    state = torch.load(bundled_lite_checkpoint(), map_location="cpu", weights_only=True)
    if worse:
        for key in (
            "mask_decoder.output_hypernetworks_mlps.0.layers.2.weight",
            "mask_decoder.output_hypernetworks_mlps.0.layers.2.bias",
        ):
            state[key] = -state[key]
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def upload(api, pid: int, name: str, data: bytes) -> dict:
    return ok(
        call(
            api,
            "POST",
            f"/projects/{pid}/models",
            files={"file": (f"{name}.pth", data)},
            data={"family": "lite", "name": name},
        ),
        201,
    )


def scores(api, pid: int) -> dict[int, float | None]:
    return {v["id"]: v["val_dice"] for v in ok(call(api, "GET", f"/projects/{pid}/models"))["versions"]}


def new_project(api, name: str) -> int:
    pid = ok(call(api, "POST", "/projects", json={"name": name, "modality": "endoscopy", "labels": ["polyp"]}), 201)[
        "id"
    ]
    ok(call(api, "POST", f"/projects/{pid}/members", json={"username": "rita", "role": "reviewer"}))
    return pid


def test_without_approved_labels_there_is_nothing_to_score_and_the_gate_holds(api):
    pid = new_project(api, "eval-unlabelled")
    version = upload(api, pid, "unscored", checkpoint())
    assert version["evaluation_job_id"] is None and "approved labels" in version["evaluation_note"]
    again = call(api, "POST", f"/projects/{pid}/models/{version['id']}/evaluate", user="rita")
    assert again.status_code == 400 and "approved labels" in again.json()["detail"]
    gate = call(api, "POST", f"/projects/{pid}/models/{version['id']}/activate")
    assert gate.status_code == 409 and "has not been evaluated" in gate.json()["detail"]


def test_uploaded_checkpoint_is_evaluated_then_promoted_without_force(api, sample_data):
    pid = new_project(api, "eval-polyps")
    pairs = sorted(first_pairs(sample_data, "kvasir", 12), key=lambda p: p[0].stat().st_size)[:4]
    ok(call(api, "POST", f"/projects/{pid}/import", files={"file": ("kvasir.zip", kvasir_zip(pairs))}), 201)
    for image in ok(call(api, "GET", f"/projects/{pid}/images")):  # boss imported them: rita approves
        aid = image["annotations"]["polyp"]["annotation_id"]
        ok(call(api, "POST", f"/annotations/{aid}/review", user="rita", json={"decision": "approve"}))
    base = ok(call(api, "GET", f"/projects/{pid}/models"))["active_model_version_id"]

    good = upload(api, pid, "same-weights", checkpoint())
    assert good["evaluation_job_id"] and good["val_dice"] is None and not good["active"]
    early = call(api, "POST", f"/projects/{pid}/models/{good['id']}/activate")
    assert early.status_code == 409  # not scored yet: no promotion on trust
    job = wait_job(api, f"/jobs/{good['evaluation_job_id']}", 300)
    assert job["kind"] == "evaluate" and job["state"] == "succeeded", job
    # The frozen set was chosen from the approved labels, and the active (base) version was scored too.
    assert job["result"]["images"] == 1 and job["result"]["active_model_version_id"] == base
    listed = scores(api, pid)
    assert listed[good["id"]] is not None and listed[base] is not None
    assert listed[good["id"]] >= listed[base] > 0.5  # the same weights score the same

    worse = upload(api, pid, "inverted", checkpoint(worse=True))
    done = wait_job(api, f"/jobs/{worse['evaluation_job_id']}", 300)
    assert done["state"] == "succeeded" and "active_model_version_id" not in done["result"]  # base already scored
    assert scores(api, pid)[worse["id"]] < 0.2

    promoted = ok(call(api, "POST", f"/projects/{pid}/models/{good['id']}/activate"))
    assert promoted["active_model_version_id"] == good["id"]
    gate = call(api, "POST", f"/projects/{pid}/models/{worse['id']}/activate")
    assert gate.status_code == 409 and "below the active version" in gate.json()["detail"]
    assert ok(call(api, "GET", f"/projects/{pid}/models"))["active_model_version_id"] == good["id"]


def test_server_log_is_clean(api):
    log = Path(api["folder"], "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]
