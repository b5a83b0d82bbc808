"""Finetuning protocols as presets, resolved against a FinetuneConfig.

Two families of presets, both with RSPNet's optimisation settings (reference/FACTS.md,
"Finetuning"; all layers trained, SGD momentum 0.9, weight decay 1e-4, no lr scaling with the
number of GPUs):

- ``rspnet``: RSPNet's released configs, as they are:

  ============  =======  =====  =====  ===================  ======
  backbone      dataset  batch  lr     schedule             epochs
  ============  =======  =====  =====  ===================  ======
  c3d           ucf101   20     0.005  cosine               30
  c3d           hmdb51   6      0.005  step at 50/70/90     100
  r2plus1d      ucf101   8      0.1    cosine               30
  r2plus1d      hmdb51   16     0.1    cosine               30
  ============  =======  =====  =====  ===================  ======

- ``paper``: what the paper reports against ("RSPNet* denotes that a 100-epoch finetuning is
  used", for all four RSPNet* rows): the same presets with 100 epochs everywhere (the cosine
  schedules stretched over 100 epochs; c3d/hmdb51 is unchanged).

``protocol = "auto"`` or ``"paper"`` takes the paper preset of (backbone, dataset), ``"rspnet"``
RSPNet's; a non-zero / non-empty config value (epochs, batch_size, lr, schedule, milestones)
overrides that field and is listed in ``overrides``. ``protocol = "custom"`` takes every value
from the config and fails, naming the keys, when one is missing. A preset can also be named
directly: ``"paper:c3d/hmdb51"``, ``"rspnet:c3d/hmdb51"`` or ``"c3d/hmdb51"`` (RSPNet's).
``batch_size`` is per process (RSPNet trains on one GPU; under torchrun the global batch is
batch_size × world size).

Test-time aggregation follows the family (:func:`view_aggregation`): the paper and RSPNet
presets average the views' logits per video, as RSPNet's test script does; ``custom`` keeps
averaging softmax probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.core.errors import ConfigError

STEP_GAMMA = 0.1  # lr multiplier at each milestone of a "step" schedule


@dataclass(frozen=True)
class FinetuneProtocol:
    """Concrete optimisation settings of one finetuning run."""

    name: str
    epochs: int
    batch_size: int
    lr: float
    schedule: str  # "cosine" | "step"
    milestones: tuple[int, ...] = ()
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gamma: float = STEP_GAMMA
    overrides: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "schedule": self.schedule, "milestones": list(self.milestones), "momentum": self.momentum,
                "weight_decay": self.weight_decay, "gamma": self.gamma, "overrides": list(self.overrides)}


PRESETS: dict[tuple[str, str], FinetuneProtocol] = {
    ("c3d", "ucf101"): FinetuneProtocol("rspnet:c3d/ucf101", 30, 20, 0.005, "cosine"),
    ("c3d", "hmdb51"): FinetuneProtocol("rspnet:c3d/hmdb51", 100, 6, 0.005, "step", (50, 70, 90)),
    ("r2plus1d", "ucf101"): FinetuneProtocol("rspnet:r2plus1d/ucf101", 30, 8, 0.1, "cosine"),
    ("r2plus1d", "hmdb51"): FinetuneProtocol("rspnet:r2plus1d/hmdb51", 30, 16, 0.1, "cosine"),
}
PAPER_EPOCHS = 100  # "RSPNet* denotes that a 100-epoch finetuning is used" (all four RSPNet* rows)
PAPER_PRESETS: dict[tuple[str, str], FinetuneProtocol] = {
    key: replace(p, name="paper:" + p.name.removeprefix("rspnet:"), epochs=PAPER_EPOCHS)
    for key, p in PRESETS.items()
}
FAMILIES = {"paper": PAPER_PRESETS, "rspnet": PRESETS}


def view_aggregation(protocol_name: str | None) -> str:
    """How a video's test views are combined: ``"logits"`` (mean logits, RSPNet's test script) for
    the paper and RSPNet presets, ``"softmax"`` (mean probabilities) for custom or unknown protocols."""
    family = (protocol_name or "").partition(":")[0]
    return "logits" if family in FAMILIES else "softmax"


def preset(backbone: str, dataset: str, family: str = "rspnet") -> FinetuneProtocol:
    """The ``family`` ("paper" or "rspnet") preset for (backbone, dataset); a clear error when there is none."""
    key = (backbone.lower(), dataset.lower())
    table = FAMILIES[family]
    if key not in table:
        known = ", ".join(f"{b}/{d}" for b, d in table)
        raise ConfigError(
            f"finetune.protocol: the {family} protocol has no finetuning preset for backbone {backbone!r} on "
            f"dataset {dataset!r} (presets: {known}); set finetune.protocol = \"custom\" and give "
            f"finetune.epochs, batch_size, lr and schedule (and milestones for a step schedule)")
    return table[key]


def _named_preset(name: str, backbone: str, dataset: str) -> FinetuneProtocol:
    """The preset a protocol name asks for: auto / paper / rspnet, or [family:]backbone/dataset."""
    if name == "auto":
        return preset(backbone, dataset, "paper")
    if name in FAMILIES:
        return preset(backbone, dataset, name)
    family, sep, rest = name.partition(":")
    if not sep:
        family, rest = "rspnet", name
    if family in FAMILIES and "/" in rest:
        b, _, d = rest.partition("/")
        return preset(b, d, family)
    presets = ", ".join(f"{b}/{d}" for b, d in PRESETS)
    raise ConfigError(f"finetune.protocol: {name!r} is not 'auto', 'paper', 'rspnet', 'custom' or a preset "
                      f"'[paper:|rspnet:]<backbone>/<dataset>' (presets: {presets})")


def _check(p: FinetuneProtocol) -> FinetuneProtocol:
    where = f"finetune protocol {p.name!r}"
    if p.schedule not in ("cosine", "step"):
        raise ConfigError(f"{where}: schedule must be 'cosine' or 'step', got {p.schedule!r}")
    if p.schedule == "step" and not p.milestones:
        raise ConfigError(f"{where}: a step schedule needs finetune.milestones (epochs at which lr is x{p.gamma})")
    if list(p.milestones) != sorted(set(p.milestones)) or any(m < 1 for m in p.milestones):
        raise ConfigError(f"{where}: milestones must be increasing positive epochs, got {list(p.milestones)}")
    if p.epochs < 1 or p.batch_size < 1 or p.lr <= 0:
        raise ConfigError(f"{where}: epochs, batch_size and lr must be positive "
                          f"(got {p.epochs}, {p.batch_size}, {p.lr})")
    return p


def resolve_protocol(cfg: Any, backbone: str, dataset: str | None = None) -> FinetuneProtocol:
    """Turn ``cfg`` (a FinetuneConfig) into concrete settings; ``dataset`` defaults to ``cfg.dataset``."""
    dataset = dataset if dataset is not None else cfg.dataset
    name = (cfg.protocol or "auto").strip()
    given = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
             "schedule": cfg.schedule, "milestones": tuple(cfg.milestones)}
    given = {k: v for k, v in given.items() if v}
    common = {"momentum": cfg.momentum, "weight_decay": cfg.weight_decay}
    if name == "custom":
        missing = [k for k in ("epochs", "batch_size", "lr", "schedule") if k not in given]
        if given.get("schedule") == "step" and "milestones" not in given:
            missing.append("milestones")
        if missing:
            raise ConfigError(
                "finetune.protocol = \"custom\" takes every value from the config, but "
                + ", ".join(f"finetune.{k}" for k in missing)
                + (" is" if len(missing) == 1 else " are") + " not set (0 / empty means unset)")
        return _check(FinetuneProtocol("custom", **given, **common))
    base = _named_preset(name, backbone, dataset)
    fields_: dict[str, Any] = {"epochs": base.epochs, "batch_size": base.batch_size, "lr": base.lr,
               "schedule": base.schedule, "milestones": base.milestones}
    if given.get("schedule") == "cosine" and "milestones" not in given:
        fields_["milestones"] = ()
    fields_.update(given)
    over = tuple(k for k in given if given[k] != getattr(base, k))
    if base.momentum != cfg.momentum:
        over += ("momentum",)
    if base.weight_decay != cfg.weight_decay:
        over += ("weight_decay",)
    return _check(FinetuneProtocol(base.name, **fields_, **common, overrides=over))
