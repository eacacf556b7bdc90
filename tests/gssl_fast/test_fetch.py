"""python -m gssl_fast.fetch: the folder on stdout, user errors as one line and exit 2.
The library itself is tested in tests/pipelines/datasets/test_fetch.py."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gssl_fast.fetch import main
from pipelines.datasets.cifar import read_cifar10, read_cifar100
from pipelines.datasets.fetch import ARCHIVES
from tests.pipelines.datasets.archive_server import SAMPLES  # its fixtures: tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_the_default_root_is_where_the_recipes_look(served, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["cifar10"]) == 0
    out, err = capsys.readouterr()
    assert out == "data/cifar-10-batches-py\n" and "data.root" not in err
    np.testing.assert_array_equal(read_cifar10("data/cifar-10-batches-py", "train").labels, SAMPLES["cifar10"][1])


def test_another_root_names_the_recipe_key_to_set(served, tmp_path, capsys):
    root = tmp_path / "disk"
    assert main(["cifar100", "--root", str(root)]) == 0
    out, err = capsys.readouterr()
    folder = root / "cifar-100-python"
    assert out == f"{folder}\n" and f'set data.root = "{folder}"' in err
    np.testing.assert_array_equal(read_cifar100(folder, "val").labels, SAMPLES["cifar100"][3])


def test_mirror(served, archives, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(ARCHIVES, "cifar10", replace(ARCHIVES["cifar10"], url=served.url + "gone.tar.gz"))
    served.add(archives["cifar10"], "pub/cifar-10-python.tar.gz")
    assert main(["cifar10", "--root", str(tmp_path), "--mirror", served.url + "pub"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'cifar-10-batches-py'}\n"
    assert [path for path, _, _ in served.requests] == ["pub/cifar-10-python.tar.gz"]


def test_a_wrong_checksum_exits_2_with_one_line(served, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(ARCHIVES, "cifar10", replace(ARCHIVES["cifar10"], md5="f" * 32))
    assert main(["cifar10", "--root", str(tmp_path / "data")]) == 2
    out, err = capsys.readouterr()
    line = _one_error_line(err)
    assert out == "" and "expected " + "f" * 32 in line and "has md5 " in line and "nothing was unpacked" in line
    assert list((tmp_path / "data").iterdir()) == []  # no dataset folder, no .part, nothing unpacked


def test_a_refused_connection_exits_2_naming_the_url_and_the_hand_placement(served, tmp_path, capsys):
    served.close()
    root = tmp_path / "data"
    assert main(["tinyimagenet", "--root", str(root)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert ARCHIVES["tinyimagenet"].url in line and "tiny-imagenet-200.zip (from" in line
    assert f"into {root}/ and rerun" in line and not root.exists()


def test_an_unknown_name_exits_2_listing_the_valid_ones(capsys):
    assert main(["mnist"]) == 2
    assert "valid: cifar10, cifar100, tinyimagenet" in _one_error_line(capsys.readouterr().err)


def test_runs_as_a_module(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gssl_fast.fetch", "mnist", "--root", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert _one_error_line(done.stderr).startswith("error: unknown dataset to fetch 'mnist'")


def test_a_recipe_with_data_download_trains_from_an_empty_data_folder(served, tmp_path, monkeypatch, capsys):
    from gssl_fast.config import load_recipe
    from gssl_fast.train import fit

    monkeypatch.chdir(tmp_path)  # the recipe's data.root is relative: data/cifar-10-batches-py
    recipe = tmp_path / "cifar.toml"
    recipe.write_text('[data]\nname = "cifar10"\nroot = "data/cifar-10-batches-py"\n'
                      'download = true\ndecode_cache = false\n[model]\nbackbone = "resnet8_cifar"\n'
                      '[train]\nepochs = 1\nbatch_size = 5\neval_batch_size = 4\nnum_threads = 1\n')
    run = fit(load_recipe(recipe), out=tmp_path / "run")
    assert (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert [r[0] for r in served.requests] == ["cifar-10-python.tar.gz"]
    assert (run / "metrics.jsonl").read_text().count("\n") == 1
    fit(load_recipe(recipe), out=tmp_path / "again")  # present now: nothing is downloaded again
    assert len(served.requests) == 1


@pytest.mark.parametrize("body, key", [('[data]\nname = "shapes"\ndownload = true\n', "data.download"),
                                       ('[data]\nname = "cifar10"\nmirror = "http://x"\n', "data.mirror")])
def test_download_keys_are_checked_with_the_recipe(tmp_path, body, key):
    from gssl_fast.config import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(body)
    with pytest.raises(Exception, match=key):
        load_recipe(path)
