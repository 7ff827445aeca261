from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download; missing weights must fail fast
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="module")
def ray_2_cpus() -> Iterator[None]:
    """A local 2-CPU Ray on 127.0.0.1, the way `tlsearch run` starts one; one module at a time."""
    import ray

    from tlsearch.search import start_ray

    start_ray(num_cpus=2)
    yield
    ray.shutdown()


def write_image_folder(root: Path, classes: int = 2, per_class: int = 6, size: int = 12) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")
