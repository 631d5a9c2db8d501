"""encode_many: a volume's slices encoded in batches, exactly as one encode at a time would."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core.cache import EmbeddingCache
from medsam_core.imageio import read_image
from medsam_core.predictor import Predictor


@pytest.fixture(scope="module")
def slices(sample_data) -> list[np.ndarray]:
    volume = sample_data / "volumes" / "brats" / "images" / "brats_2013_pat0005_1.nii.gz"
    assert volume.is_file(), f"{volume} is missing"
    image = read_image(volume)
    return [image.display(z) for z in (70, 71, 72)]


def fresh(lite_model, data_dir, backend: str, memory_items: int) -> Predictor:
    # Memory-only caches of their own: the shared cache would answer instead of the encoder.
    return Predictor(lite_model, EmbeddingCache(None, memory_items=memory_items), backend, data_dir / "onnx")


def test_onnx_batches_give_exactly_what_one_encode_at_a_time_gives(lite_model, data_dir, slices):
    a, b, c = slices
    batched = fresh(lite_model, data_dir, "onnx", memory_items=8)
    # Batches [a, b] and [c]: a batch of two and a batch of one; the repeated a is encoded once.
    embeddings = batched.encode_many([a, b, a, c], batch=2)
    assert batched.encoder_runs == 3
    assert embeddings[2].features is embeddings[0].features
    single = fresh(lite_model, data_dir, "onnx", memory_items=0)
    for rgb, embedding in zip([a, b, a, c], embeddings, strict=True):
        assert embedding.features.dtype == np.float16 and embedding.original_size == (240, 240)
        assert np.array_equal(embedding.features, single.encode(rgb).features)
    again = batched.encode_many([c, b], batch=2)
    assert batched.encoder_runs == 3 and all(e.cache_hit for e in again)
    assert [e.key for e in again] == [embeddings[3].key, embeddings[1].key]


def test_torch_batch_of_two_gives_exactly_what_one_encode_at_a_time_gives(lite_model, data_dir, slices):
    a, b, _ = slices
    batched = fresh(lite_model, data_dir, "torch", memory_items=0)
    together = batched.encode_many([a, b], batch=2)
    single = fresh(lite_model, data_dir, "torch", memory_items=0)
    for rgb, embedding in zip([a, b], together, strict=True):
        assert np.array_equal(embedding.features, single.encode(rgb).features)


def test_cached_slices_are_not_encoded_again_and_digests_are_checked(predictor, slices):
    a, b, _ = slices
    first = predictor.encode(a)  # the session's shared cache: a may already be there
    runs = predictor.encoder_runs
    with pytest.raises(ValueError, match="2 images but 1 pixel digests"):
        predictor.encode_many([a, b], pixel_digests=[first.key.pixel_sha256])
    with pytest.raises(ValueError, match="batch"):
        predictor.encode_many([a], batch=0)
    (again,) = predictor.encode_many([a], pixel_digests=[first.key.pixel_sha256])
    assert again.cache_hit and predictor.encoder_runs == runs
    assert np.array_equal(again.features, first.features)
