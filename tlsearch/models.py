"""The only module that knows timm: build models, load weights, group parameters, freeze, count FLOPs.

Freeze depth is defined through the model's own contract, never by its name: the coarse
``group_matcher`` groups (group 0 = stem, last = head plus anything unmatched). Models without a
``group_matcher`` fall back to one group per top-level child module, with the classifier last.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import socket
import threading
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import timm
import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from timm.layers import BatchNormAct2d, freeze_batch_norm_2d
from timm.models import group_parameters
from torch import nn

from tlsearch.errors import ModelError, WeightsError
from tlsearch.spec import InputSpec
from tlsearch.storage import replacing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SourceWeights:
    """Pretrained weights resolved once by the driver and shipped to every worker."""

    state_dict: dict[str, torch.Tensor]
    num_classes: int
    input_spec: InputSpec
    origin: str


@dataclass(frozen=True)
class FreezePlan:
    """Which parameters train after freezing the first ``depth`` of ``num_groups`` groups."""

    depth: int
    num_groups: int
    frozen: tuple[str, ...]
    backbone: tuple[str, ...]
    head: tuple[str, ...]


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ModelError(f"unknown timm model {name!r}{hint}")


def create(name: str, num_classes: int, in_chans: int = 3) -> nn.Module:
    """Create a timm model with fresh weights (no download; :func:`hub_model` fetches pretrained ones)."""
    check_model_name(name)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelError(f"cannot build {name!r}: {exc}") from None


def probe(name: str) -> nn.Module:
    """``name`` with no weights, on the meta device (no memory, no initialisation): for its parameter groups and
    data config before Ray starts. A model whose construction needs real tensors is built on the CPU instead."""
    check_model_name(name)
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=2)
    except (RuntimeError, ValueError, TypeError):
        return create(name, num_classes=2)


def hub_model(name: str) -> nn.Module:
    """timm's pretrained ``name`` (its classifier fresh, one class), from the Hugging Face hub or its local cache.

    Fails in seconds and quietly when the weights cannot be had: a hub that does not answer a TCP probe is treated
    as offline (``HF_HUB_OFFLINE``), so the cache serves what it holds and nothing waits out huggingface_hub's
    retries; the libraries' log lines and warnings are held back for the call; the one error says what to do.
    """
    import huggingface_hub.constants as hub_constants

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id, url = (cfg.hf_hub_id, cfg.url) if cfg else (None, None)
    if not (hub_id or url or (cfg and cfg.file)):
        raise WeightsError(f"timm has no pretrained weights for {name!r}; {HUB_REMEDY}")
    where = hub_constants.ENDPOINT if hub_id else str(url)
    offline = bool(hub_constants.HF_HUB_OFFLINE)
    reachable = offline or _reachable(where)
    if not reachable and not hub_id and not _in_torch_cache(str(url)):
        raise WeightsError(f"no pretrained weights for {name!r}: {where} cannot be reached; {HUB_REMEDY}")
    try:
        with _hub_call(offline=not reachable or offline):
            return timm.create_model(name, pretrained=True, num_classes=1)
    except (OSError, RuntimeError, ValueError) as exc:
        if offline:
            why = "the Hugging Face cache does not hold them and HF_HUB_OFFLINE=1 forbids downloading"
        elif not reachable:
            why = f"the hub at {where} cannot be reached and the Hugging Face cache does not hold them"
        else:
            why = f"loading them from {where} failed ({type(exc).__name__}: {_first_line(exc)})"
        raise WeightsError(f"no pretrained weights for {name!r}: {why}; {HUB_REMEDY}") from None


HUB_REMEDY = ("pass --weights FILE, make one with `tlsearch pretrain`, or set HF_HUB_OFFLINE=1 with the weights in "
              "the Hugging Face cache")
_HUB_LOGGERS = ("huggingface_hub", "timm", "httpx", "httpcore", "urllib3", "filelock")


def _reachable(url: str, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host (or the proxy the environment names for it) opens in time.

    Run in a thread so that a name lookup hanging on an unreachable DNS server cannot exceed the timeout either.
    """
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    opened: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=timeout_s).close()
            opened.append(True)
        except OSError:
            opened.append(False)

    thread = threading.Thread(target=probe, name="tlsearch-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(opened and opened[0])


def _in_torch_cache(url: str) -> bool:
    """Whether timm's download of a plain-URL checkpoint would be served by torch.hub's cache."""
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(url).path).name).is_file()


@contextmanager
def _hub_call(offline: bool) -> Iterator[None]:
    """huggingface_hub in (or out of) offline mode, with its, timm's and the HTTP stack's logging held back."""
    import huggingface_hub.constants as hub_constants

    loggers = [logging.getLogger(n) for n in _HUB_LOGGERS]
    levels = [lg.level for lg in loggers]
    was_offline = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = offline  # read by huggingface_hub on every request (constants.is_offline_mode)
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hub_constants.HF_HUB_OFFLINE = was_offline
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else "no detail"


