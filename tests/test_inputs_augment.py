"""Training-time augmentation: which transform each level builds, and that only training batches get it, on the
in-memory path (uint8 tensors) and the streamed one (decoded PIL images)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tlsearch import augment, stream
from tlsearch.errors import ConfigError
from tlsearch.inputs import loaders
from tlsearch.spec import InputSpec, TrialSpec

RGB = InputSpec(3, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
GRAY = InputSpec(1, 16, (0.5,), (0.25,))


def _steps(transform: object) -> list[str]:
    return [type(t).__name__ for t in transform.transforms]  # type: ignore[attr-defined]


def test_each_level_builds_timms_transform() -> None:
    assert augment.train_transform("none", RGB) is None
    light, strong = augment.train_transform("light", RGB), augment.train_transform("strong", RGB)
    assert _steps(light) == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "MaybePILToTensor"]
    assert _steps(strong) == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment",
                              "MaybePILToTensor"]
    assert light.transforms[0].scale == (0.35, 1.0) and strong.transforms[0].scale == (0.08, 1.0)  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="augment: got 'heavy'; valid: none, light, strong"):
        augment.train_transform("heavy", RGB)


@pytest.mark.parametrize("spec", [RGB, GRAY], ids=["rgb", "gray"])
def test_augmented_batches_keep_shape_and_dtype_and_change_the_pixels(spec: InputSpec) -> None:
    torch.manual_seed(0)
    images = torch.arange(16 * 16, dtype=torch.uint8).view(1, 1, 16, 16).expand(8, spec.in_chans, 16, 16)
    out = augment.augment_batch(images.contiguous(), augment.train_transform("strong", spec))  # type: ignore[arg-type]
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert (out != images).any()


def test_only_training_batches_are_augmented_in_memory() -> None:
    spec = TrialSpec("test_resnet", 2, RGB, 1, 4, 4, 0.0, 0, 1, 1.0, augment="light")
    images = torch.randint(0, 255, (8, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(8) % 2
    torch.manual_seed(0)
    train, val, _ = loaders((images, labels), (images, labels), spec,
                            augment=augment.train_transform(spec.augment, RGB))
    x = torch.cat([x for x, _ in train])
    order = train.sampler.last  # type: ignore[attr-defined]
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.uint8
    assert not torch.equal(x, images[order])  # training: cropped and flipped
    assert torch.equal(torch.cat([x for x, _ in val]), images)  # validation: the images as they are


def test_streamed_training_rows_are_augmented_and_validation_rows_are_not() -> None:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    blob = io.BytesIO()
    Image.fromarray(pixels).save(blob, format="PNG")
    plain = stream.decode(blob.getvalue(), 3, 16)
    assert plain.shape == (3, 16, 16)
    np.testing.assert_array_equal(plain, stream.decode(blob.getvalue(), 3, 16))  # deterministic
    torch.manual_seed(0)
    augmented = [stream.decode(blob.getvalue(), 3, 16, "strong", RGB.mean, RGB.std) for _ in range(4)]
    assert all(a.shape == (3, 16, 16) and a.dtype == np.uint8 for a in augmented)
    assert any((a != plain).any() for a in augmented)
