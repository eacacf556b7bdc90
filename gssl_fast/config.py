"""Recipe sections: one frozen dataclass each, loaded from TOML.

Every key has a default, so ``[data]\\nname = "shapes"`` is a whole recipe. Functions
elsewhere take their own section (``DataConfig``, ``OptimConfig``...), never a Recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipelines.errors import UserError

try:
    import tomllib
except ModuleNotFoundError:  # python 3.10: the same parser, packaged separately
    import tomli as tomllib


@dataclass(frozen=True)
class DataConfig:
    name: str = "shapes"  # a key of pipelines.datasets.DATASETS
    root: str = ""  # dataset folder (CIFAR batches, Tiny-ImageNet, ImageFolder); unused by shapes
    image_size: int = 32  # side in pixels after resizing; even when a pretext task is on
    crop_padding: int = 4  # pixels of zero padding of the random crop; 0 disables the crop
    hflip: bool = True  # random whole-image horizontal flip of training images
    mean: tuple[float, ...] = ()  # per-channel normalization mean in [0, 1]; () = dataset default
    std: tuple[float, ...] = ()  # per-channel std in [0, 1]; () = dataset default
    longtail: str = "none"  # "none" | "exp" | "step": long-tailed subsampling of the train split
    imbalance_ratio: float = 0.01  # rho = n_min / n_max of the long-tailed train split, in (0, 1]
    train_size: int = 10000  # images of the built-in dataset's train split
    val_size: int = 2000  # images of the built-in dataset's val split
    seed: int = 0  # seed of the built-in dataset's generator
    beton: str = ""  # FFCV .beton of the train split (train.loader = "ffcv"); "" = convert on first use


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet32_cifar"  # any timm.create_model name, plus gssl_fast.models' CIFAR nets
    pretrained: bool = False  # timm pretrained weights (must already be in the local cache)
    drop_rate: float = 0.0  # dropout before the heads
    channels_last: bool = False  # memory format of images and weights (faster on recent GPUs)


@dataclass(frozen=True)
class PretextConfig:
    tasks: tuple[str, ...] = ("rotation", "flip", "perm")  # subset of pipelines.localizable.TASKS; () = supervised only
    gate: str = "reference"  # "reference" (authors' code) | "learned" (paper text)
    combine: str = "gated"  # "gated" | "sum" | "mean"
    lam: float = 0.1  # TOML key "lambda": weight of the pretext loss, >= 0
    flip_axis: str = "horizontal"  # "horizontal" (left-right) | "vertical" (the LT-CIFAR script)


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"  # "ce" | "ldam"
    ldam_max_margin: float = 0.5  # largest per-class margin of LDAM
    ldam_scale: float = 30.0  # logit scale s of LDAM (cosine logits times s)
    drw: bool = False  # deferred re-weighting with class-balanced weights
    drw_start_epoch: int = 160  # first epoch (0-based) with re-weighting
    drw_beta: float = 0.9999  # beta of the class-balanced weights


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1  # peak learning rate (for the whole batch, no scaling rule)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" | "step" | "constant", updated every optimizer step
    warmup_epochs: float = 0.0  # linear warm-up from ~0 to lr
    milestones: tuple[int, ...] = (160, 180)  # "step": epochs at which the factor changes
    milestone_factors: tuple[float, ...] = (0.01, 0.0001)  # "step": lr multiplier from each milestone on


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128  # per process
    eval_batch_size: int = 256  # per process
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16"
    grad_accum_steps: int = 1
    loader: str = "torch"  # "torch" | "dali" | "ffcv"
    cpu: bool = False  # train on the CPU even where CUDA is present
    num_threads: int = 0  # torch threads per process; 0 = the cores this process may use
    steps_per_epoch: int = 0  # cap on optimizer steps per epoch; 0 = the whole epoch of the main stream
    keep_checkpoints: int = 2  # newest checkpoints kept in the run folder
    steps: int = 0  # optimizer steps of the whole run; 0 = train.epochs epochs of the main stream


def default_method_config() -> Any:
    """``[method]`` of a recipe that has none: the supervised method's defaults."""
    return method_config_class(DEFAULT_METHOD, "the defaults")()


@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"  # run name: the recipe file's stem
    method: Any = field(default_factory=default_method_config)  # the method's own dataclass (gssl_fast.methods)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "pretext": PretextConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}

# [method] is the section of the training method: ``name`` picks one of
# gssl_fast.methods.METHODS, whose ``Config`` dataclass gives the section's other keys.
METHOD_SECTION = "method"
DEFAULT_METHOD = "supervised"

