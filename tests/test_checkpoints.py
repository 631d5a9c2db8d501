"""Checkpoint formats and families, with randomly initialised segment-anything weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_core.checkpoints import read_state_dict
from medsam_core.errors import CheckpointError, UnknownModelError
from medsam_core.models import FAMILIES, get_family, load_model
from medsam_core.preprocess import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def vit_b_state():
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    return sam_model_registry["vit_b"](checkpoint=None).state_dict()


@pytest.fixture(scope="module")
def vit_b_files(vit_b_state, tmp_path_factory):
    """The three layouts seen in the wild, written once for the module."""
    folder = tmp_path_factory.mktemp("ckpt")
    files = {
        "plain": folder / "plain.pth",
        "training": folder / "training.pth",
        "module_prefix": folder / "ddp.pth",
    }
    torch.save(vit_b_state, files["plain"])
    torch.save({"model": vit_b_state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, files["training"])
    torch.save({f"module.{k}": v for k, v in vit_b_state.items()}, files["module_prefix"])
    return files


@pytest.mark.parametrize("layout", ["plain", "training", "module_prefix"])
def test_each_layout_loads_for_both_vit_b_families(vit_b_files, vit_b_state, layout):
    for family in ("sam_vit_b", "medsam_vit_b"):
        loaded = load_model(family, vit_b_files[layout], device="cpu")
        key = "mask_decoder.iou_token.weight"
        assert torch.equal(loaded.module.state_dict()[key], vit_b_state[key])
        assert loaded.family.name == family


def test_vit_b_encode_decode_shapes(vit_b_files):
    from medsam_core.predictor import Predictor

    predictor = Predictor(load_model("sam_vit_b", vit_b_files["plain"], device="cpu"), backend="torch")
    rgb = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    embedding = predictor.encode(rgb)
    assert embedding.features.shape == (256, 64, 64) and embedding.features.dtype == np.float16
    prediction = predictor.decode(embedding, boxes=[[10, 20, 150, 250], [0, 0, 50, 50]])
    assert prediction.masks.shape == (2, 300, 200)
    assert prediction.low_res_logits.shape == (2, 1, 256, 256)
    assert prediction.iou.shape == (2,)


def test_family_mismatch_names_family_and_keys(vit_b_files):
    with pytest.raises(CheckpointError) as err:
        load_model("sam_vit_l", vit_b_files["plain"], device="cpu")
    message = str(err.value)
    assert "sam_vit_l" in message and "image_encoder." in message and "mismatch" in message


def test_lite_weights_refused_by_vit_family():
    from medsam_core.models import bundled_lite_checkpoint

    with pytest.raises(CheckpointError, match="does not fit model family 'medsam_vit_b'.*missing keys"):
        load_model("medsam_vit_b", bundled_lite_checkpoint(), device="cpu")


def test_missing_checkpoint_is_clear_and_never_downloads(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*nothing is ever downloaded"):
        load_model("sam_vit_h", tmp_path / "sam_vit_h_4b8939.pth")
    with pytest.raises(CheckpointError, match="no bundled weights.*--checkpoint"):
        load_model("medsam_vit_b")


def test_truncated_and_hostile_checkpoints_are_refused(tmp_path, vit_b_files):
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(vit_b_files["plain"].read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_state_dict(truncated)
    hostile = tmp_path / "code.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": ExecutesOnLoad()}, hostile)
    with pytest.raises(CheckpointError, match="Python objects besides tensors.*ExecutesOnLoad.*refused") as info:
        read_state_dict(hostile)
    assert "weights_only" not in str(info.value) and str(tmp_path) not in str(info.value)  # never the unsafe advice
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(CheckpointError, match="no tensors"):
        read_state_dict(empty)


class ExecutesOnLoad:
    """Stands for a pickled payload: weights_only=True must refuse to build it."""


def test_registry_covers_large_vits_without_weights():
    assert set(FAMILIES) == {"lite", "medsam_vit_b", "sam_vit_b", "sam_vit_l", "sam_vit_h"}
    for name in ("sam_vit_l", "sam_vit_h"):
        family = get_family(name)
        assert family.bundled is None
        pre = family.preprocessor
        assert pre.input_size == 1024 and pre.keep_aspect and pre.normalisation == "imagenet"
        rgb = np.full((512, 1024, 3), 255, np.uint8)
        x = pre.to_tensor(rgb)
        assert x.shape == (1, 3, 1024, 1024)
        expected = (255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
        assert torch.allclose(x[0, 0, :512], torch.full((512, 1024), expected), atol=1e-4)
        assert torch.count_nonzero(x[:, :, 512:]) == 0  # padded below
    with pytest.raises(UnknownModelError, match="choose one of: lite"):
        get_family("vit_huge")
