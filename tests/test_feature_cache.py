"""The feature cache actor's handle travels to every process of a trial: receiving it must not import torch."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.slow
def test_a_process_given_the_cache_handle_imports_neither_torch_nor_timm(ray_2_cpus: None) -> None:
    """Each trial's Tune function (``tune.with_parameters``) and Train controller (``train_loop_config``) get the
    handle; an actor class defined beside torch code made both import torch and timm (3 s each, every trial)."""
    import ray

    from tlsearch.feature_cache import FeatureCache

    @ray.remote(num_cpus=0)
    def loaded(received: dict[str, Any]) -> tuple[bool, list[str]]:
        import sys

        alive = ray.get(received["cache"].claim.remote(("k",), "me"))
        return alive, sorted(m for m in ("torch", "timm", "torchvision", "tlsearch.features") if m in sys.modules)

    cache = ray.remote(num_cpus=0)(FeatureCache).remote()
    assert ray.get(loaded.remote({"cache": cache})) == (True, [])