# TOML keys that are Python keywords, spelled differently in the dataclass.
KEY_ALIASES = {("pretext", "lambda"): "lam"}


def method_config_class(name: Any, source: str) -> type:
    """The ``Config`` dataclass of the method called ``name`` (``method.name``)."""
    from gssl_fast.methods import METHODS  # the registry imports the methods, which import this module

    if not isinstance(name, str) or name not in METHODS:
        raise UserError(f"method.name must be one of {', '.join(map(repr, METHODS))}, got {_show(name)} ({source})")
    return METHODS[name].Config


def section_class(section: str, d: dict, source: str) -> type:
    """The dataclass of ``section`` in the TOML-shaped dict ``d`` (``[method]`` depends on its name)."""
    if section == METHOD_SECTION:
        table = d.get(METHOD_SECTION, {})
        return method_config_class(table.get("name", DEFAULT_METHOD) if isinstance(table, dict) else None, source)
    return SECTIONS[section]


def section_keys(section: str, cls: type) -> tuple[str, ...]:
    """The TOML keys of ``section`` whose dataclass is ``cls``."""
    return tuple(_TOML_KEYS.get((section, f.name), f.name) for f in dataclasses.fields(cls))


# ---------------------------------------------------------------------------
# Loading: TOML -> dict -> typed sections -> value checks. Every problem is a
# UserError on one line naming the source (the file, plus the --set overrides when
# there are any), the key as spelled in TOML, the rule and the value found.

_TOML_KEYS = {(section, name): key for (section, key), name in KEY_ALIASES.items()}
VALID_KEYS = {section: section_keys(section, cls) for section, cls in SECTIONS.items()}
ALL_SECTIONS = (METHOD_SECTION, *SECTIONS)


def _show(value: Any) -> str:
    """A value as written in TOML: 'abc', 3, 0.1, true, ['rotation']."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_show, value)) + "]"
    return repr(value)


def _check_section(section: str, source: str) -> None:
    if section not in ALL_SECTIONS:
        valid = ", ".join(f"[{s}]" for s in ALL_SECTIONS)
        raise UserError(f"unknown section [{section}] in {source}; valid sections: {valid}")


def _check_key(section: str, key: str, valid: Sequence[str], source: str) -> None:
    if key not in valid:
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean '{section}.{close[0]}'?" if close else ""
        raise UserError(f"unknown key '{section}.{key}' in {source}; valid keys of [{section}]: {', '.join(valid)}{hint}")


def _check_layout(d: dict, source: str) -> None:
    """Every top-level entry is a known section table holding known keys."""
    for section, table in d.items():
        if section not in ALL_SECTIONS and not isinstance(table, dict):
            valid = ", ".join(f"[{s}]" for s in ALL_SECTIONS)
            raise UserError(f"key '{section}' in {source} is outside any section; move it under one of {valid}")
        _check_section(section, source)
        if not isinstance(table, dict):
            raise UserError(
                f"{section} = {_show(table)} in {source} must be a table: "
                f"write [{section}] on its own line, then one key = value per line"
            )
        valid = section_keys(section, section_class(section, d, source))
        for key in table:
            _check_key(section, key, valid, source)


# TOML has str, int, float, bool and arrays; the fields are str, int, float, bool and
# homogeneous tuples. An int is fine where a float is wanted; nothing else converts
# (true is not 1, "3" is not 3), and no field wants inf or nan.
_KINDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
_LIST_KINDS = {int: "a list of integers", float: "a list of finite numbers", str: "a list of strings"}


def _scalar(value: Any, kind: type) -> tuple[bool, Any]:
    """(ok, value converted to ``kind``) for one scalar."""
    if kind is bool or kind is str:
        return isinstance(value, kind), value
    if isinstance(value, bool):  # an int in Python, never in TOML
        return False, value
    if kind is int:
        return isinstance(value, int), value
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    return ok, float(value) if ok else value


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Checks ``value`` against the field type ``hint``; lists become tuples."""
    if typing.get_origin(hint) is tuple:
        kind = typing.get_args(hint)[0]
        pairs = [_scalar(v, kind) for v in value] if isinstance(value, (list, tuple)) else [(False, None)]
        if not all(ok for ok, _ in pairs):
            raise UserError(f"{key} must be {_LIST_KINDS[kind]}, got {_show(value)} ({source})")
        return tuple(v for _, v in pairs)
    ok, value = _scalar(value, hint)
    if not ok:
        raise UserError(f"{key} must be {_KINDS[hint]}, got {_show(value)} ({source})")
    return value


