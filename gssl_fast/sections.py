"""Recipe sections: one frozen dataclass each; plain data, importing nothing of the trainer.

Every key has a default, so ``[data]\\nname = "shapes"`` is a whole recipe. Functions
elsewhere take their own section (``DataConfig``, ``OptimConfig``...), never a Recipe.
Reading, checking and writing recipes: ``gssl_fast.config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataConfig:
    name: str = "shapes"  # dataset: a key of pipelines.datasets.DATASETS, or "webdataset" (shards) (the README's table of datasets)
    root: str = ""  # dataset folder (CIFAR batches, Tiny-ImageNet, ImageFolder); webdataset: the train shards, "DIR/train-{000000..000099}.tar" or DIR; unused by shapes
    image_size: int = 32  # side in pixels after resizing; even when a pretext task is on
    crop_padding: int = 4  # pixels of zero padding of the random crop; 0 disables the crop
    hflip: bool = True  # random whole-image horizontal flip of training images
    mean: tuple[float, ...] = ()  # per-channel mean in [0, 1], subtracted in the model's first layer; [] = dataset default
    std: tuple[float, ...] = ()  # per-channel std in [0, 1]; [] = dataset default
    longtail: str = "none"  # "none" | "exp" | "step": long-tailed subsampling of the train split
    imbalance_ratio: float = 0.01  # rho = n_min / n_max of the long-tailed train split, in (0, 1]
    train_size: int = 10000  # images of the built-in dataset's train split
    val_size: int = 2000  # images of the built-in dataset's val split
    seed: int = 0  # seed of the built-in dataset's generator, and of data.val_fraction's draw
    val_fraction: float = 0.0  # a single ImageFolder tree: this share of each class held out as the val split
    calibration_fraction: float = 0.0  # this share of each class of the train split held out of training (seeded by data.seed); evaluate --calibration fits its temperature on it
    beton: str = ""  # FFCV .beton of the train split (train.loader = "ffcv"); "" = convert on first use
    on_corrupt: str = "error"  # an unreadable image file: "error" (stop, naming it) | "skip" (leave it out, counted)
    decode_cache: bool = True  # keep folder datasets decoded by PIL on disk, so a restart does not decode again
    cache_dir: str = ""  # where data.decode_cache keeps them; "" = $GSSL_FAST_CACHE or ~/.cache/gssl_fast/decoded
    stream: bool = False  # read a folder dataset's files every epoch (pipelines.stream), never holding it in memory; tinyimagenet, imagefolder (webdataset: always)
    val_root: str = ""  # webdataset: the validation shards, "DIR/val-{000000..000009}.tar" or DIR; "" = the val split of the folder data.root
    shuffle_buffer: int = 1000  # webdataset: samples each process holds to shuffle its stream of shards; 0 = the shards' (shuffled) order alone
    crop: str = "pad"  # "pad": resize, then the padded crop of data.crop_padding | "random_resized": a random window taken at decode (data.stream, webdataset)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # data.crop = "random_resized": the window's area fraction of the image, [min, max]
    crop_ratio: tuple[float, float] = (0.75, 1.3333333333333333)  # data.crop = "random_resized": the window's aspect ratio w / h, [min, max]
    val_crop_fraction: float = 0.875  # data.crop = "random_resized": validation takes the centred square of this share of the shorter side (timm's crop_pct)
    crop_interpolation: str = "bilinear"  # filter resampling a streamed image or window to data.image_size: "bilinear" | "bicubic" (train.loader = "torch" or "dali")
    workers: int = 0  # decoding processes of the torch stream (threads for DALI and FFCV); 0 = the cores this process may use
    download: bool = False  # fetch the official archive of data.name (cifar10, cifar100, tinyimagenet) into data.root's folder first, when missing
    mirror: str = ""  # with data.download: fetch the archive's file name from this URL instead of the official one (same checksum)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet32_cifar"  # timm.create_model name; or resnet8/20/32/44/56_cifar, wrn28_2, wrn40_2, resnet18_cifar
    pretrained: bool = False  # timm weights from the local Hugging Face cache only (HF_HUB_OFFLINE=0: may download)
    drop_rate: float = 0.0  # dropout before the heads
    channels_last: bool = False  # channels-last memory format of images and weights (faster on recent GPUs)
    init: str = "default"  # "default" (timm's) | "kaiming": kaiming-normal on every Linear and Conv weight (authors' LT) | "xavier_linear": xavier-normal Linear weights, zero biases (FixMatch's reference)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the backbone, e.g. { leaky_slope = 0.1 }


@dataclass(frozen=True)
class PretextConfig:
    tasks: tuple[str, ...] = ("rotation", "flip", "perm")  # subset of pipelines.localizable.TASKS; [] = supervised only
    gate: str = "reference"  # "reference": batch-mean softmax, detached (authors' code) | "learned": per image (paper text)
    gate_pool: str = "probs"  # reference gate over the batch: "probs" mean of softmaxes | "logits" softmax of the mean
    combine: str = "gated"  # how the task losses add up: "gated" | "sum" | "mean"
    # TOML key "lambda" (a Python keyword; gssl_fast.sections.KEY_ALIASES).
    lam: float = 0.1  # weight of the pretext loss, >= 0
    flip_axis: str = "horizontal"  # "horizontal" (left-right) | "vertical" (the LT-CIFAR script)


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"  # class loss: "ce" | "ldam" (cosine heads)
    ldam_max_margin: float = 0.5  # largest per-class margin of LDAM
    ldam_scale: float = 30.0  # logit scale s of LDAM (cosine logits times s)
    drw: bool = False  # deferred re-weighting with class-balanced weights
    drw_start_epoch: int = 160  # first epoch (0-based) with re-weighting
    drw_beta: float = 0.9999  # beta of the class-balanced weights
    pretext_scale: float = 1.0  # factor on the pretext logits before their CE; 1 = raw cosines under LDAM (authors)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # optimizer: "sgd" | "adam"
    lr: float = 0.1  # peak learning rate (for the whole batch, no scaling rule)
    momentum: float = 0.9  # SGD momentum (Adam ignores it)
    nesterov: bool = False  # Nesterov momentum (SGD only)
    weight_decay: float = 5e-4  # L2 term added to the gradient (SGD and Adam)
    decay_bias_and_norm: bool = True  # false: no weight decay on biases and normalization weights (FixMatch)
    schedule: str = "cosine"  # "cosine" | "step" | "constant" | "fixmatch_cosine" (cos(7 pi k / 16 K)) | "cosine_restarts" (TF's CosineDecayRestarts), set every step
    warmup_epochs: float = 0.0  # linear warm-up from ~0 to lr
    warmup_by: str = "step"  # "step": the warm-up grows every step | "epoch": lr x (e + 1) / warmup_epochs through epoch e (LDAM-DRW)
    milestones: tuple[int, ...] = (160, 180)  # "step": epochs at which the factor changes
    milestone_factors: tuple[float, ...] = (0.01, 0.0001)  # "step": lr multiplier from each milestone on
    first_decay_steps: int = 1000  # "cosine_restarts": optimizer steps of the first cosine period (TF's first_decay_steps)
    t_mul: float = 2.0  # "cosine_restarts": each period is t_mul times the one before (>= 1)
    m_mul: float = 1.0  # "cosine_restarts": each restart's peak is m_mul times the one before
    alpha: float = 0.0  # "cosine_restarts": the floor of the lr factor (TF's alpha): lr * (alpha + (1 - alpha) * cosine)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # epochs of the run (train.steps, when > 0, counts instead)
    batch_size: int = 128  # training batch per process; a step takes processes x batch_size x grad_accum_steps
    eval_batch_size: int = 256  # evaluation batch per process
    seed: int = 0  # model init, data order, augmentation and pretext draws
    mixed_precision: str = "no"  # Accelerate's autocast: "no" | "fp16" | "bf16"
    grad_accum_steps: int = 1  # batches whose gradients add up to one optimizer step
    loader: str = "torch"  # loader backend: "torch" | "dali" | "ffcv"
    cpu: bool = False  # train on the CPU even where CUDA is present
    num_threads: int = 0  # torch threads per process; 0 = the cores this process may use
    steps_per_epoch: int = 0  # optimizer steps per epoch; 0 = one pass of the main stream (more: the streams cycle)
    keep_checkpoints: int = 2  # newest epoch checkpoints kept (a preempted epoch's step checkpoint too, until it ends)
    steps: int = 0  # optimizer steps of the whole run; 0 = train.epochs epochs of the main stream
    compile: bool = False  # torch.compile the model for training (as timm's --torchcompile)
    global_batch_size: int = 0  # > 0: batch of all processes together; each takes its share (overrides batch_size)
    nonfinite: str = "stop"  # a step with a NaN / inf loss: "stop" the run, naming it | "skip" it (counted as nonfinite_steps)
    log_with: str = "none"  # "none" | "tensorboard": every logged scalar also to the run folder's tensorboard/ (Accelerate)


@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"  # run name: the recipe file's stem
    # The [method] section: the Config dataclass of the method it names (gssl_fast.methods);
    # None stands for the default method's defaults until gssl_fast.config resolves it.
    method: Any = None
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

# TOML keys that are Python keywords, spelled differently in the dataclass.
KEY_ALIASES = {("pretext", "lambda"): "lam"}
