import numpy as np
import torch

from medsam_core.preprocess import LITE, MEDSAM_VIT, SAM_VIT


def gradient(h, w):
    row = np.linspace(20, 200, w, dtype=np.float32)
    return np.repeat(np.repeat(row[None, :, None], h, 0), 3, 2).astype(np.uint8)


def test_lite_keeps_aspect_minmax_and_pads():
    x = LITE.to_tensor(gradient(512, 256))
    assert x.shape == (1, 3, 256, 256)
    assert LITE.resized_size(512, 256) == (256, 128)
    content = x[0, :, :, :128]
    assert abs(float(content.min())) < 1e-6 and abs(float(content.max()) - 1) < 1e-6
    assert torch.count_nonzero(x[0, :, :, 128:]) == 0


def test_medsam_vit_squashes_to_square_without_padding():
    assert MEDSAM_VIT.resized_size(300, 900) == (1024, 1024)
    x = MEDSAM_VIT.to_tensor(gradient(300, 900))
    assert x.shape == (1, 3, 1024, 1024)
    assert float(x.min()) >= 0 and abs(float(x.max()) - 1) < 1e-6
    assert torch.count_nonzero(x[0, 0, -1]) > 0  # last row is image, not padding


def test_coordinates_map_per_axis():
    box = np.array([[100.0, 30.0], [300.0, 60.0]])
    np.testing.assert_allclose(LITE.scale_coords(box, (300, 600)), box * (256 / 600), rtol=1e-6)
    np.testing.assert_allclose(
        MEDSAM_VIT.scale_coords(box, (300, 600)), box * np.array([1024 / 600, 1024 / 300]), rtol=1e-6
    )
    np.testing.assert_allclose(SAM_VIT.scale_coords(box, (300, 600)), box * (1024 / 600), rtol=1e-4)


def test_logits_return_to_original_size_without_padding():
    low = torch.full((2, 1, 256, 256), -5.0)
    low[..., :128, :] = 5.0  # the upper half of the padded frame; the image fills rows 0..127
    out = LITE.logits_to_original(low, (200, 400))
    assert out.shape == (2, 1, 200, 400)
    assert bool((out > 0).all())  # the padding rows were cropped away before resizing