def _field_type(cls: type, section: str, key: str) -> Any:
    # The dataclasses' annotations are strings (postponed); resolve them to types.
    return typing.get_type_hints(cls)[KEY_ALIASES.get((section, key), key)]


def recipe_from_dict(d: dict, source: str) -> Recipe:
    """Builds and checks a Recipe from a TOML-shaped dict ``{section: {key: value}}``.

    Missing sections and keys take their defaults; ``source`` is what errors name
    (a file path, "--set"...). The name stays "recipe": ``load_recipe`` sets the stem.
    """
    _check_layout(d, source)
    sections = {}
    for section in ALL_SECTIONS:
        cls = section_class(section, d, source)
        kwargs = {}
        for key, value in d.get(section, {}).items():
            kwargs[KEY_ALIASES.get((section, key), key)] = _coerce(
                value, _field_type(cls, section, key), f"{section}.{key}", source
            )
        sections[section] = cls(**kwargs)
    recipe = Recipe(**sections)
    from gssl_fast.config_checks import check_recipe  # beside this module; it reads the dataclasses

    check_recipe(recipe, source)
    return recipe


# ---------------------------------------------------------------------------
# --set overrides: "section.key=value", the value parsed as a TOML value.


def _parse_value(text: str) -> Any:
    """A TOML value (3, 0.05, true, ['rotation']), or else the text as a bare string."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    # Text with a newline can parse as several keys: that is not one value.
    return parsed["v"] if list(parsed) == ["v"] else text


def apply_overrides(d: dict, overrides: Sequence[str]) -> dict:
    """A copy of the TOML-shaped dict ``d`` with each ``section.key=value`` set.

    The value is TOML (``3``, ``0.05``, ``true``, ``['rotation']``, ``"x"``); text that
    is not TOML is a bare string, so ``data.name=cifar10`` works. A string key takes
    the text as written unless it is a quoted string (``data.root=2024`` is "2024").
    """
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for item in overrides:
        where = f"--set '{item}'"
        path, eq, text = item.partition("=")
        parts = [p.strip() for p in path.split(".")]
        if not eq or len(parts) != 2 or not all(parts):
            raise UserError(
                f"{where}: an override must look like section.key=value, "
                f"e.g. train.epochs=3 or pretext.tasks=['rotation']"
            )
        section, key = parts
        _check_section(section, where)
        text = text.strip()
        value = _parse_value(text)
        # [method]'s keys depend on method.name, which a later --set may change: they
        # are checked with the merged recipe.
        if section != METHOD_SECTION:
            _check_key(section, key, VALID_KEYS[section], where)
            if _field_type(SECTIONS[section], section, key) is str and not isinstance(value, str):
                value = text
        table = merged.setdefault(section, {})
        if isinstance(table, dict):  # else recipe_from_dict reports the non-table section
            table[key] = value
    return merged


# ---------------------------------------------------------------------------
# Files.


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"recipe file not found: {path}; check the path (recipes live in recipes/)") from None
    except IsADirectoryError:
        raise UserError(f"recipe path is a folder, not a TOML file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: invalid TOML: the file is not UTF-8 text") from None


def load_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """Reads a recipe file, applies ``--set`` overrides, checks it; the name is the file stem."""
    path = Path(path)
    d = _read_toml(path)
    _check_layout(d, str(path))  # before merging, so a typo in the file names the file alone
    source = str(path)
    if overrides:
        d = apply_overrides(d, overrides)
        source = f"{path} with --set {' '.join(overrides)}"  # either may hold a bad value
    return dataclasses.replace(recipe_from_dict(d, source), name=path.stem)


def recipe_to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as a TOML-shaped dict: every key of every section, [method] first."""
    out = {}
    for section in ALL_SECTIONS:
        cfg = getattr(recipe, section)
        out[section] = {_TOML_KEYS.get((section, f.name), f.name): getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return out


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML, every key of every section, that load_recipe reads back.

    The name is not a key (it is the file's stem), so it appears in the header comment only.
    """
    import tomli_w

    header = f"# Resolved recipe '{recipe.name}': every key, defaults included.\n\n"
    return header + tomli_w.dumps(recipe_to_dict(recipe))


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Writes ``recipe_to_toml(recipe)`` to ``path`` atomically: a temp file, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(recipe_to_toml(recipe))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

