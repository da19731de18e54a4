"""Reading, writing and checking run configurations: flags, presets, YAML files, stored configs.

Precedence, lowest to highest: dataclass defaults < ``--preset`` < ``--config`` YAML < flags.
What the settings are (fields, defaults, valid ranges, presets, the setting -> estimator option
mapping) is :mod:`darts_amend.cli.settings`; this module turns them into flags
(:func:`add_config_flags`), reads them from flags, YAML files and a stored ``config.json``
(:func:`build_config`, :func:`config_from_dict`; every value checked as it is read), writes them
(:func:`config_to_dict`) and refuses a config that cannot run as meant (:func:`check_config`),
raising :class:`CLIError`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from darts_amend.options import ESTIMATOR_OPTIONS, PRODUCT_OPTIONS, validate_options

from .settings import OPTION_FLAGS, SETTING_OPTIONS, SearchConfig, estimator_options

__all__ = [
    "CLIError",
    "check_config",
    "add_config_flags",
    "build_config",
    "config_to_dict",
    "config_from_dict",
]


class CLIError(Exception):
    """Bad input to the command line: printed as ``darts-amend: error: ...``, exit code 2."""


# --------------------------------------------------------------------------- flags


def _base_type(annotation: str) -> tuple[str, bool]:
    parts = [p.strip() for p in str(annotation).split("|")]
    optional = "None" in parts
    parts = [p for p in parts if p != "None"]
    return parts[0], optional


_CASTS = {"int": int, "float": float, "str": str}


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field, default SUPPRESS so that only flags actually given are seen."""
    group = parser.add_argument_group(f"{cls.__name__} (defaults and valid values in brackets)")
    for f in dataclasses.fields(cls):
        base, optional = _base_type(f.type)
        names = [f"--{f.name}"]
        alias = f.metadata.get("alias")
        for name in (f"--{f.name}", alias):  # each spelling with "_" also with "-"
            if name and name not in names:
                names.append(name)
            if name and "_" in name and name.replace("_", "-") not in names:
                names.append(name.replace("_", "-"))
        help_raw = f.metadata.get("help", "")
        # None: chosen at run time; "auto" where the help says how, else the data set's default
        default_txt = f.default if f.default is not None else (
            "auto" if "(default:" in help_raw else "dataset default")
        valid, choices = f.metadata.get("valid"), f.metadata.get("choices")
        valid_txt = (f"; {valid.describe()}" if valid is not None else
                     f"; one of {', '.join(choices)}" if choices else "")
        help_txt = f"{help_raw} [{default_txt}{valid_txt}]"
        if base == "bool":
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_txt)
        else:
            group.add_argument(*names, dest=f.name, type=_CASTS[base],
                               choices=f.metadata.get("choices"), default=argparse.SUPPRESS,
                               help=help_txt, metavar=base.upper())


