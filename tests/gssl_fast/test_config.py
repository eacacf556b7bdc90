import dataclasses
from pathlib import Path

import pytest
import tomllib

import pipelines.datasets
from gssl_fast.config import (
    ALL_SECTIONS,
    KEY_ALIASES,
    SECTIONS,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PretextConfig,
    Recipe,
    TrainConfig,
    apply_overrides,
    load_recipe,
    recipe_from_dict,
    recipe_to_toml,
    resolved,
    save_recipe,
)
from gssl_fast.methods.adversarial.config import AdversarialConfig
from gssl_fast.methods.supervised.config import SupervisedConfig
from pipelines.errors import UserError

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(autouse=True)
def dataset_registry():
    """data.name is checked against pipelines.datasets.DATASETS."""
    return pipelines.datasets.DATASETS


def write(tmp_path, text, name="exp.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def every_section_recipe():
    """A recipe where every key differs from its default, with awkward values."""
    return Recipe(
        name="every",
        method=AdversarialConfig(eps_255=4.0, step_255=1.0, steps=7, random_start=False, eval_attacks=("pgd20",),
                                 eval_images=5, eval_every_epochs=2),
        data=DataConfig(name="tinyimagenet", root='dir with "quotes" \\ and é\t', image_size=48, crop_padding=0, hflip=False,
                        mean=(0.1 + 0.2, 0.5, 1.0), std=(1e-05, 0.2, 0.3), longtail="step",
                        imbalance_ratio=0.02, train_size=7, val_size=3, seed=5, beton="x.beton", val_fraction=0.25,
                        calibration_fraction=0.1, on_corrupt="skip", decode_cache=False, cache_dir="cache dir", stream=True, crop="random_resized",
                        crop_scale=(0.25, 0.75), crop_ratio=(0.5, 2.0), val_crop_fraction=0.5, workers=3, download=True,
                        mirror="http://mirror.example/cifar", val_root="shards/val-{0..3}.tar", shuffle_buffer=7),
        model=ModelConfig(backbone="resnet18", pretrained=True, drop_rate=0.25, channels_last=True, init="kaiming",
                          kwargs={"leaky_slope": 0.1, "name": "x", "flag": True, "sizes": (1, 2)}),
        pretext=PretextConfig(tasks=("perm", "rotation"), gate="learned", gate_pool="logits", combine="mean", lam=0.3,
                              flip_axis="vertical"),
        loss=LossConfig(name="ldam", ldam_max_margin=0.4, ldam_scale=16.0, drw=True, drw_start_epoch=3,
                        drw_beta=0.999, pretext_scale=30.0),
        optim=OptimConfig(lr=1 / 3, momentum=0.5, nesterov=True, weight_decay=0.0, decay_bias_and_norm=False, schedule="step",
                          warmup_epochs=0.5, warmup_by="epoch", milestones=(2, 4, 9), milestone_factors=(0.1, 2e-4, 1e-300),
                          first_decay_steps=7, t_mul=1.5, m_mul=0.5, alpha=0.125),
        train=TrainConfig(epochs=11, batch_size=3, eval_batch_size=5, seed=7, mixed_precision="bf16",
                          grad_accum_steps=2, loader="ffcv", cpu=True, num_threads=1, steps_per_epoch=4,
                          keep_checkpoints=3, steps=40, compile=True, global_batch_size=6, log_with="tensorboard",
                          nonfinite="skip"),
    )


def test_every_key_of_every_section_differs_from_default():
    recipe = every_section_recipe()
    classes = {**SECTIONS, "method": AdversarialConfig}
    same = {(section, f.name) for section, cls in classes.items() for f in dataclasses.fields(cls)
            if getattr(getattr(recipe, section), f.name) == (
                f.default if f.default_factory is dataclasses.MISSING else f.default_factory())}
    # sgd stays: momentum and the schedule apply to it; bilinear stays: bicubic needs the torch or DALI loader, not ffcv.
    assert same == {("optim", "name"), ("method", "name"), ("data", "crop_interpolation")}


def test_round_trip_through_toml(tmp_path):
    recipe = every_section_recipe()
    path = tmp_path / "every.toml"
    save_recipe(recipe, path)
    assert load_recipe(path) == recipe
    # Every key is written, with the TOML spelling of aliased keys.
    written = tomllib.loads(path.read_text(encoding="utf-8"))
    assert list(written) == list(ALL_SECTIONS) == ["method", *SECTIONS]
    assert list(written["method"]) == [f.name for f in dataclasses.fields(AdversarialConfig)]
    for section, cls in SECTIONS.items():
        expected = [next((k for (s, k), f in KEY_ALIASES.items() if (s, f) == (section, fld.name)), fld.name)
                    for fld in dataclasses.fields(cls)]
        assert list(written[section]) == expected
    assert "lambda = 0.3" in path.read_text(encoding="utf-8")


def test_round_trip_of_defaults_and_empty_lists(tmp_path):
    recipe = Recipe(name="plain", method=SupervisedConfig(), pretext=PretextConfig(tasks=()),
                    optim=OptimConfig(milestones=(), milestone_factors=()))
    path = write(tmp_path, recipe_to_toml(recipe), "plain.toml")
    assert load_recipe(path) == recipe


def test_save_recipe_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "run" / "every.toml"
    save_recipe(Recipe(name="every"), path)
    assert load_recipe(path) == resolved(Recipe(name="every"))
    save_recipe(every_section_recipe(), path)
    assert load_recipe(path) == every_section_recipe()
    assert [p.name for p in path.parent.iterdir()] == ["every.toml"]


def test_one_line_recipe_gives_all_defaults(tmp_path):
    path = write(tmp_path, '[data]\nname = "shapes"\n', "tiny.toml")
    assert load_recipe(path) == resolved(Recipe(name="tiny"))
    assert load_recipe(path).method == SupervisedConfig()


def test_empty_dict_gives_defaults():
    assert recipe_from_dict({}, "test") == resolved(Recipe())


def test_lambda_alias(tmp_path):
    recipe = load_recipe(write(tmp_path, "[pretext]\nlambda = 0.3\n"))
    assert recipe.pretext.lam == 0.3
    with pytest.raises(UserError, match=r"unknown key 'pretext\.lam' .*valid keys of \[pretext\]: .*lambda"):
        load_recipe(write(tmp_path, "[pretext]\nlam = 0.3\n"))


def test_types_ints_for_floats_lists_to_tuples(tmp_path):
    recipe = load_recipe(write(tmp_path, "[optim]\nlr = 1\nmilestones = [3]\nmilestone_factors = [1]\n"))
    assert recipe.optim.lr == 1.0 and type(recipe.optim.lr) is float
    assert recipe.optim.milestones == (3,)
    assert recipe.optim.milestone_factors == (1.0,) and type(recipe.optim.milestone_factors[0]) is float


@pytest.mark.parametrize(
    "override, section, field, value",
    [
        ("train.epochs=3", "train", "epochs", 3),
        ("optim.lr=0.05", "optim", "lr", 0.05),
        ("optim.lr=1", "optim", "lr", 1.0),
        ("pretext.tasks=['rotation']", "pretext", "tasks", ("rotation",)),
        ("pretext.tasks=[]", "pretext", "tasks", ()),
        ("data.name=cifar10", "data", "name", "cifar10"),
        ('data.name="cifar100"', "data", "name", "cifar100"),
        ("data.root=/data/my cifar", "data", "root", "/data/my cifar"),
        ("data.root=2024", "data", "root", "2024"),
        ("model.pretrained=true", "model", "pretrained", True),
        ("pretext.lambda=0.3", "pretext", "lam", 0.3),
        (" train.batch_size = 64 ", "train", "batch_size", 64),
    ],
)
def test_override(tmp_path, override, section, field, value):
    path = write(tmp_path, "[train]\nepochs = 9\nbatch_size = 32\n")
    recipe = load_recipe(path, [override])
    assert getattr(getattr(recipe, section), field) == value
    assert type(getattr(getattr(recipe, section), field)) is type(value)


def test_overrides_apply_in_order_and_before_validation(tmp_path):
    # The file alone is invalid (odd size with tasks); the override fixes it.
    path = write(tmp_path, "[data]\nimage_size = 33\n")
    recipe = load_recipe(path, ["data.image_size=40", "data.image_size=48", "optim.milestones=[]",
                                "optim.milestone_factors=[]"])
    assert recipe.data.image_size == 48 and recipe.optim.milestones == ()
    assert recipe.train == TrainConfig()


def test_apply_overrides_does_not_modify_its_input():
    d = {"train": {"epochs": 9}}
    assert apply_overrides(d, ["train.epochs=3"]) == {"train": {"epochs": 3}}
    assert d == {"train": {"epochs": 9}}


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("train.nokey=1", ["--set 'train.nokey=1'", "unknown key 'train.nokey'", "valid keys of [train]", "epochs"]),
        ("nodot=1", ["--set 'nodot=1'", "section.key=value"]),
        ("train.epochs", ["--set 'train.epochs'", "section.key=value"]),
        ("a.b.c=1", ["section.key=value"]),
        ("bogus.epochs=1", ["unknown section [bogus]", "[data], [model], [pretext], [loss], [optim], [train]"]),
        ("train.epochs=abc", ["train.epochs must be an integer, got 'abc'", "--set train.epochs=abc"]),
        ("train.epochs=0", ["train.epochs must be >= 1, got 0", "--set train.epochs=0"]),
        ("model.pretrained=1", ["model.pretrained must be true or false, got 1"]),
        ("pretext.tasks=rotation", ["pretext.tasks must be a list of strings, got 'rotation'"]),
    ],
)
def test_bad_override(tmp_path, override, fragments):
    with pytest.raises(UserError) as err:
        load_recipe(write(tmp_path, "[train]\nepochs = 9\n"), [override])
    for fragment in fragments:
        assert fragment in str(err.value)


