"""Recipes: TOML in, checked sections out (``gssl_fast.sections``), TOML written back.

Every problem is a UserError on one line naming the source (the file, plus the --set
overrides when there are any), the key as spelled in TOML, the rule and the value found.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from pathlib import Path
from typing import Any, Sequence

import tomli_w

from gssl_fast.config_checks import check_recipe, show
from pipelines.errors import UserError
from gssl_fast.methods import DEFAULT_METHOD, METHODS, config_class
from gssl_fast.sections import (  # noqa: F401  (the sections are part of this module's interface)
    KEY_ALIASES,
    SECTIONS,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PretextConfig,
    Recipe,
    TrainConfig,
)
from pipelines.atomic import write_text_atomic

try:
    import tomllib
except ModuleNotFoundError:  # python 3.10: the same parser, packaged separately
    import tomli as tomllib


# [method] is the section of the training method: ``name`` picks one of
# gssl_fast.methods.METHODS, whose ``Config`` dataclass gives the section's other keys (and
# whose ``check`` classmethod, if it has one, the method's rules across sections).
METHOD_SECTION = "method"


def method_config_class(name: Any, source: str) -> type:
    """The ``Config`` dataclass of the method called ``name`` (``method.name``)."""
    if not isinstance(name, str) or name not in METHODS:
        raise UserError(f"method.name must be one of {', '.join(map(repr, METHODS))}, got {show(name)} ({source})")
    return config_class(name)


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


def _check_section(section: str, source: str) -> None:
    if section not in ALL_SECTIONS:
        valid = ", ".join(f"[{s}]" for s in ALL_SECTIONS)
        close = difflib.get_close_matches(section, ALL_SECTIONS, n=1)
        hint = f"; did you mean [{close[0]}]?" if close else ""
        raise UserError(f"unknown section [{section}] in {source}; valid sections: {valid}{hint}")


def _keys_by_section(d: dict) -> dict[str, tuple[str, ...]]:
    """The TOML keys of every section of the TOML-shaped dict ``d``; [method]'s are
    those of the method it names (none while that name is not a method's)."""
    table = d.get(METHOD_SECTION, {})
    name = table.get("name", DEFAULT_METHOD) if isinstance(table, dict) else None
    method = section_keys(METHOD_SECTION, config_class(name)) if isinstance(name, str) and name in METHODS else ()
    return {METHOD_SECTION: method, **VALID_KEYS}


def _suggest(section: str, key: str, known: dict[str, Sequence[str]]) -> list[str]:
    """``section.key`` names to suggest for an unknown ``key`` of ``section``."""
    # The same key in another section first (train.lr is optim.lr): a close spelling in
    # its own section would hide it (data.batch_size is close to data.image_size).
    elsewhere = [f"{s}.{key}" for s, keys in known.items() if s != section and key in keys]
    if elsewhere:
        return elsewhere
    close = difflib.get_close_matches(key, known.get(section, ()), n=1)
    if close:
        return [f"{section}.{close[0]}"]
    others = {k: s for s, keys in known.items() if s != section for k in keys}
    return [f"{others[k]}.{k}" for k in difflib.get_close_matches(key, list(others), n=1)]


def _did_you_mean(names: Sequence[str]) -> str:
    return f"; did you mean {' or '.join(repr(n) for n in names)}?" if names else ""


def _check_key(section: str, key: str, known: dict[str, Sequence[str]], source: str) -> None:
    valid = known[section]
    if key not in valid:
        hint = _did_you_mean(_suggest(section, key, known))
        raise UserError(f"unknown key '{section}.{key}' in {source}; valid keys of [{section}]: {', '.join(valid)}{hint}")


def _check_layout(d: dict, source: str) -> None:
    """Every top-level entry is a known section table holding known keys."""
    for section, table in d.items():
        if section not in ALL_SECTIONS and not isinstance(table, dict):
            valid = ", ".join(f"[{s}]" for s in ALL_SECTIONS)
            owners = [s for s, keys in _keys_by_section(d).items() if section in keys]
            where = " or ".join(f"[{s}]" for s in owners) if owners else f"one of {valid}"
            raise UserError(f"key '{section}' in {source} is outside any section; move it under {where}")
        _check_section(section, source)
        if not isinstance(table, dict):
            raise UserError(
                f"{section} = {show(table)} in {source} must be a table: "
                f"write [{section}] on its own line, then one key = value per line"
            )
        known = {**_keys_by_section(d), section: section_keys(section, section_class(section, d, source))}
        for key in table:
            _check_key(section, key, known, source)


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
    """Checks ``value`` against the field type ``hint``; lists become tuples; a table
    (``dict[str, Any]``) holds scalars or lists of them, passed on as they are."""
    if typing.get_origin(hint) is dict:
        plain = (bool, int, float, str)
        ok = isinstance(value, dict) and all(
            isinstance(v, plain) or (isinstance(v, list) and all(isinstance(x, plain) for x in v))
            for v in value.values())
        if not ok:
            raise UserError(f"{key} must be a table of values, e.g. {{ leaky_slope = 0.1 }}, got {show(value)} ({source})")
        return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    if typing.get_origin(hint) is tuple:
        kind = typing.get_args(hint)[0]
        pairs = [_scalar(v, kind) for v in value] if isinstance(value, (list, tuple)) else [(False, None)]
        if not all(ok for ok, _ in pairs):
            raise UserError(f"{key} must be {_LIST_KINDS[kind]}, got {show(value)} ({source})")
        return tuple(v for _, v in pairs)
    ok, value = _scalar(value, hint)
    if not ok:
        raise UserError(f"{key} must be {_KINDS[hint]}, got {show(value)} ({source})")
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
    check_recipe(recipe, source)
    check = getattr(type(recipe.method), "check", None)  # the method's rules, on its Config
    if check is not None:
        check(recipe, source)
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
            _check_key(section, key, _keys_by_section(merged), where)
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


def resolved(recipe: Recipe) -> Recipe:
    """``recipe`` with its ``[method]`` filled in: ``None`` is the default method's defaults."""
    if recipe.method is not None:
        return recipe
    return dataclasses.replace(recipe, method=config_class(DEFAULT_METHOD)())


def recipe_to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as a TOML-shaped dict: every key of every section, [method] first."""
    recipe = resolved(recipe)
    out = {}
    for section in ALL_SECTIONS:
        cfg = getattr(recipe, section)
        out[section] = {_TOML_KEYS.get((section, f.name), f.name): getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return out


def recipe_changes(path: str | os.PathLike, recipe: Recipe) -> list[str]:
    """``["section.key old -> new", ...]``: where ``recipe`` differs from the recipe
    written at ``path`` (a run's config.toml); a file that cannot be read is one change."""
    try:
        old = _read_toml(Path(path))
    except UserError:
        return [f"{path} was unreadable"]
    new = recipe_to_dict(recipe)
    return [f"{section}.{key} {show(old.get(section, {}).get(key))} -> {show(value)}"
            for section, table in new.items() for key, value in table.items()
            if _plain(old.get(section, {}).get(key)) != _plain(value)]


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML, every key of every section, that load_recipe reads back.

    The name is not a key (it is the file's stem), so it appears in the header comment only.
    """
    header = f"# Resolved recipe '{recipe.name}': every key, defaults included.\n\n"
    return header + tomli_w.dumps(recipe_to_dict(recipe))


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Writes ``recipe_to_toml(recipe)`` to ``path`` atomically: a temp file, then os.replace."""
    write_text_atomic(path, recipe_to_toml(recipe))

