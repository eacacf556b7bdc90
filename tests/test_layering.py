"""Floors, imports one way: ``pipelines`` (the data floor) imports nothing of
``gssl_fast``, so it can be reused alone; inside ``gssl_fast`` each folder imports only
from its own floor or those below it (docs/layout.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_pipelines_import_nothing_of_gssl_fast():
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "gssl_fast")
                 for p in sorted((ROOT / "pipelines").rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


# Modules that build or run models: what reading a recipe must not import.
MODEL_MODULES = ("timm", "gssl_fast.model.network", "gssl_fast.model.backbones", "gssl_fast.model.task", "gssl_fast.model.heads",
                 "gssl_fast.methods.base", "gssl_fast.methods.gssl")


def modules_after(code: str, *args: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after ``code`` (run from the repository)."""
    import subprocess
    import sys

    probe = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


def model_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(MODEL_MODULES) or (m.startswith("gssl_fast.methods.")
                                                                      and m.endswith((".method", ".stages"))))


def test_reading_any_recipe_imports_no_method_and_no_model():
    """A recipe is checked (its method's section too) with the configs alone: the methods
    are found by "module:attribute" strings, so neither timm nor any method is imported."""
    code = ("import glob\nfrom gssl_fast.config import load_recipe\n"
            "for path in sorted(glob.glob('recipes/*.toml')):\n    load_recipe(path)")
    assert model_modules(modules_after(code)) == []


def test_the_trainers_help_and_a_recipe_error_import_no_model(tmp_path):
    (tmp_path / "bad.toml").write_text('[method]\nname = "simclr"\nholdout = 2.0\n')
    code = ("import runpy, sys\nsys.argv = ['gssl_fast.train'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('gssl_fast.train', run_name='__main__')\nexcept SystemExit:\n    pass")
    assert model_modules(modules_after(code, "--help")) == []
    assert model_modules(modules_after(code, str(tmp_path / "bad.toml"))) == []


def test_every_method_is_one_package_with_a_config_that_imports_no_torch():
    from gssl_fast.methods import METHODS

    for name, (config, method) in METHODS.items():
        assert config.startswith(f"gssl_fast.methods.{name}.config:"), config
        assert method.startswith(f"gssl_fast.methods.{name}.method:"), method
        configs = imported_modules(ROOT / "gssl_fast" / "methods" / name / "config.py")
        assert not [m for m in configs if m.split(".")[0] in ("torch", "timm")], (name, configs)


# gssl_fast's floors, lowest first (docs/layout.md); a module named in none is a command
# (train, evaluate, report, ladder, ...), the top floor.
FLOORS = (
    ("gssl_fast.sections", "gssl_fast.faults"),
    ("gssl_fast.model", "gssl_fast.checkpoint"),
    ("gssl_fast.config_checks",),
    ("gssl_fast.methods",),
    ("gssl_fast.config",),
    ("gssl_fast.run",),
    ("gssl_fast.analysis",),
)


def floor_of(module: str) -> int:
    for i, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return len(FLOORS)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_gssl_fast_folders_import_only_their_floor_and_below():
    climbs = {}
    for path in sorted((ROOT / "gssl_fast").rglob("*.py")):
        here = module_name(path)
        up = sorted(m for m in imported_modules(path) if m.startswith("gssl_fast.") and floor_of(m) > floor_of(here))
        if up:
            climbs[here] = up
    assert climbs == {}


def test_the_floors_name_every_folder_of_gssl_fast():
    folders = {p.name for p in (ROOT / "gssl_fast").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    named = {p.split(".")[1] for prefixes in FLOORS for p in prefixes}
    assert folders <= named
