"""The README's layout names every module of both packages, so a newcomer finds each step."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_layout_names_every_module():
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("## Layout"):]
    missing = []
    for package in ("pipelines", "gssl_fast"):
        for path in sorted((ROOT / package).iterdir()):
            if path.name.startswith("_") and path.name != "__init__.py":
                continue
            if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()):
                name = path.stem if path.suffix == ".py" else path.name
                if name == "__init__" and package == "gssl_fast":
                    continue
                if f"{name}.py" not in layout and f"{name}/" not in layout:
                    missing.append(f"{package}/{path.name}")
    assert not missing, f"README Layout does not name: {missing}"
