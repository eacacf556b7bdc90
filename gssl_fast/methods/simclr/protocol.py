"""The evaluation protocol of G-SimCLR's notebooks (docs/method.md section 4, "the authors'
protocol"): Keras' early stopping, linear evaluation on features extracted once, and
fine-tuning in two phases.

    EarlyStopping     Keras' EarlyStopping(monitor="val_loss", patience, restore_best_weights=True)
    fit_probe         a softmax layer fitted with Adam on fixed features, stopped early
    AuthorsLinear     stage linear (method.linear_protocol = "authors"): P1, P2, P3 on features
    FinetuneHead      stage finetune_head (method.finetune_protocol = "authors"): the head alone
    AuthorsFinetune   stage finetune (the same): everything, BatchNorm in eval mode, Adam

The notebooks (``*Linear_Evaluation.ipynb``, ``*Fine_Tune_10_Perc.ipynb``) stop on the test
split's loss; these stages stop on the loss of the share of the training images held out
(``method.holdout``) and report the test accuracy of the weights they keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gssl_fast import checkpoint
from gssl_fast.methods.base import Method, Metric, Stream
from gssl_fast.methods.simclr.early_stopping import EarlyStopping
from gssl_fast.methods.simclr.stages import Finetune, Linear, _Stage, collect, finetune_positions, linear_split
from pipelines.errors import UserError
from pipelines.sampling import derive_seed

HEAD = "head.pt"  # the head the finetune_head stage leaves in its folder: {"head": Linear state dict}
KERAS_ADAM_EPS = 1e-7  # Keras' Adam epsilon (torch's default is 1e-8)


@dataclass(frozen=True)
class ProbeFit:
    """What :func:`fit_probe` returns: the head with its kept weights, the epochs it
    trained, the epoch (0-based) whose weights it kept and their held-out loss."""

    head: nn.Linear
    epochs: int
    best_epoch: int
    holdout_loss: float


def fit_probe(train: tuple[torch.Tensor, torch.Tensor], held: tuple[torch.Tensor, torch.Tensor], *,
              num_classes: int, lr: float, batch_size: int, max_epochs: int, patience: int, seed: int) -> ProbeFit:
    """The notebooks' ``Dense(K, activation="softmax")`` fitted with ``optimizer="adam"`` on
    fixed features: ``model.fit(x, y, batch_size, epochs, callbacks=[EarlyStopping(...)])``.

    ``train``, ``held``: ``(features [N, D] float32, labels [N] int64)`` on one device.
    Glorot-uniform weights and zero bias (Keras' ``Dense``); Adam with Keras' epsilon; each
    epoch a fresh permutation in batches of ``batch_size``, the last one partial (as
    ``fit``); the held-out cross-entropy after each epoch decides when to stop
    (:class:`EarlyStopping`). Draws from ``seed`` only: every process fits the same head.
    """
    x, y = train
    g = torch.Generator().manual_seed(seed % (1 << 63))
    head = nn.Linear(x.shape[1], num_classes)
    nn.init.xavier_uniform_(head.weight, generator=g)
    nn.init.zeros_(head.bias)
    head = head.to(x.device)
    opt = torch.optim.Adam(head.parameters(), lr=lr, eps=KERAS_ADAM_EPS)
    stopper, epoch = EarlyStopping(patience), -1
    for epoch in range(max_epochs):
        for idx in torch.randperm(len(x), generator=g).to(x.device).split(batch_size):
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            stopper.update(F.cross_entropy(head(held[0]), held[1]).item(), epoch, head)
        if stopper.stopped:
            break
    stopper.restore(head)
    return ProbeFit(head, epoch + 1, stopper.best_epoch, stopper.best)


@torch.no_grad()
def accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (%) of ``head`` on ``features [N, D]``, ``labels [N]``."""
    return 100.0 * float((head(features).argmax(1) == labels).double().mean())


def features(stage: _Stage, encoder: nn.Module, accelerator, take, positions=None):
    """``(values [N, D] float32, labels [N])`` of ``take(encoder output, images)`` over the
    training images at ``positions`` (every process its shard, gathered, in order), or over
    the validation images when ``positions`` is the string ``"val"``; on the device."""
    f = stage.loader_factories
    loader = f["val"]() if isinstance(positions, str) else f["train_eval"](positions)
    values, labels = collect(encoder, loader, accelerator, take)
    return values.to(accelerator.device), labels.to(accelerator.device)


class AuthorsLinear(Linear):
    """Stage linear of the notebooks' protocol: each depth's features (P1, P2, P3) of the
    frozen model extracted once, without augmentation, and a softmax layer fitted on them
    with Adam (``method.linear_lr``, batch ``method.linear_batch_size``), for at most
    ``method.linear_epochs`` epochs, stopped after ``method.patience`` epochs without a lower
    held-out loss; the test accuracy of the kept weights is ``selected_<depth>_acc1``."""

    trains = False

    @classmethod
    def metrics(cls):
        from gssl_fast.methods.simclr.models import DEPTHS

        about = "Epochs the linear classifier trained before early stopping (the authors' protocol)."
        return {**super().metrics(), **{f"trained_{d}_epochs": Metric("epochs", d.upper(), about=about, curve=False)
                                        for d in DEPTHS}}

    def build_model(self):
        self.best = {}
        return self.pretrained()

    def run(self, accelerator) -> dict:
        from gssl_fast.methods.simclr.models import DEPTHS

        encoder, (train, held) = self.model.to(accelerator.device).eval(), self.split()
        widths = [encoder.width(d) for d in DEPTHS]
        take = lambda out, x: torch.cat([out[d].float() for d in DEPTHS], 1)  # noqa: E731
        sets = {name: features(self, encoder, accelerator, take, pos)
                for name, pos in (("train", train), ("held", held), ("val", "val"))}
        row, start = {}, 0
        for d, width in zip(DEPTHS, widths):
            part = {name: (v[:, start:start + width], lab) for name, (v, lab) in sets.items()}
            start += width
            fit = fit_probe(part["train"], part["held"], num_classes=self.ctx.num_classes, lr=self.cfg.linear_lr,
                            batch_size=self.cfg.linear_batch_size or self.ctx.train.batch_size,
                            max_epochs=self.cfg.linear_epochs, patience=self.cfg.patience,
                            seed=derive_seed(self.ctx.train.seed, "linear", d))
            val = accuracy(fit.head, *part["val"])
            row.update({f"holdout_{d}_acc1": accuracy(fit.head, *part["held"]), f"val_{d}_acc1": val,
                        f"selected_{d}_acc1": val, f"selected_{d}_epoch": fit.best_epoch,
                        f"trained_{d}_epochs": fit.epochs})
        row["val_acc1"] = row[f"val_{DEPTHS[0]}_acc1"]
        return row


class FinetuneHead(_Stage):
    """Stage finetune_head of the notebooks' protocol (their first ``fit``): the class head
    alone on the frozen extractor's features (P3, BatchNorm in inference mode, no
    augmentation) of the fine-tuning images, Adam (``method.finetune_head_lr``), at most
    ``method.finetune_head_epochs`` epochs, stopped early on the held-out loss. Leaves the
    head in ``head.pt`` for stage finetune."""

    stage, trains = "finetune_head", False

    @classmethod
    def metrics(cls):
        about = ("The fine-tuning head trained alone on the frozen extractor: top-1 accuracy (%) on the held-out "
                 "and validation images, the epoch kept and the epochs trained.")
        return {**super().metrics(), "head_holdout_acc1": Metric("holdout", "head", "%", ".2f", about=about),
                "head_val_acc1": Metric("val", "head", "%", ".2f", about=about),
                "head_selected_epoch": Metric("selected epoch", "head", about=about, curve=False),
                "head_epochs": Metric("epochs", "head", about=about, curve=False)}

    def build_model(self):
        return self.pretrained()

    def run(self, accelerator) -> dict:
        encoder, c = self.model.to(accelerator.device).eval(), self.cfg
        take = lambda out, x: out["features"].float()  # noqa: E731
        sets = [features(self, encoder, accelerator, take, pos)
                for pos in (finetune_positions(c, self.ctx), linear_split(c, self.ctx)[1], "val")]
        fit = fit_probe(sets[0], sets[1], num_classes=self.ctx.num_classes, lr=c.finetune_head_lr,
                        batch_size=c.finetune_batch_size or self.ctx.train.batch_size,
                        max_epochs=c.finetune_head_epochs, patience=c.patience,
                        seed=derive_seed(self.ctx.train.seed, "finetune_head"))
        if accelerator.is_main_process:
            checkpoint.save_atomic({"head": {k: v.cpu() for k, v in fit.head.state_dict().items()}},
                                   self.folder() / HEAD)
        accelerator.wait_for_everyone()
        return {"head_holdout_acc1": accuracy(fit.head, *sets[1]), "head_val_acc1": accuracy(fit.head, *sets[2]),
                "head_selected_epoch": fit.best_epoch, "head_epochs": fit.epochs}


class AuthorsFinetune(Finetune):
    """Stage finetune of the notebooks' protocol (their second ``fit``): the head of stage
    finetune_head and the whole backbone trained together with Adam (``method.finetune_lr``,
    constant, no weight decay), BatchNorm kept in inference mode, no augmentation; stopped
    after ``method.patience`` epochs without a lower held-out loss, the best epoch's weights
    put back before the last checkpoint (what load_model exports); ``finetune_acc1`` is
    their test accuracy."""

    @classmethod
    def metrics(cls):
        about = "Fine-tuning (the authors' protocol): the held-out loss and top-1 (%) that stop it, the epoch kept."
        return {**super().metrics(), "holdout_loss": Metric("loss", "holdout", about=about),
                "holdout_acc1": Metric("top-1", "holdout", "%", ".2f", about=about),
                "selected_epoch": Metric("selected epoch", "holdout", about=about, curve=False)}

    def build_model(self):
        from gssl_fast.methods.simclr.models import FineTuned

        model = FineTuned(self.pretrained(), self.ctx.num_classes, bn_eval=True)
        head = self.folder("finetune_head") / HEAD
        if head.is_file():
            model.head.load_state_dict(checkpoint.load(head)["head"])
        elif not checkpoint.list_checkpoints(self.folder()):  # a checkpoint of this stage holds the head anyway
            raise UserError(f"stage finetune needs the head stage finetune_head leaves in {head}; run that stage "
                            "first (--stage finetune_head)")
        self.stopper, self.selected = EarlyStopping(self.cfg.patience), 0.0
        return model

    def stage_sections(self, recipe):
        return self.sections(recipe, epochs=self.cfg.finetune_epochs, lr=self.cfg.finetune_lr,
                             batch_size=self.cfg.finetune_batch_size or None, name="adam", weight_decay=0.0,
                             schedule="constant", warmup_epochs=0.0)

    def streams(self):
        batch = self.cfg.finetune_batch_size or self.ctx.train.batch_size
        return {"train": Stream(batch, augment=False, indices=finetune_positions(self.cfg, self.ctx))}

    def evaluate(self, model, loader, *, accelerator, epoch, last):
        report = Method.evaluate(self, model, loader, accelerator=accelerator, epoch=epoch, last=last)
        held = self.loader_factories["train_eval"](linear_split(self.cfg, self.ctx)[1])
        logits, labels = collect(model, held, accelerator, lambda out, x: out["logits"].float())
        loss = float(F.cross_entropy(logits, labels))
        if self.stopper.update(loss, epoch, model):
            self.selected = report["val_acc1"]
        if self.stopper.stopped or last:
            self.stopper.restore(model)  # before this epoch's checkpoint: the run ends with the kept weights
        held_acc = 100.0 * float((logits.argmax(1) == labels).double().mean())
        return {**report, "holdout_loss": loss, "holdout_acc1": held_acc, "finetune_acc1": self.selected,
                "selected_epoch": self.stopper.best_epoch}

    def early_stop(self) -> bool:
        return self.stopper.stopped

    def state_dict(self):
        return {"early": self.stopper.state_dict(), "selected": torch.tensor(self.selected, dtype=torch.float64)}

    def load_state_dict(self, state):
        if "early" in state:
            self.stopper.load_state_dict(state["early"])
            self.selected = float(state["selected"])
