"""docs/recipes.md is generated from the recipe dataclasses and stays in step with them."""

from __future__ import annotations

import dataclasses

import pytest

from gssl_fast import recipe_docs
from gssl_fast.config import VALID_KEYS, section_keys


def test_docs_recipes_md_is_what_the_code_generates():
    written = recipe_docs.DOC.read_text(encoding="utf-8") if recipe_docs.DOC.is_file() else ""
    assert written == recipe_docs.render(), (
        f"docs/recipes.md is out of date with the recipe dataclasses; run: {recipe_docs.COMMAND}")


def test_every_key_of_every_section_and_method_has_a_row():
    rows = {line.split("`")[1] for line in recipe_docs.render().splitlines() if line.startswith("| `")}
    keys = {f"{section}.{key}" for section, valid in VALID_KEYS.items() for key in valid}
    for _, config in recipe_docs.builtin_methods():
        keys |= {f"method.{key}" for key in section_keys("method", config)}
    assert rows == keys
    assert {"data.on_corrupt", "data.val_fraction", "data.decode_cache", "data.cache_dir", "train.nonfinite",
            "method.crop_scale_min", "pretext.lambda"} <= rows
    assert {name for name, _ in recipe_docs.builtin_methods()} == {"supervised", "adversarial", "fixmatch", "simclr"}


def test_a_row_shows_the_toml_default_and_the_comment():
    text = recipe_docs.render()
    assert '| `pretext.tasks` | `["rotation", "flip", "perm"]` | subset of pipelines.localizable.TASKS' in text
    assert "| `pretext.lambda` | `0.1` | weight of the pretext loss, >= 0 (the dataclass field is `lam`" in text
    assert "`pretext.lam`" not in text
    assert '| `model.kwargs` | `{}` |' in text and "| `data.hflip` | `true` |" in text
    assert '"none" \\| "exp" \\| "step"' in text  # a | inside a cell is escaped


@dataclasses.dataclass(frozen=True)
class Documented:
    name: str = "x"  # the name
    sizes: tuple[int, ...] = (  # a comment inside the value is not the field's
        1,
        2,
    )  # sizes, one per stage


@dataclasses.dataclass(frozen=True)
class Undocumented(Documented):
    # A comment above a field speaks to readers of the source only.
    depth: int = 3
    width: int = 4  # documented


def test_the_meaning_is_the_trailing_comment_and_a_field_without_one_is_an_error():
    assert recipe_docs.field_comments(Documented) == {"name": "the name", "sizes": "sizes, one per stage"}
    with pytest.raises(ValueError, match=r"Undocumented: field depth has no trailing # comment.*--write"):
        recipe_docs.field_comments(Undocumented)


def test_the_command_checks_and_rewrites(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "recipes.md"
    monkeypatch.setattr(recipe_docs, "DOC", doc)
    assert recipe_docs.main(["--check"]) == 1
    assert recipe_docs.COMMAND in capsys.readouterr().err
    assert recipe_docs.main(["--write"]) == 0 and recipe_docs.main(["--check"]) == 0
    assert doc.read_text() == recipe_docs.render()
