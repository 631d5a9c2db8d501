"""`medsam train` on shared Kvasir images: checkpoints, metrics, resume, and refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from medsam_core.training import Sample, split_by_group
from tests.conftest import DEMO_BOX, DEMO_IMAGE, first_pairs


@pytest.fixture(scope="module")
def kvasir16(sample_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kvasir16")
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    for image, mask in first_pairs(sample_data, "kvasir", 16):
        shutil.copy(image, folder / "images" / image.name)
        shutil.copy(mask, folder / "masks" / mask.name)
    return folder


def lines(stdout: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]


def test_train_writes_loadable_checkpoints_and_resumes(run_medsam, kvasir16, tmp_path):
    out = tmp_path / "run"
    first = run_medsam("train", str(kvasir16), "--out", str(out), "--epochs", "2", "--val-fraction", "0.25", "--json")
    assert first.returncode == 0, first.stderr
    records = lines(first.stdout)
    summary = records[-1]
    assert [r["epoch"] for r in records[:-1]] == [1, 2]
    assert summary["train_images"] == 12 and summary["val_images"] == 4
    assert summary["best_val_dice"] >= summary["baseline_val_dice"]  # best starts as the untouched weights
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth", "metrics.json", "curves.png"):
        assert (out / name).stat().st_size > 0
    latest = torch.load(out / "checkpoint_latest.pth", weights_only=True)
    assert latest["epoch"] == 2 and {"model", "optimizer", "best_model", "history"} <= set(latest)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and not set(metrics["train_images"]) & set(metrics["val_images"])
    seg = run_medsam(
        "segment",
        str(DEMO_IMAGE),
        "--box",
        *map(str, DEMO_BOX),
        "--checkpoint",
        str(out / "checkpoint_best.pth"),
        "--out",
        str(tmp_path / "seg"),
        "--json",
    )
    assert seg.returncode == 0, seg.stderr
    assert lines(seg.stdout)[0]["area"] > 1000
    again = run_medsam(
        "train", str(kvasir16), "--out", str(out), "--epochs", "3", "--val-fraction", "0.25", "--resume", "--json"
    )
    assert again.returncode == 0, again.stderr
    resumed = lines(again.stdout)
    assert [r["epoch"] for r in resumed[:-1]] == [3]  # epochs 1-2 were not trained again
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    assert history[:2] == metrics["epochs"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--epochs", "0"], "at least 1"),
        (["--model", "vit_q"], "unknown model family 'vit_q'"),
        (["--model", "medsam_vit_b"], "--checkpoint"),
        (["--model", "sam_vit_b", "--checkpoint", "/nonexistent/sam_vit_b_01ec64.pth"], "does not exist"),
        (["--mode", "full"], "full fine-tuning needs a GPU"),
        (["--lr", "3"], "learning rate"),
    ],
)
def test_bad_training_parameters_are_refused(run_medsam, kvasir16, tmp_path, args, fragment):
    result = run_medsam("train", str(kvasir16), "--out", str(tmp_path / "o"), *args)
    assert result.returncode != 0 and fragment in result.stderr and "Traceback" not in result.stderr


def test_too_few_images_is_refused(run_medsam, kvasir16, tmp_path):
    small = tmp_path / "small"
    for sub in ("images", "masks"):
        (small / sub).mkdir(parents=True)
        for f in sorted((kvasir16 / sub).iterdir())[:3]:
            shutil.copy(f, small / sub / f.name)
    result = run_medsam("train", str(small), "--out", str(tmp_path / "o"))
    assert result.returncode == 1 and "needs at least 4" in result.stderr


def test_split_keeps_volumes_and_duplicates_on_one_side():
    samples = [Sample(f"case{c}-{s:03d}", f"case:{c}", None, None) for c in range(6) for s in range(5)]
    samples += [Sample("copy_a", "sha:x", None, None), Sample("copy_b", "sha:x", None, None)]
    train, val = split_by_group(samples, 0.3, seed=1)
    assert {s.group for s in train}.isdisjoint({s.group for s in val}) and val and train
    fixed_train, fixed_val = split_by_group(samples, 0.3, fixed_val_keys={"copy_a"})
    assert {s.key for s in fixed_val} == {"copy_a", "copy_b"}  # the whole group follows the frozen key
