"""Corrective clicks (issue 13): where the simulated annotator clicks, what each round sends to the
decoder, and ``medsam evaluate --clicks`` through the real model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medsam_core.clicks import Click, next_click, simulate
from medsam_core.predictor import Prediction


def square(x0: int, y0: int, x1: int, y1: int, size: int = 40) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def test_a_missed_object_gets_a_positive_click_at_its_centre():
    assert next_click(np.zeros((40, 40), bool), square(10, 20, 20, 30)) == Click(15, 25, True)


def test_the_bigger_error_wins_and_a_false_positive_gets_a_negative_click():
    truth = square(0, 0, 9, 9)
    prediction = square(0, 0, 7, 7) | square(20, 20, 30, 30)  # misses 36 px, adds 121 px
    assert next_click(prediction, truth) == Click(25, 25, False)
    prediction = square(0, 0, 9, 9) | square(30, 30, 31, 31)  # 4 px extra, nothing missed
    assert next_click(prediction, truth) == Click(30, 30, False)


def test_the_largest_component_not_the_sum_and_never_on_the_image_edge():
    truth = np.zeros((40, 40), bool)
    truth[:, :3] = True  # a 3 px strip along the left edge: 120 px
    truth |= square(20, 20, 24, 24)  # 25 px
    click = next_click(np.zeros((40, 40), bool), truth)
    assert click is not None and click.positive and click.x == 1  # the strip's middle column, not x = 0
    assert next_click(truth, truth) is None


class Scripted:
    """Masks by round; records what each decode was given."""

    def __init__(self, masks: list[np.ndarray]):
        self.masks, self.calls = masks, []

    def decode(self, embedding, boxes=None, points=None, mask_input=None):
        self.calls.append((boxes, points, mask_input))
        mask = self.masks[min(len(self.calls) - 1, len(self.masks) - 1)]
        return Prediction(
            masks=mask[None],
            low_res_logits=np.full((1, 1, 256, 256), len(self.calls), np.float32),
            iou=np.ones(1, np.float32),
        )


def test_each_round_sends_the_box_every_click_so_far_and_the_previous_logits():
    truth = square(10, 10, 29, 29)
    rounds = [square(10, 10, 19, 29), square(10, 10, 27, 29), truth]
    decoder = Scripted(rounds)
    run = simulate(decoder, None, [8, 8, 31, 31], truth, clicks=3)  # type: ignore[arg-type]
    assert len(decoder.calls) == 3  # the box, then two clicks; the third round has nothing to fix
    assert run.dice[0] == pytest.approx(2 * 200 / 600) and run.dice[2] == 1.0 and run.dice[3] == 1.0
    boxes, points, mask_input = decoder.calls[2]
    assert boxes == [[8, 8, 31, 31]]
    # Both clicks, in order. Round 1 misses columns 20-29: depth 5 first reached at (24, 14) in row-major
    # order; round 2 misses the 2 px strip of columns 28-29, depth 1 everywhere: its first pixel.
    assert points == [(24.0, 14.0, 1), (28.0, 10.0, 1)]
    assert mask_input is not None and float(mask_input.max()) == 2.0  # round 2's logits
    assert decoder.calls[0][2] is None  # the box alone has no mask input
    assert run.clicks_to(0.9) == 1 and run.clicks_to(0.95) == 2 and run.clicks_to(1.01) == 3  # 3: the cap


def test_evaluate_with_clicks_through_the_real_model(run_medsam, sample_data, tmp_path):
    folder = tmp_path / "two"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
        for path in sorted((sample_data / "kvasir" / sub).glob("*.png"))[:2]:
            shutil.copy(path, folder / sub / path.name)
    done = run_medsam("evaluate", str(folder), "--clicks", "2", "--box-jitter", "20", "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    *images, summary = lines
    assert len(images) == 2 and all(len(i["dice_at_clicks"]) == 3 for i in images)
    assert summary["clicks"] == 2 and len(summary["dice_at_clicks"]) == 3
    assert summary["dice_at_clicks"][0] == summary["mean_dice"]  # index 0 is the box alone
    assert 0 <= summary["noc90"] <= 2
    plain = run_medsam("evaluate", str(folder), "--json")
    assert "dice_at_clicks" not in plain.stdout and plain.returncode == 0
    bad = run_medsam("evaluate", str(folder), "--clicks", "-1")
    assert bad.returncode != 0 and "--clicks must be between 0 and 20" in bad.stderr
    assert "Traceback" not in bad.stderr
