import numpy as np
import pytest

from medsam_core.metrics import dice, iou, normalized_surface_dice


def square(size=20, x0=5, y0=5, side=10):
    m = np.zeros((size, size), bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def test_dice_and_iou_known_values():
    a = square()
    b = square(x0=10)  # overlaps half of a
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a, b) == pytest.approx(2 * 50 / 200)
    assert iou(a, b) == pytest.approx(50 / 150)
    assert dice(a, np.zeros_like(a)) == 0.0


def test_empty_pair_counts_as_perfect():
    z = np.zeros((8, 8), bool)
    assert dice(z, z) == 1.0 and iou(z, z) == 1.0 and normalized_surface_dice(z, z) == 1.0


def test_nsd_tolerance():
    a = square()
    shifted = square(x0=6)  # boundaries one pixel apart
    assert normalized_surface_dice(a, a, 0) == 1.0
    assert normalized_surface_dice(a, shifted, tolerance=1) == 1.0
    assert normalized_surface_dice(a, shifted, tolerance=0) < 1.0
    far = square(size=60, x0=40, y0=40)
    assert normalized_surface_dice(square(size=60), far, tolerance=2) == 0.0
    assert normalized_surface_dice(a, np.zeros_like(a)) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        dice(np.zeros((3, 3)), np.zeros((4, 4)))
