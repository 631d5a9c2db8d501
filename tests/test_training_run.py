"""``finetune``: the one orchestration behind ``medsam train`` and the training worker, on real Kvasir images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medsam_core.cache import EmbeddingCache
from medsam_core.checkpoints import module_digest
from medsam_core.errors import MedsamError
from medsam_core.models import from_module, load_model
from medsam_core.predictor import Predictor
from medsam_core.training import MODES, TrainConfig, check_mode, finetune, split_by_group
from medsam_core.training.artifacts import checkpoint_bytes, checkpoint_from_bytes
from medsam_core.training.folder import folder_samples
from tests.conftest import first_pairs


class MemorySink:
    """Keeps what a run hands over; ``stop_at_step`` plays a cancelled job."""

    def __init__(self, resume: dict | None = None, stop_at_step: int | None = None):
        self.resume, self.stop_at_step = resume, stop_at_step
        self.info, self.steps, self.records, self.checkpoints, self.result = None, [], [], [], None

    def start(self, info):
        self.info = info
        return self.resume

    def progress(self, values):
        self.steps.append(values)
        if self.stop_at_step is not None and len(self.steps) >= self.stop_at_step:
            raise KeyboardInterrupt("cancelled")

    def epoch_done(self, record, checkpoint):
        self.records.append(record)
        self.checkpoints.append(checkpoint_from_bytes(checkpoint_bytes(checkpoint)))  # it holds live tensors

    def finished(self, result):
        self.result = result


@pytest.fixture(scope="module")
def split(sample_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kvasir4")
    for sub in ("images", "masks"):
        (folder / sub).mkdir()
    for image, mask in first_pairs(sample_data, "kvasir", 4):
        shutil.copy(image, folder / "images" / image.name)
        shutil.copy(mask, folder / "masks" / mask.name)
    train, val = split_by_group(folder_samples(folder), 0.25, seed=0)
    assert len(train) == 3 and len(val) == 1
    return train, val


@pytest.fixture(scope="module")
def cache():
    return EmbeddingCache(store=None, memory_items=64)


def fresh(cache, backend="onnx", onnx_dir=None):
    """A model of its own (training changes it in place) and a predictor on that same model."""
    model = load_model("lite", device="cpu")
    return model, Predictor(model, cache, backend=backend, onnx_dir=onnx_dir)


CONFIG = dict(mode="decoder", batch_size=2, lr=1e-4, seed=3)


def test_decoder_mode_encodes_with_the_trained_model_yet_leaves_its_encoder_and_the_cache_as_inference_sees_them(split):
    # The torch backend runs the very encoder being trained: LiteMedSAM's BatchNorm and dropout must stay in
    # eval mode, or the cache would hold training-mode embeddings and the "frozen" encoder's digest would move.
    train, val = split[0][:2], split[1]  # the torch encoder is slow on a CPU: three images are enough
    model, predictor = fresh(EmbeddingCache(store=None, memory_items=64), backend="torch")
    sink = MemorySink()
    result = finetune(model, train, val, TrainConfig(epochs=1, **CONFIG), sink, predictor=predictor)
    assert module_digest(model.module.image_encoder) == model.encoder_digest
    model.module.eval()
    rgb = val[0].load_rgb()
    cached = predictor.cache.get(predictor.cache_key(rgb))
    expected = predictor.backend.encode(predictor.preprocessor.to_tensor(rgb)).astype(np.float16)
    np.testing.assert_allclose(cached.astype(np.float32), expected.astype(np.float32), atol=2e-2)
    assert sink.result is result and [r["epoch"] for r in sink.records] == [1]
    assert sink.info.train_keys == [s.key for s in train] and result.summary()["val_images"] == len(val)


def test_a_resumed_run_trains_only_the_missing_epochs_and_ends_where_an_unbroken_run_ends(split, cache, data_dir):
    train, val = split
    model, predictor = fresh(cache, onnx_dir=data_dir / "onnx")
    unbroken = MemorySink()
    whole = finetune(model, train, val, TrainConfig(epochs=2, **CONFIG), unbroken, predictor=predictor)
    model, predictor = fresh(cache, onnx_dir=data_dir / "onnx")
    resumed = MemorySink(resume=unbroken.checkpoints[0])  # the process died after epoch 1
    result = finetune(model, train, val, TrainConfig(epochs=2, **CONFIG), resumed, predictor=predictor)
    assert [r["epoch"] for r in resumed.records] == [2]
    assert result.history[:1] == whole.history[:1]
    assert result.history[1]["train_loss"] == pytest.approx(whole.history[1]["train_loss"], rel=1e-4)
    assert result.baseline_val_dice == whole.baseline_val_dice and result.best_epoch == whole.best_epoch


def test_a_sink_that_raises_stops_the_run_within_one_step_and_nothing_is_finished(split, cache, data_dir):
    train, val = split
    model, predictor = fresh(cache, onnx_dir=data_dir / "onnx")
    sink = MemorySink(stop_at_step=1)
    with pytest.raises(KeyboardInterrupt):
        finetune(model, train, val, TrainConfig(epochs=5, **CONFIG), sink, predictor=predictor)
    assert len(sink.steps) == 1 and sink.records == [] and sink.result is None


def test_decoder_mode_refuses_a_predictor_on_a_second_copy_of_the_model(split, cache):
    train, val = split
    model, predictor = fresh(cache, backend="torch")
    copy = from_module("lite", model.module, device="cpu")
    with pytest.raises(ValueError, match="second copy"):
        finetune(copy, train, val, TrainConfig(epochs=1, **CONFIG), MemorySink(), predictor=predictor)
    with pytest.raises(ValueError, match="needs a predictor"):
        finetune(model, train, val, TrainConfig(epochs=1, **CONFIG), MemorySink())


class RefusedHere(MedsamError):
    pass


def test_one_rule_for_modes_and_the_gpu():
    assert MODES == ("decoder", "full")
    for gpu, allow in ((True, False), (False, True), (True, True)):
        check_mode("full", gpu, allow)
    check_mode("decoder", False, False)
    with pytest.raises(RefusedHere, match="^full fine-tuning needs a GPU; use decoder mode$"):
        check_mode("full", False, False, remedy="; use decoder mode", error=RefusedHere)
    with pytest.raises(MedsamError, match="unknown training mode 'encoder'; choose decoder or full"):
        check_mode("encoder", True, True)
    with pytest.raises(MedsamError, match="unknown training mode"):
        TrainConfig(mode="encoder").validate()


def test_click_rounds_train_the_decoder_on_box_clicks_and_previous_mask(split, cache, data_dir, monkeypatch):
    """Each step with clicks re-prompts with a corrective click and the last logits as mask input; the run
    completes, its loss is finite and the decoder's weights move (the clicks reach the gradient)."""
    from medsam_core.training import trainer as trainer_module

    train, val = split
    model, predictor = fresh(cache, onnx_dir=data_dir / "onnx")
    before = {k: v.clone() for k, v in model.module.mask_decoder.state_dict().items()}
    seen = []
    real_forward = trainer_module.Trainer._forward

    def spy(self, embeddings, boxes, clicks=None, previous=None):
        seen.append((None if clicks is None else clicks.coords.shape[1], previous is not None))
        return real_forward(self, embeddings, boxes, clicks, previous)

    monkeypatch.setattr(trainer_module.Trainer, "_forward", spy)
    config = TrainConfig(epochs=2, click_rounds=2, **CONFIG)
    result = finetune(model, train, val, config, MemorySink(), predictor=predictor)
    assert all(np.isfinite(r["train_loss"]) for r in result.history)
    assert (1, True) in seen and (2, True) in seen  # one then two clicks, each with the previous logits
    assert all(prev for k, prev in seen if k)  # a click never comes without the mask it corrects
    after = model.module.mask_decoder.state_dict()
    assert any(not np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    with pytest.raises(MedsamError, match="click rounds must be between 0 and 10"):
        TrainConfig(click_rounds=11).validate()


def test_clicks_move_to_the_input_frame_and_pad_where_nothing_is_left_to_fix():
    from medsam_core.clicks import Click
    from medsam_core.training.trainer import Clicks

    empty = Clicks(np.zeros((2, 0, 2), np.float32), np.zeros((2, 0), np.float32))
    one = empty.add([Click(10, 20, True), None], scale=4.0)
    assert one.coords.shape == (2, 1, 2) and one.coords[0, 0].tolist() == [41.5, 81.5]
    assert one.labels[:, 0].tolist() == [1.0, -1.0]  # a perfect mask gets SAM's padding point
    two = one.add([Click(1, 1, False), Click(0, 0, True)], scale=1.0)
    assert two.coords.shape == (2, 2, 2) and two.labels[:, 1].tolist() == [0.0, 1.0]