# (TOML text, fragments the message must hold: the key, the rule and/or the valid values)
BAD = [
    ("[dta]\nname = 'x'", ["unknown section [dta]", "valid sections: [method], [data], [model]"]),
    ("epochs = 3", ["key 'epochs'", "outside any section", "[train]"]),
    ("data = 3", ["data = 3", "must be a table", "write [data] on its own line"]),
    ("[data]\nnmae = 'x'", ["unknown key 'data.nmae'", "valid keys of [data]: name, root, image_size",
                            "did you mean 'data.name'"]),
    ("[data]\nimage_size = 'abc'", ["data.image_size must be an integer, got 'abc'"]),
    ("[data]\nimage_size = 32.0", ["data.image_size must be an integer, got 32.0"]),
    ("[model]\npretrained = 1", ["model.pretrained must be true or false, got 1"]),
    ("[optim]\nlr = true", ["optim.lr must be a finite number, got true"]),
    ("[optim]\nlr = nan", ["optim.lr must be a finite number, got nan"]),
    ("[data]\nname = 10", ["data.name must be a string, got 10"]),
    ("[data]\nmean = [0.5, 'a', 0.5]", ["data.mean must be a list of finite numbers"]),
    ("[optim]\nmilestones = 160", ["optim.milestones must be a list of integers, got 160"]),
    ("[data]\nname = 'imagenet22k'", ["data.name must be one of", "'shapes'", "got 'imagenet22k'"]),
    ("[data]\nimage_size = 4", ["data.image_size must be >= 8, got 4"]),
    ("[data]\nimage_size = 33", ["data.image_size must be even", "pretext.tasks", "localizable transform",
                                 "even side", "got 33"]),
    ("[data]\ncrop_padding = -1", ["data.crop_padding must be >= 0", "got -1"]),
    ("[data]\ncrop_interpolation = 'nearest'", ["data.crop_interpolation must be one of 'bilinear', 'bicubic'",
                                               "got 'nearest'"]),
    ("[data]\ncrop_interpolation = 'bicubic'", ['data.crop_interpolation must be "bilinear" unless data.stream = '
                                               "true", "got 'bicubic'"]),
    ("[data]\nname = 'tinyimagenet'\nstream = true\ncrop = 'random_resized'\ncrop_interpolation = 'bicubic'\n"
     "[train]\nloader = 'ffcv'", ['data.crop_interpolation must be "bilinear" with train.loader = \'ffcv\'',
                                 '"bicubic" needs train.loader = "torch" or "dali"']),
    ("[data]\nlongtail = 'linear'", ["data.longtail must be one of 'none', 'exp', 'step', got 'linear'"]),
    ("[data]\nimbalance_ratio = 0", ["data.imbalance_ratio must be in (0, 1]", "got 0.0"]),
    ("[data]\nimbalance_ratio = 1.5", ["data.imbalance_ratio must be in (0, 1]"]),
    ("[data]\nmean = [0.5, 0.5]", ["data.mean must be [] (the dataset's default) or 3 values"]),
    ("[data]\nstd = [0.2, 0.0, 0.2]", ["data.std must hold values in (0, 1]"]),
    ("[data]\nmean = [125.3, 123.0, 113.9]", ["data.mean must hold values in [0, 1]", "divide 0-255 by 255"]),
    ("[data]\ntrain_size = 0", ["data.train_size must be > 0"]),
    ("[data]\nval_size = -2", ["data.val_size must be > 0"]),
    ("[model]\nbackbone = ''", ["model.backbone must name a timm model"]),
    ("[pretext]\ntasks = ['rotation', 'jigsaw']", ["pretext.tasks must list task names among 'rotation', 'flip', "
                                                   "'perm'", "'jigsaw'"]),
    ("[pretext]\ntasks = ['flip', 'flip']", ["pretext.tasks must name each task once"]),
    ("[pretext]\ngate = 'soft'", ["pretext.gate must be one of 'reference', 'learned'"]),
    ("[pretext]\ncombine = 'max'", ["pretext.combine must be one of 'gated', 'sum', 'mean'"]),
    ("[pretext]\nlambda = -0.1", ["pretext.lambda must be >= 0, got -0.1"]),
    ("[pretext]\nflip_axis = 'diagonal'", ["pretext.flip_axis must be one of 'horizontal', 'vertical'"]),
    ("[loss]\nname = 'focal'", ["loss.name must be one of 'ce', 'ldam'"]),
    ("[optim]\nname = 'adamw'", ["optim.name must be one of 'sgd', 'adam'"]),
    ("[optim]\nlr = 0", ["optim.lr must be > 0"]),
    ("[optim]\nmomentum = 1", ["optim.momentum must be in [0, 1)"]),
    ("[optim]\nmomentum = 0\nnesterov = true", ["optim.momentum must be > 0 with nesterov = true"]),
    ("[optim]\nweight_decay = -1e-4", ["optim.weight_decay must be >= 0"]),
    ("[optim]\nschedule = 'linear'", ["optim.schedule must be one of 'cosine', 'step', 'constant'"]),
    ("[optim]\nwarmup_epochs = -1", ["optim.warmup_epochs must be >= 0"]),
    ("[optim]\nschedule = 'cosine_restarts'\nt_mul = 0.5", ["optim.t_mul must be >= 1", "got 0.5"]),
    ("[method]\nname = 'simclr'\nview = 'authors'\ncolor_strength = 2.0\n[pretext]\ntasks = []",
     ["method.color_strength must be in [0, 1.25] with view = 'authors'", "got 2.0"]),
    ("[method]\nname = 'simclr'\nlinear_protocol = 'keras'\n[pretext]\ntasks = []",
     ["method.linear_protocol must be one of 'standard', 'authors'"]),
    ("[method]\nname = 'simclr'\nae_decoder = [64, 32]\n[pretext]\ntasks = []",
     ["method.ae_decoder must be three widths >= 1"]),
    ("[optim]\nmilestones = [100]", ["optim.milestones and optim.milestone_factors must have the same length",
                                     "[100] and [0.01, 0.0001]"]),
    ("[optim]\nmilestones = [180, 160]", ["optim.milestones must be increasing", "[180, 160]"]),
    ("[optim]\nmilestones = [160, 160]", ["optim.milestones must be increasing"]),
    ("[optim]\nmilestone_factors = [0.1, 0]", ["optim.milestone_factors must be > 0"]),
    ("[train]\nepochs = 0", ["train.epochs must be >= 1, got 0"]),
    ("[train]\nbatch_size = 0", ["train.batch_size must be >= 1"]),
    ("[train]\neval_batch_size = 0", ["train.eval_batch_size must be >= 1"]),
    ("[train]\nmixed_precision = 'fp8'", ["train.mixed_precision must be one of 'no', 'fp16', 'bf16'"]),
    ("[train]\ngrad_accum_steps = 0", ["train.grad_accum_steps must be >= 1"]),
    ("[train]\nloader = 'webdataset'", ["train.loader must be one of 'torch', 'dali', 'ffcv'"]),
    ("[train]\nnum_threads = -1", ["train.num_threads must be >= 0"]),
    ("[train]\nsteps_per_epoch = -1", ["train.steps_per_epoch must be >= 0"]),
    ("[train]\nkeep_checkpoints = 0", ["train.keep_checkpoints must be >= 1"]),
]