def _coerce(cls: type, key: str, value: Any, source: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    key = key.replace("-", "_")
    aliases = {f.metadata["alias"].lstrip("-").replace("-", "_"): f.name
               for f in fields.values() if f.metadata.get("alias")}
    key = aliases.get(key, key)  # an old spelling (amend_eta) names its setting (eta)
    if key not in fields:
        import difflib

        close = difflib.get_close_matches(key, list(fields), n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise CLIError(f"{source}: unknown setting {key!r} ({hint}the settings are the flags "
                       f"of --help, without the dashes)")
    f = fields[key]
    base, optional = _base_type(f.type)
    name = f"--{key}" if source == "flags" else f"{source}: {key}"
    if value is None:
        if optional:
            return key, None
        raise CLIError(f"{name} may not be null")
    try:
        if base == "bool":
            if not isinstance(value, bool):
                raise TypeError
            out: Any = value
        elif base == "float":
            if isinstance(value, bool):
                raise TypeError
            out = float(value)
            if not math.isfinite(out):
                raise CLIError(f"{name} must be a finite number, got {value!r}")
        elif base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            out = int(value)
        else:
            out = str(value)
    except (TypeError, ValueError):
        raise CLIError(f"{name} must be {base}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and out not in choices:
        raise CLIError(f"{name}: invalid value {out!r}; choose one of {', '.join(choices)}")
    valid = f.metadata.get("valid")
    if valid is not None and out not in valid:
        what = f"invalid --{key}" if source == "flags" else f"{source}: invalid {key}"
        raise CLIError(f"{what} {out!r} (must be {valid.describe()})")
    return key, out


def _load_yaml(path: str, cls: type) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise CLIError(f"config file {p} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise CLIError(f"config file {p} must hold a mapping of settings, "
                       f"got {type(data).__name__}")
    out: dict[str, Any] = {}
    for k, v in data.items():
        key, value = _coerce(cls, k, v, f"config file {p}")
        if key in out:
            raise CLIError(f"config file {p}: {k!r} sets {key!r} a second time")
        out[key] = value
    return out


def build_config(cls: type, flags: Mapping[str, Any], presets: dict[str, dict[str, Any]], *,
                 preset: str | None = None, config_file: str | None = None,
                 base: dict[str, Any] | None = None) -> Any:
    """Defaults (or ``base``, a stored config) < ``preset`` < the YAML ``config_file`` <
    ``flags`` (the settings given on the command line, by field name)."""
    given: dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            raise CLIError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
        given.update(presets[preset])
    if config_file:
        given.update(_load_yaml(config_file, cls))
    names = {f.name for f in dataclasses.fields(cls)}
    given.update({k: v for k, v in flags.items() if k in names})
    values = dict(config_from_dict(cls, base, "the stored config.json").__dict__) \
        if base is not None else {}
    values.update(given)
    return config_from_dict(cls, values, "flags")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    kwargs = dict(_coerce(cls, k, v, source) for k, v in data.items())
    return cls(**kwargs)


# --------------------------------------------------------------------------- validation


def _check_ranges(cfg: Any) -> None:
    """Every numeric setting inside its declared range (``_coerce`` checks each value as it is
    read; this catches values set in code, e.g. by ``resolve_train_defaults``)."""
    for f in dataclasses.fields(cfg):
        valid, value = f.metadata.get("valid"), getattr(cfg, f.name)
        if valid is not None and value is not None and value not in valid:
            raise CLIError(f"invalid --{f.name} {value!r} (must be {valid.describe()})")


def _unused(cfg: Any, name: str) -> bool:
    """True when ``name`` was set to something other than its default."""
    f = {f.name: f for f in dataclasses.fields(cfg)}[name]
    return getattr(cfg, name) != f.default


def _users(option: str) -> str:
    """The estimators that read ``option``, in words (for ``applies to ... only``)."""
    if option in PRODUCT_OPTIONS:
        return "the estimators with Hessian products"
    users = [name for name, accepted in ESTIMATOR_OPTIONS.items() if option in accepted]
    return "--estimator " + (users[0] if len(users) == 1 else
                             f"{', '.join(users[:-1])} or {users[-1]}")


def _read_by_estimator(option: str) -> Any:
    return lambda c: option in ESTIMATOR_OPTIONS[c.estimator]


# settings that only some choices read: (setting, is it read?, when it is read, the deciding
# setting). A setting given a non-default value that the run would not read is refused (a flag
# that does nothing is a defect). The estimator options' rows follow from the registry.
_ONLY_WITH: tuple[tuple[str, Any, str, str], ...] = (
    ("fd_r", lambda c: c.hvp_mode != "exact",
     "--hvp_mode finite_difference or forward_difference", "hvp_mode"),
    *((name, _read_by_estimator(option), _users(option), "estimator")
      for name, option in SETTING_OPTIONS.items()),
    ("early_stop_window", lambda c: c.early_stop, "--early_stop", "early_stop"),
    ("early_stop_lag", lambda c: c.early_stop, "--early_stop", "early_stop"),
    ("early_stop_factor", lambda c: c.early_stop, "--early_stop", "early_stop"),
    ("early_stop_start", lambda c: c.early_stop, "--early_stop", "early_stop"),
    ("cutout_length", lambda c: bool(c.cutout), "--cutout", "cutout"),
    ("auxiliary_weight", lambda c: bool(c.auxiliary), "--auxiliary", "auxiliary"),
    ("image_size", lambda c: c.dataset in ("imagenet", "folder", "fake"),
     "--dataset imagenet, folder or fake", "dataset"),
    ("fake_size", lambda c: c.dataset == "fake", "--dataset fake", "dataset"),
    ("data", lambda c: c.dataset not in ("digits", "fake"),
     "--dataset cifar10, cifar100, imagenet or folder", "dataset"),
    ("download", lambda c: c.dataset in ("cifar10", "cifar100"),
     "--dataset cifar10 or cifar100", "dataset"),
)


def check_config(cfg: Any, world: int = 1) -> None:
    """Refuse a config that cannot run as meant: a value outside its declared range, or
    settings that contradict each other. Raises :class:`CLIError`; reads and writes nothing."""
    _check_ranges(cfg)
    search = isinstance(cfg, SearchConfig)
    if cfg.batch_size is not None and cfg.batch_size % world:
        raise CLIError(f"--batch_size {cfg.batch_size} (the global batch) must be divisible by "
                       f"the {world} torchrun processes")
    cosine = search or cfg.lr_schedule == "cosine"
    if not cosine and cfg.learning_rate_min != 0:
        raise CLIError(f"--learning_rate_min applies to --lr_schedule cosine only (the linear "
                       f"schedule decays to 0), got {cfg.learning_rate_min}")
    if cosine and cfg.learning_rate is not None and cfg.learning_rate_min > cfg.learning_rate:
        raise CLIError(f"--learning_rate_min {cfg.learning_rate_min} is above --learning_rate "
                       f"{cfg.learning_rate}: the cosine schedule would raise the learning rate "
                       f"instead of lowering it")
    for name, read, what, decider in _ONLY_WITH:
        if hasattr(cfg, name) and _unused(cfg, name) and not read(cfg):
            now = getattr(cfg, decider)
            got = f"--{decider} {now}" if not isinstance(now, bool) else f"no --{decider}"
            raise CLIError(f"--{name} applies to {what} only (got {got})")
    if not search:
        return
    if cfg.early_stop and cfg.diag_every < 1:
        raise CLIError("--early_stop decides on the alpha-Hessian eigenvalue, which is only "
                       "measured with --diag_every N (N >= 1)")
    if cfg.init_channels % cfg.partial_channels:
        raise CLIError(f"--partial_channels {cfg.partial_channels} must divide "
                       f"--init_channels {cfg.init_channels}")
    if cfg.dataset == "imagenet" and cfg.init_channels % 2:
        raise CLIError(f"--init_channels {cfg.init_channels}: the ImageNet stem needs an even "
                       f"channel count")
    local = cfg.batch_size // world
    if cfg.second_order_batch > local:
        raise CLIError(f"--amend_second_order_batch {cfg.second_order_batch} is larger than the "
                       f"per-process batch {local} (0 means the whole batch)")
    product_batch = cfg.second_order_batch or local
    if cfg.hvp_chunks > product_batch:
        raise CLIError(f"--amend_chunks {cfg.hvp_chunks} is more than the {product_batch} "
                       f"samples the Hessian products use (one sample per chunk at most)")
    try:
        validate_options(cfg.estimator, estimator_options(cfg))
    except (TypeError, ValueError) as err:
        msg = str(err)
        for key, flag in OPTION_FLAGS.items():  # name the flag, not the library's keyword
            msg = msg.replace(f"invalid {key}:", f"invalid {flag}")
        raise CLIError(msg) from None
