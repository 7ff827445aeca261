"""Training-time augmentation from timm's transform factory: ``none``, ``light`` or ``strong``.

* ``light``: a random resized crop (area 35-100% of the image, aspect 3/4-4/3) back to the model's size and a
  horizontal flip (p = 0.5), what fine-tuning on little data usually starts from.
* ``strong``: a crop of 8-100% (timm's ImageNet training default), the flip and RandAugment
  (``rand-m9-mstd0.5-inc1``), what training from scratch needs most.

Only training batches are augmented; validation and test images never are. A linear probe on cached frozen
features (:mod:`tlsearch.features`) trains on features of the un-augmented images: the features are computed once
per (depth, subset) precisely so that no image is decoded and run through the frozen part again, so augmentation
changes nothing for such trials.

timm's factory builds PIL transforms (RandAugment works on PIL images only). With ``use_prefetcher=True`` it ends
in ``MaybePILToTensor`` instead of normalising, so every path gets uint8 C x H x W back and normalises on the
device as it does without augmentation. The streaming path applies it to each decoded PIL image inside the Ray Data
pipeline; the in-memory path holds uint8 tensors, so :func:`augment_batch` turns each image of a batch into a PIL
image, transforms it and stacks the results (on the worker, per batch: cheap at the sizes kept in memory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tlsearch.errors import ConfigError
from tlsearch.spec import InputSpec

LEVELS = ("none", "light", "strong")
_CROP_SCALE = {"light": (0.35, 1.0), "strong": (0.08, 1.0)}
_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"
_NO_COLOR_JITTER: dict[str, Any] = {"color_jitter": None}  # timm skips it on None (its annotation says float)

Transform = Callable[[Any], torch.Tensor]  # a PIL image -> uint8 C x H x W


def train_transform(level: str, spec: InputSpec) -> Transform | None:
    """timm's training transform for ``level`` at the model's size, ending in uint8 C x H x W; None for ``none``.

    The fill colour of RandAugment's geometric operations is the model's mean, one value per channel, so gray
    (one-channel) images work too.
    """
    if level not in LEVELS:
        raise ConfigError(f"augment: got {level!r}; valid: {', '.join(LEVELS)}")
    if level == "none":
        return None
    from timm.data import create_transform

    transform: Transform = create_transform(
        input_size=(spec.in_chans, spec.size, spec.size), is_training=True, use_prefetcher=True,
        scale=_CROP_SCALE[level], hflip=0.5, auto_augment=_RAND_AUGMENT if level == "strong" else None,
        mean=spec.mean, std=spec.std, interpolation="bilinear", **_NO_COLOR_JITTER,
    )
    return transform


def to_pil(image: np.ndarray) -> Any:
    """A uint8 H x W x C array (C = 1 or 3) as a PIL image (gray or RGB)."""
    from PIL import Image

    return Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)


def augment_batch(images: torch.Tensor, transform: Transform) -> torch.Tensor:
    """``transform`` applied to each image of a uint8 N x C x H x W batch, independently; uint8 N x C x H x W."""
    arrays = images.permute(0, 2, 3, 1).numpy()
    return torch.stack([transform(to_pil(np.ascontiguousarray(a))) for a in arrays])
