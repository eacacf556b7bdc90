"""The method seam: a method defined in this file (no package edit) is picked by a
recipe, trained by the unchanged loop with two streams, and its scalars are logged."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from gssl_fast.config import load_recipe
from gssl_fast.methods import METHODS, Method, Stream, register_method
from gssl_fast.methods.gssl import GSSLMethod
from gssl_fast.train import main
from pipelines.errors import UserError
from pipelines.views import CropFlip, Grayscale, Localizable


@dataclass(frozen=True)
class ToyConfig:
    name: str = "toy"
    side_batch: int = 8  # batch of the second stream
    weight: float = 0.5  # weight of the second stream's loss

    @classmethod
    def check(cls, recipe, source):
        if recipe.method.weight < 0:
            raise UserError(f"method.weight must be >= 0, got {recipe.method.weight} ({source})")


class Toy(GSSLMethod):
    """Cross-entropy on a main stream plus a weighted term on a second, smaller stream
    with the rotation task; logs a scalar and a nested group of its own."""

    name = "toy"
    Config = ToyConfig
    seen: list = []

    def streams(self):
        # The side stream: two views of each image, the second with an op no loader graph has.
        views = {"weak": (CropFlip(4), Localizable(("rotation",))), "strong": (CropFlip(4), Grayscale(1.0))}
        return {"main": Stream(self.ctx.train.batch_size), "side": Stream(self.cfg.side_batch, views=views)}

    def training_step(self, model, batches, *, accelerator):
        main, side = batches["main"], batches["side"]
        strong = side["strong"]
        assert torch.equal(strong[:, 0], strong[:, 1]) and side["strong/grayscale"].eq(1).all()
        Toy.seen.append((main["images"].shape[0], side["weak"].shape[0], int(side["weak/quadrant"].max())))
        loss_main = F.cross_entropy(model(main["images"])["logits"], main["labels"])
        loss_side = F.cross_entropy(model(torch.cat([side["weak"], strong]))["logits"], side["labels"].repeat(2))
        loss = loss_main + self.cfg.weight * loss_side
        return {"loss": loss, "toy_side": loss_side.detach(), "toy/main": loss_main.detach(), "toy/w": 0.5}


@pytest.fixture(params=["torch", "dali", "ffcv"])
def loader(request):
    return request.param


@pytest.fixture
def toy():
    Toy.seen = []
    register_method(Toy)
    yield Toy
    METHODS.pop("toy")


@pytest.fixture
def write(tiny_recipe):
    """A tiny recipe whose [method] is ``name`` with the ``extra`` keys."""

    def make(tmp_path, name="toy", extra=""):
        return tiny_recipe(f'[method]\nname = "{name}"\n{extra}\n', name=name)

    return make


def test_a_method_from_a_test_file_trains_through_the_loop(tmp_path, toy, loader, write):
    out = tmp_path / "run"
    assert main([str(write(tmp_path, extra="side_batch = 48")), "--out", str(out),
                 "--set", "train.steps_per_epoch=6", "--set", f"train.loader={loader}"]) == 0
    # 6 steps: the main stream (128 / 32 = 4 batches) and the side stream (128 / 48 = 2
    # batches) ran out and started new passes within the epoch.
    assert len(toy.seen) == 6 and toy.seen[0][:2] == (32, 48)
    assert any(q > 0 for _, _, q in toy.seen)  # its own stream carries the transform's parameters
    row = json.loads((out / "metrics.jsonl").read_text())
    assert {"train_loss", "toy_side", "val_acc1", "best_val_acc1", "best_epoch"} <= set(row)
    assert row["toy"] == {"main": pytest.approx(row["toy"]["main"]), "w": 0.5}
    assert "toy_side" not in (out / "config.toml").read_text()
    assert 'name = "toy"' in (out / "config.toml").read_text()


def test_the_method_section_is_checked_against_the_method(tmp_path, toy, write):
    assert load_recipe(write(tmp_path, extra="weight = 2.0")).method == ToyConfig(weight=2.0)
    with pytest.raises(UserError, match=r"unknown key 'method\.wieght'.*valid keys of \[method\]: name, side_batch, "
                                        r"weight; did you mean 'method\.weight'"):
        load_recipe(write(tmp_path, extra="wieght = 2.0"))
    with pytest.raises(UserError, match="method.weight must be >= 0"):
        load_recipe(write(tmp_path, extra="weight = -1.0"))
    with pytest.raises(UserError, match=r"method\.side_batch must be an integer"):
        load_recipe(write(tmp_path, extra='side_batch = "8"'))


def test_unknown_method_lists_the_registered_ones(tmp_path, write):
    with pytest.raises(UserError, match=r"method\.name must be one of 'supervised', 'adversarial'.*got 'fixmatc'"):
        load_recipe(write(tmp_path, name="fixmatc"))


def test_set_switches_the_method_and_its_keys(tmp_path, write):
    path = write(tmp_path, name="supervised")
    recipe = load_recipe(path, ["method.name=adversarial", "method.steps=3"])
    assert recipe.method.name == "adversarial" and recipe.method.steps == 3
    with pytest.raises(UserError, match=r"unknown key 'method\.steps'.*valid keys of \[method\]: name, mixup_alpha"):
        load_recipe(path, ["method.steps=3"])


def test_a_method_needs_a_name_and_a_config_dataclass():
    class Nameless(Method):
        Config = ToyConfig

    class NoConfig(Method):
        name = "noconfig"

    for cls in (Nameless, NoConfig):
        with pytest.raises(ValueError):
            register_method(cls)
    assert "noconfig" not in METHODS


def test_loop_counts_optimizer_steps(tmp_path, write):
    """train.steps overrides train.epochs: 7 steps of 3 per epoch are epochs of 3, 3 and 1."""
    out = tmp_path / "run"
    assert main([str(write(tmp_path, name="supervised")), "--out", str(out), "--set", "train.steps_per_epoch=3",
                 "--set", "train.steps=7", "--set", "train.epochs=50"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_images"] for r in rows] == [96, 96, 32]
    state = torch.load(out / "checkpoints" / "epoch_0003.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 7


@dataclass(frozen=True)
class TwoStepConfig:
    name: str = "twostep"
    probe_epochs: int = 1  # epochs of the second stage


class TwoStep(Method):
    """A staged method defined here: stage ``fit`` trains the G-SSL model, stage
    ``count`` (no training) reads the first stage's checkpoint and counts its
    parameters, stage ``probe`` trains it again with its own epochs."""

    name = "twostep"
    Config = TwoStepConfig

    def build_model(self):
        return torch.nn.Identity()

    def stages(self):
        return [("fit", lambda: Fit(self.cfg, self.ctx)), ("count", lambda: Count(self.cfg, self.ctx)),
                ("probe", lambda: Probe(self.cfg, self.ctx))]


class Fit(GSSLMethod):
    def training_step(self, model, batches, *, accelerator):
        return self.gssl_step(model, batches["train"]["images"], batches["train"])


class Count(Method):
    trains = False

    def build_model(self):
        return torch.nn.Identity()

    def run(self, accelerator):
        from gssl_fast import checkpoint
        from gssl_fast.checkpoint import stage_dir

        state = checkpoint.load(checkpoint.list_checkpoints(stage_dir(self.ctx.run_dir, "fit"))[-1])["model"]
        return {"weights": sum(v.numel() for v in state.values())}


class Probe(Fit):
    def stage_sections(self, recipe):
        from dataclasses import replace

        return replace(recipe, train=replace(recipe.train, epochs=self.cfg.probe_epochs + 1))


@pytest.fixture
def twostep():
    register_method(TwoStep)
    yield TwoStep
    METHODS.pop("twostep")


def test_a_staged_method_from_a_test_file_runs_its_stages_through_the_loop(tmp_path, twostep, write):
    from gssl_fast.checkpoint import stage_dir
    from gssl_fast.run.stages import DONE

    out = tmp_path / "run"
    assert main([str(write(tmp_path, name="twostep")), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [("fit", 0), ("count", 0), ("probe", 0), ("probe", 1)]
    assert rows[1]["weights"] > 1000 and all("val_acc1" in r for r in rows if r["stage"] != "count")
    assert all((stage_dir(out, s) / DONE).is_file() for s in ("fit", "count", "probe"))
    assert [p.name for p in (stage_dir(out, "probe") / "checkpoints").iterdir()] == ["epoch_0001.pt", "epoch_0002.pt"]