@pytest.mark.parametrize("text, fragments", BAD, ids=[t.replace("\n", " ") for t, _ in BAD])
def test_bad_recipe(tmp_path, text, fragments):
    path = write(tmp_path, text + "\n", "bad_recipe.toml")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_odd_image_size_is_fine_without_pretext_tasks(tmp_path):
    recipe = load_recipe(write(tmp_path, "[data]\nimage_size = 33\n[pretext]\ntasks = []\n"))
    assert recipe.data.image_size == 33


def test_data_name_lists_the_registry(tmp_path, dataset_registry):
    with pytest.raises(UserError) as err:
        load_recipe(write(tmp_path, "[data]\nname = 'nope'\n"))
    assert ", ".join(repr(n) for n in sorted(dataset_registry)) in str(err.value)


def test_malformed_toml_names_file_line_and_column(tmp_path):
    path = write(tmp_path, '[data]\nname = "shapes"\nimage_size 32\n', "broken.toml")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    message = str(err.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message and "column" in message


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "missing.toml"
    with pytest.raises(UserError, match="recipe file not found") as err:
        load_recipe(path)
    assert str(path) in str(err.value)


def test_typo_in_the_file_names_the_file_even_with_overrides(tmp_path):
    path = write(tmp_path, "[train]\nepoch = 3\n", "typo.toml")
    with pytest.raises(UserError) as err:
        load_recipe(path, ["train.epochs=2"])
    assert f"unknown key 'train.epoch' in {path};" in str(err.value)


RECIPE_FILES = sorted(RECIPES.glob("*.toml"))


@pytest.mark.parametrize("path", RECIPE_FILES, ids=[p.stem for p in RECIPE_FILES])
def test_shipped_recipe_loads_and_round_trips(tmp_path, path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    copy = tmp_path / path.name
    save_recipe(recipe, copy)
    assert load_recipe(copy) == recipe


def test_shipped_recipes_exist():
    assert {"cifar10_lt", "cifar100_lt", "tinyimagenet", "tinyimagenet_short"} <= {p.stem for p in RECIPE_FILES}


def test_long_tailed_cifar_recipes_differ_only_in_the_dataset():
    c10, c100 = load_recipe(RECIPES / "cifar10_lt.toml"), load_recipe(RECIPES / "cifar100_lt.toml")
    assert (c10.data.name, c100.data.name) == ("cifar10", "cifar100")
    assert dataclasses.replace(c100, name=c10.name, data=dataclasses.replace(c100.data, name="cifar10",
                                                                             root=c10.data.root)) == c10
    assert c10.loss == LossConfig(name="ldam", drw=True, drw_start_epoch=160, drw_beta=0.9999,
                                  ldam_max_margin=0.5, ldam_scale=30.0)
    assert (c10.data.longtail, c10.data.imbalance_ratio, c10.train.epochs) == ("exp", 0.01, 300)


def test_tinyimagenet_recipes_differ_only_in_the_schedule():
    long, short = load_recipe(RECIPES / "tinyimagenet.toml"), load_recipe(RECIPES / "tinyimagenet_short.toml")
    for section in ("data", "model", "pretext", "loss"):
        assert getattr(long, section) == getattr(short, section), section
    assert (long.optim.lr, long.optim.schedule, long.train.epochs, long.train.global_batch_size) == (0.2, "cosine", 400, 100)
    assert (short.optim.lr, short.optim.milestones, short.train.epochs, short.train.global_batch_size) == (
        0.1, (75, 150, 225), 300, 256)


def test_reproduction_recipes_follow_the_authors_scripts():
    """The long-tailed recipes take the settings of the authors' LT script, the others theirs
    (docs/method.md lists where each differs from the paper's text)."""
    for stem in ("cifar10_lt", "cifar100_lt"):
        r = load_recipe(RECIPES / f"{stem}.toml")
        assert (r.pretext.flip_axis, r.pretext.gate_pool, r.model.init) == ("vertical", "logits", "kaiming")
        assert r.loss.pretext_scale == 1.0 and r.train.epochs == 300 and r.loss.name == "ldam"
    for stem in ("tinyimagenet", "tinyimagenet_short", "cifar10_pgd"):
        r = load_recipe(RECIPES / f"{stem}.toml")
        assert (r.pretext.flip_axis, r.pretext.gate_pool, r.model.init) == ("horizontal", "probs", "default")
    assert load_recipe(RECIPES / "tinyimagenet.toml").train.global_batch_size == 100


def test_every_recipe_points_to_the_method_document():
    doc = RECIPES.parent / "docs" / "method.md"
    assert doc.is_file() and "gate_pool" in doc.read_text()
    assert "docs/method.md" in (RECIPES.parent / "README.md").read_text()
    for path in sorted(RECIPES.glob("*.toml")):
        header = "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))
        assert "docs/method.md" in header, path.name
        load_recipe(path)  # and every recipe loads


# (TOML text or --set override, the name the message must suggest)
MISPLACED = [
    ("[train]\nlr = 0.1", "did you mean 'optim.lr'?"),
    ("[data]\nbatch_size = 64", "did you mean 'train.batch_size'?"),  # not the close data.image_size
    ("[optim]\nepochs = 3", "did you mean 'train.epochs'?"),
    ("[model]\nseed = 1", "did you mean 'data.seed' or 'train.seed'?"),
    ("[method]\nlr = 0.1", "did you mean 'optim.lr'?"),
    ("[method]\nname = 'simclr'\n[train]\nlinear_lr = 0.1", "did you mean 'method.linear_lr'?"),
    ("[train]\nwarmup_epoch = 1", "did you mean 'optim.warmup_epochs'?"),
    ("[pretext]\nlam = 0.5", "did you mean 'pretext.lambda'?"),
    ("[traim]\nepochs = 3", "valid sections: [method], [data], [model], [pretext], [loss], [optim], [train]; "
                            "did you mean [train]?"),
    ("[optimizer]\nlr = 0.1", "did you mean [optim]?"),
    ("epochs = 3", "is outside any section; move it under [train]"),
]


@pytest.mark.parametrize("text, hint", MISPLACED, ids=[t.replace("\n", " ") for t, _ in MISPLACED])
def test_an_unknown_section_or_key_suggests_the_one_meant(tmp_path, text, hint):
    test_bad_recipe(tmp_path, text, [hint])


@pytest.mark.parametrize("override, hint", [
    ("train.lr=0.1", "unknown key 'train.lr' in --set 'train.lr=0.1'; valid keys of [train]"),
    ("train.lr=0.1", "did you mean 'optim.lr'?"),
    ("trian.epochs=3", "unknown section [trian] in --set 'trian.epochs=3'"),
    ("trian.epochs=3", "did you mean [train]?"),
])
def test_an_override_of_an_unknown_name_suggests_the_one_meant(tmp_path, override, hint):
    with pytest.raises(UserError) as err:
        load_recipe(write(tmp_path, "[train]\nepochs = 9\n"), [override])
    assert hint in str(err.value)
