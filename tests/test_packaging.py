"""The package's promises about itself: its Python floor, its declared dependencies, one version."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import tlsearch

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_declared_python_floor_is_what_the_code_needs() -> None:
    floor = PYPROJECT["project"]["requires-python"]
    assert floor == ">=3.11"
    # vermin reads the code (syntax, modules such as tomllib, APIs) and names the lowest Python that runs it.
    vermin = str(Path(sys.executable).with_name("vermin"))
    found = subprocess.run([vermin, "--no-tips", "--violations", "-t=3.11-", str(ROOT / "tlsearch")],
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stdout + found.stderr
    needed = subprocess.run([vermin, "--no-tips", str(ROOT / "tlsearch")], capture_output=True, text=True).stdout
    assert "Minimum required versions: 3.11" in needed, needed


def test_every_third_party_import_is_a_declared_dependency() -> None:
    imported: set[str] = set()
    for path in (ROOT / "tlsearch").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"tlsearch"}
    providers = importlib.metadata.packages_distributions()
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    missing = {}
    for module in sorted(third_party):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_version_is_written_once() -> None:
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert tlsearch.__version__ == importlib.metadata.version("tlsearch")
    hits = [p for p in (ROOT / "tlsearch").rglob("*.py") if re.search(r"^__version__ = ", p.read_text(), re.M)]
    assert [p.name for p in hits] == ["_version.py"]


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, tlsearch, tlsearch.cli, tlsearch.results; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# A trial's spec, built in a fresh interpreter by the tests below (what a Tune function receives).
SPEC_CODE = ("from tlsearch.spec import InputSpec, TrialSpec; "
             "spec = TrialSpec('m', 2, InputSpec(3, 32, (0.5,), (0.5,)), 1, 8, 8, 0.0, 0, 1, 1.0); ")


def test_a_trials_tune_function_unpickles_without_torch_or_timm() -> None:
    """What each trial's Tune function process loads before it runs: the trial module and its TrialSpec."""
    code = ("import pickle, sys; from tlsearch.search import trial; " + SPEC_CODE +
            "pickle.loads(pickle.dumps((trial.run_trial, spec))); "
            "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'ray.train') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_trials_tune_function_and_train_controller_run_without_torch(tmp_path: Path) -> None:
    """The Tune function builds the Train run; the controller unpickles its backend config and sets the process
    group up through it. Neither may import torch (3 s each): only the workers train."""
    built = tmp_path / "backend.pkl"
    build = (
        "import sys; from ray import cloudpickle; from tlsearch.search import trial, session; " + SPEC_CODE +
        "res = session.Resources(2, False, 1.0, 0.0, 1, 1); "
        f"t = trial.build_trainer({{'lr': 0.1}}, name='train-x', spec=spec, payload=[], resources=res, "
        f"storage={str(tmp_path)!r}); t._get_train_func(); "
        f"open({str(built)!r}, 'wb').write(cloudpickle.dumps(t.backend_config)); "
        "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules), type(t).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", build], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "DataParallelTrainer"]
    control = (
        f"import pickle, sys; c = pickle.load(open({str(built)!r}, 'rb')); b = c.backend_cls(); "
        "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules), c.backend, "
        "c.framework.name, b.share_cuda_visible_devices)"
    )
    out = subprocess.run([sys.executable, "-c", control], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "gloo", "TORCH", "True"]
