"""Resume or restart a search of the same name: its stored config is the contract.

A search folder holds ``_ray/search.json`` (the SearchConfig it was started with) beside Tune's state. Running
the same ``--name`` again resumes it; with different options it is refused, unless ``--restart`` discards it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tlsearch import storage
from tlsearch.config import SearchConfig
from tlsearch.errors import ConfigError

RESUME_IGNORES = {"address", "max_concurrent", "results_dir", "trial_timeout_s"}


def config_json(config: SearchConfig) -> str:
    return json.dumps(config.to_dict(), default=str, indent=2)


def can_resume(config: SearchConfig, ray_storage: str) -> bool:
    """True when ``ray_storage`` holds this search already; refuse to resume it with a different config."""
    from ray import tune

    if not tune.Tuner.can_restore(storage.join(ray_storage, "tune")):
        return False
    stored_text = storage.read_text(storage.join(ray_storage, "search.json"))
    if stored_text is None:
        return True
    stored, wanted = json.loads(stored_text), json.loads(config_json(config))
    changed = sorted(k for k in wanted if k not in RESUME_IGNORES and stored.get(k) != wanted[k])
    if changed:
        raise ConfigError(
            f"search {config.name!r} exists with a different {', '.join(changed)}; resume it with the same "
            "options, pass --restart to start it over, or choose another --name"
        )
    return True


def remember(config: SearchConfig, ray_storage: str) -> None:
    storage.write_text(storage.join(ray_storage, "search.json"), config_json(config))


def discard(folder: str, echo: Callable[[str], None]) -> None:
    """Delete a search's folder (tables, Ray state, checkpoints) for ``--restart``, saying what goes."""
    if not storage.exists(folder):
        return
    files = storage.list_files(folder)
    trials = {i.path.split("/train-", 1)[1].split("/", 1)[0] for i in files if "/train-" in i.path}
    size = sum(i.size or 0 for i in files) / 1e6
    echo(f"tlsearch: --restart: discarding {folder} ({len(trials)} trial run(s), {len(files)} files, {size:.1f} MB)")
    storage.delete_dir(folder)