def param_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names in coarse groups, input side first, head (plus unmatched parameters) last."""
    names = [n for n, _ in model.named_parameters()]
    matcher = getattr(model, "group_matcher", None)
    if matcher is not None:
        grouped = group_parameters(model, matcher(coarse=True))
        groups = [list(grouped[k]) for k in sorted(grouped)]
    else:
        groups = _fallback_groups(model)
    groups = [g for g in groups if g]
    assert sorted(n for g in groups for n in g) == sorted(names), "parameter grouping lost parameters"
    return groups


def _fallback_groups(model: nn.Module) -> list[list[str]]:
    head_prefixes = _classifier_prefixes(model)
    groups: list[list[str]] = []
    head: list[str] = []
    root: list[str] = []
    for child_name, child in model.named_children():
        names = [f"{child_name}.{n}" for n, _ in child.named_parameters()]
        if any(n.startswith(p) for p in head_prefixes for n in names):
            head.extend(names)
        elif names:
            groups.append(names)
    for n, _ in model.named_parameters(recurse=False):
        root.append(n)
    if groups and root:
        groups[0] = root + groups[0]
    elif root:
        groups.append(root)
    return groups + [head] if head else groups


def _classifier_prefixes(model: nn.Module) -> list[str]:
    classifier = getattr(model, "get_classifier", lambda: None)()
    if classifier is None:
        return []
    return [name + "." for name, module in model.named_modules() if module is classifier and name]


def num_groups(model: nn.Module) -> int:
    return len(param_groups(model))


def apply_freeze(model: nn.Module, depth: int) -> FreezePlan:
    """Freeze the first ``depth`` parameter groups, including their BatchNorm statistics."""
    groups = param_groups(model)
    if not 0 <= depth < len(groups):
        raise ModelError(f"freeze depth {depth} is outside 0..{len(groups) - 1} for this model")
    frozen = {n for g in groups[:depth] for n in g}
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    _freeze_batchnorm(model, frozen)
    backbone = tuple(n for g in groups[depth:-1] for n in g)
    head = tuple(groups[-1]) if depth < len(groups) else ()
    return FreezePlan(depth, len(groups), tuple(sorted(frozen)), backbone, head)


def _freeze_batchnorm(model: nn.Module, frozen: set[str]) -> None:
    """Swap every BatchNorm layer of the frozen groups for one whose statistics no longer move.

    A BatchNorm with affine parameters is frozen when they all are; one without (``affine=False``) goes with the
    nearest parameter before it in module order (or after it, at the very start). Affine 2-d layers (and timm's
    BatchNormAct2d) become timm's FrozenBatchNorm2d; the others (BatchNorm1d in LeViT, RepViT, EfficientViT-MSRA,
    SHViT, BatchNorm3d, affine-free layers) a :class:`FrozenBatchNorm` of the same state-dict keys.
    """
    targets, pending, last_frozen = [], [], None
    for name, module in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        # (a BatchNorm without running statistics normalises by the batch in any mode: nothing to freeze)
        is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats and bool(name)
        if is_norm and not own:
            if last_frozen:
                targets.append(name)
            elif last_frozen is None:
                pending.append(name)  # before any parameter: decided by the first one
            continue
        if own:
            if last_frozen is None and own[0] in frozen:
                targets += pending
            last_frozen = own[-1] in frozen
            if is_norm and all(p in frozen for p in own):
                targets.append(name)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        norm = getattr(parent, child)
        timm_kind = isinstance(norm, BatchNormAct2d) or (
            norm.affine and isinstance(norm, nn.BatchNorm2d | nn.SyncBatchNorm))
        parent.add_module(child, freeze_batch_norm_2d(norm) if timm_kind else FrozenBatchNorm(norm))


class FrozenBatchNorm(nn.Module):
    """A BatchNorm of any dimension with fixed statistics and affine terms (buffers), always in inference mode.

    What timm's FrozenBatchNorm2d is for 2-d layers, for BatchNorm1d/3d and affine-free layers; its state-dict keys
    are the layer's own (``weight`` and ``bias`` only when it had them), less ``num_batches_tracked``.
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        assert norm.running_mean is not None and norm.running_var is not None, "a BatchNorm without statistics"
        self.num_features, self.eps = norm.num_features, norm.eps
        self.register_buffer("running_mean", norm.running_mean.detach().clone())
        self.register_buffer("running_var", norm.running_var.detach().clone())
        affine = norm.affine and norm.weight is not None
        self.register_buffer("weight", norm.weight.detach().clone() if affine else None)
        self.register_buffer("bias", norm.bias.detach().clone() if affine else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                        training=False, momentum=0.0, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def input_spec(model: nn.Module, image_size: int | None = None) -> InputSpec:
    """The model's own timm data config, with the square size optionally overridden."""
    cfg = timm.data.resolve_data_config({}, model=model)
    chans, height, _ = cfg["input_size"]
    return InputSpec(
        in_chans=int(chans),
        size=int(image_size or height),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
    )


def classifier_keys(model: nn.Module) -> set[str]:
    prefixes = _classifier_prefixes(model)
    return {k for k in model.state_dict() if any(k.startswith(p) for p in prefixes)}


def check_weights_file(path: str | Path) -> Path:
    """The weights file as a Path; refused, without reading it, when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    return path


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read safetensors, or a torch state dict with ``weights_only=True`` (a pickle that runs code is refused)."""
    path = check_weights_file(path)
    try:
        if path.suffix == ".safetensors":
            return load_safetensors(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the user's file, reported in one line
        raise WeightsError(f"weights file {path}: cannot be read safely ({type(exc).__name__})") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def resolve_source(
    model_name: str, weights: str | None, default_spec: InputSpec, image_size: int | None = None
) -> SourceWeights:
    """Resolve pretrained weights: a local file (with optional JSON sidecar) or the timm hub / HF cache."""
    if weights is None:
        model = hub_model(model_name)
        state = {k: v for k, v in model.state_dict().items() if k not in classifier_keys(model)}
        spec = input_spec(model, image_size)
        return SourceWeights(state, 0, spec, origin=f"hub:{model_name}")
    state = load_state_dict_file(weights)
    meta = read_sidecar(weights)
    if meta and meta.get("model") not in (None, model_name):
        raise WeightsError(
            f"weights file {weights} was trained for model {meta['model']!r}, not {model_name!r}; "
            f"use --model {meta['model']}"
        )
    spec = InputSpec(**{**asdict(default_spec), **meta["input"]}) if meta.get("input") else default_spec
    if image_size:
        spec = InputSpec(spec.in_chans, image_size, spec.mean, spec.std)
    spec = InputSpec(spec.in_chans, spec.size, tuple(spec.mean), tuple(spec.std))
    num_classes = int(meta.get("num_classes") or _guess_num_classes(model_name, state, spec.in_chans))
    source = SourceWeights(state, num_classes, spec, origin=str(weights))
    build(model_name, num_classes=2, source=source)  # fail now, before Ray starts, if it does not fit
    return source


def read_sidecar(weights: str | Path) -> dict[str, Any]:
    path = sidecar_path(weights)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"sidecar {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"sidecar {path}: expected a JSON object")
    return data


def _guess_num_classes(model_name: str, state: Mapping[str, torch.Tensor], in_chans: int) -> int:
    probe = create(model_name, num_classes=7, in_chans=in_chans)
    for key in classifier_keys(probe):
        if key.endswith("weight") and key in state:
            return int(state[key].shape[0])
    return 0


def build(
    model_name: str, num_classes: int, source: SourceWeights | None, spec: InputSpec | None = None
) -> nn.Module:
    """A model for ``num_classes`` target classes: pretrained from ``source`` (classifier reset) or scratch."""
    if source is None:
        if spec is None:
            raise ModelError("a scratch model needs an input spec")
        return create(model_name, num_classes=num_classes, in_chans=spec.in_chans)
    model = create(model_name, num_classes=source.num_classes, in_chans=source.input_spec.in_chans)
    expected = set(model.state_dict())
    if source.num_classes == 0:
        expected -= classifier_keys(model)
    # A FrozenBatchNorm2d (a frozen group in a trial's checkpoint) has no num_batches_tracked: not a misfit.
    missing = sorted(k for k in expected - set(source.state_dict) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(source.state_dict) - set(model.state_dict()))
    if missing or unexpected:
        raise WeightsError(
            f"weights from {source.origin} do not fit {model_name!r}: "
            f"{len(missing)} missing key(s) (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    try:
        model.load_state_dict(source.state_dict, strict=False)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise WeightsError(f"weights from {source.origin} do not fit {model_name!r}: {detail}") from None
    model.reset_classifier(num_classes)  # type: ignore[operator]
    return model


def save(model: nn.Module, path: str | Path, sidecar: Mapping[str, Any]) -> Path:
    """Write safetensors plus a JSON sidecar, each atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with replacing(path) as tmp:
        save_safetensors(state, str(tmp))
    with replacing(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(dict(sidecar), indent=2, sort_keys=True) + "\n")
    return path


def train_flops_per_sample(model: nn.Module, spec: InputSpec, loss_fn: nn.Module) -> tuple[float, float]:
    """Measured (train, forward) FLOPs per sample for one training step as the model is frozen now.

    Counted by ``torch.utils.flop_counter`` on a real forward and backward, so the backward covers only what
    autograd actually runs: nothing below the first trainable layer, no input gradient for that layer.
    """
    from torch.utils.flop_counter import FlopCounterMode

    batch = 2
    device = next(model.parameters()).device
    x = torch.randn(batch, spec.in_chans, spec.size, spec.size, device=device)
    model = copy.deepcopy(model).train()  # a copy: the probe step must not move BatchNorm statistics
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        forward = counter.get_total_flops()
        loss = loss_fn(out, torch.zeros(batch, dtype=torch.long, device=device))
        if loss.requires_grad:
            loss.backward()
    total = counter.get_total_flops()
    return total / batch, forward / batch
