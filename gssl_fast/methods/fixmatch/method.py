"""FixMatch with G-SSL (long paper, Table 4; docs/method.md section 3 "FixMatch + G-SSL").

Two streams: ``labeled`` (batch B, a class-balanced subset of ``num_labels`` training
images) and ``unlabeled`` (batch mu * B, every training image), each with its views
batched on the device by the loader:

    labeled     images   weak (flip + crop with reflect padding), then the localizable transform
    unlabeled   weak     weak, untransformed: the pseudo-labeller
                strong   weak, RandAugment (2 ops of FixMatch's pool), Cutout, then the localizable transform

One forward over all three batches (BatchNorm sees them together, as the reference
ports' interleaving does), then

    L = L_s + lambda_u * L_u + lambda * L_ssl

``L_s``: cross-entropy of the labeled images; ``L_u``: cross-entropy of the strong view
against the weak view's argmax, counted where the weak view's top probability is at
least ``tau`` (mean over all unlabeled images); ``L_ssl``: the gated pretext loss over
every transformed image of the step (labeled and strong), weighted by
``pretext.lambda`` (0.3 in the paper's row). EMA weights (timm's ``ModelEmaV3``,
parameters averaged, buffers copied) are evaluated each epoch (``val_acc1``; the raw
weights give ``val_raw_acc1``), saved with checkpoints and exported by ``load_model``.

    [method]
    name = "fixmatch"
    num_labels = 4000       # labeled images, the same number per class
    labels_file = ""        # a text file of labeled dataset positions instead (one per line)
    mu = 7                  # unlabeled batch = mu x train.batch_size
    tau = 0.95              # confidence threshold of the pseudo-labels
    lambda_u = 1.0          # weight of L_u
    ema_decay = 0.999       # 0: no EMA (the raw weights are evaluated)
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gssl_fast.methods.base import GENERIC_METRICS, Metric, Stream
from gssl_fast.methods.fixmatch.config import FixMatchConfig
from gssl_fast.methods.gssl import GSSLMethod
from gssl_fast.model.task import gssl_scalars
from pipelines.atomic import write_text_atomic
from pipelines.errors import UserError
from pipelines.sampling import balanced_subset

# Where a run keeps the positions of its labeled images.
LABELED_FILE = "labeled_indices.txt"


def read_positions(path: str, n: int) -> np.ndarray:
    """Dataset positions from a text file (one integer per line), checked against ``n``
    training images; errors name the file."""
    try:
        with warnings.catch_warnings():  # an empty file is reported below, not warned about
            warnings.simplefilter("ignore", UserWarning)
            values = np.loadtxt(path, dtype=np.int64, ndmin=1, comments="#")
    except OSError as e:
        raise UserError(f"method.labels_file = {path!r}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise UserError(f"method.labels_file = {path!r}: expected one integer per line ({e})") from None
    if not len(values):
        raise UserError(f"method.labels_file = {path!r} lists no positions")
    if values.min() < 0 or values.max() >= n:
        raise UserError(f"method.labels_file = {path!r} lists positions outside 0..{n - 1} "
                        f"(found {values.min()}..{values.max()}) for the {n} training images")
    if len(np.unique(values)) != len(values):
        raise UserError(f"method.labels_file = {path!r} lists a position twice")
    return values


def write_positions(path: Path, positions: np.ndarray) -> None:
    """Writes ``positions`` one per line, atomically (a temp file, then a rename)."""
    write_text_atomic(path, "".join(f"{int(i)}\n" for i in positions))


def unlabeled_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, tau: float) -> dict:
    """FixMatch's consistency term for ``[U, K]`` logits of the weak and strong views.

    Returns ``loss_u`` (mean over all U images of the strong view's cross-entropy against
    the weak view's argmax, zero where the weak view's top probability is below ``tau``),
    ``mask`` ``[U]`` float (1 where kept) and ``pseudo`` ``[U]`` int64 (the argmax).
    The pseudo-labels carry no gradient.
    """
    probs = torch.softmax(logits_weak.detach().float(), dim=-1)
    confidence, pseudo = probs.max(dim=-1)
    mask = (confidence >= tau).float()
    loss = (F.cross_entropy(logits_strong.float(), pseudo, reduction="none") * mask).mean()
    return {"loss_u": loss, "mask": mask, "pseudo": pseudo}


def fixmatch_views(*, padding: int = 4, hflip: bool = True, mode: str = "reflect", tasks=(), flip_axis="horizontal",
                   ops: int = 2, magnitude: int = 10, cutout: float = 0.5) -> tuple[dict, dict]:
    """``(labeled views, unlabeled views)`` of ``pipelines.views`` ops: ``{"images": weak
    (+ localizable)}`` and ``{"weak": weak, "strong": weak + RandAugment + Cutout (+ localizable)}``."""
    from pipelines.randaugment import Cutout, RandAugment
    from pipelines.views import CropFlip, Localizable

    weak = (CropFlip(padding, hflip, mode=mode),) if padding or hflip else ()
    loc = (Localizable(tuple(tasks), flip_axis),) if tasks else ()
    strong = (*weak, RandAugment(num_ops=ops, magnitude_max=magnitude), Cutout(cutout), *loc)
    return {"images": (*weak, *loc)}, {"weak": weak, "strong": strong}


class FixMatch(GSSLMethod):
    name = "fixmatch"
    Config = FixMatchConfig

    @classmethod
    def own_metrics(cls):
        losses = ("FixMatch's losses per epoch: L_s of the labeled images (loss_x) and L_u of the unlabeled ones "
                  "(loss_u).")
        trained = {"loss_x": Metric("loss_x", "train", about=losses), "loss_u": Metric("loss_u", "train", about=losses),
                   "mask_rate": Metric("mask_rate", "train", about="The share of unlabeled images whose weak view's "
                                       "top probability reaches method.tau (their pseudo-labels count)."),
                   "pseudo_acc": Metric("pseudo_acc", "train", "%", ".2f", about="Top-1 accuracy (%) of the counted "
                                        "pseudo-labels against the true labels (monitoring only).")}
        # The raw weights' evaluation beside the EMA weights' (val_raw_acc1, ...); no per-class bars of its own.
        raw = {f"val_raw_{k[4:]}": replace(m, group="raw weights" if m.group != "per-class" else "",
                                           about="Validation accuracy (%) of the raw weights (the EMA weights "
                                                 "give the other validation numbers).")
               for k, m in GENERIC_METRICS.items() if k.startswith("val_")}
        return {**trained, **raw}

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.ema = None

    # ---- data
    def labeled_positions(self) -> np.ndarray:
        """The labeled subset: ``method.labels_file``, or drawn (:meth:`on_train_start` writes it
        to the run folder)."""
        labels = self.ctx.train_labels
        if labels is None:
            raise ValueError("FixMatch needs the training labels (MethodContext.train_labels) to pick its subset")
        if self.cfg.labels_file:
            positions = read_positions(self.cfg.labels_file, len(labels))
        else:
            try:
                positions = balanced_subset(labels, self.cfg.num_labels, self.ctx.num_classes, self.cfg.label_seed)
            except ValueError as e:
                raise UserError(f"method.num_labels = {self.cfg.num_labels}: {e}; pick a multiple of "
                                f"{self.ctx.num_classes} that every class can give") from None
        return positions

    def on_train_start(self) -> None:
        if self.ctx.run_dir is not None and self.ctx.main_process:
            write_positions(Path(self.ctx.run_dir) / LABELED_FILE, self.labeled_positions())

    def streams(self) -> dict[str, Stream]:
        d, p, b = self.ctx.data, self.ctx.pretext, self.ctx.train.batch_size
        labeled, unlabeled = fixmatch_views(
            padding=d.crop_padding, hflip=d.hflip, mode=self.cfg.padding_mode, tasks=p.tasks, flip_axis=p.flip_axis,
            ops=self.cfg.strong_ops, magnitude=self.cfg.strong_magnitude, cutout=self.cfg.cutout)
        return {"labeled": Stream(b, views=labeled, indices=self.labeled_positions()),
                "unlabeled": Stream(self.cfg.mu * b, views=unlabeled)}

    # ---- training
    def on_epoch_start(self, epoch: int) -> None:
        self._ensure_ema()

    def _ensure_ema(self):
        # Made from the weights before the first step, on the device the loop moved them to.
        if self.ema is None and self.cfg.ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=self.cfg.ema_decay, exclude_buffers=True)
        return self.ema

    def on_optimizer_step(self, model) -> None:
        if self.ema is not None:
            self.ema.update(model)

    def training_step(self, model, batches, *, accelerator) -> dict:
        lab, unl = batches["labeled"], batches["unlabeled"]
        b, u = lab["images"].shape[0], unl["weak"].shape[0]
        out = model(torch.cat([lab["images"], unl["weak"], unl["strong"]]))
        logits = out["logits"].float()
        loss_x = F.cross_entropy(logits[:b], lab["labels"])
        cons = unlabeled_loss(logits[b : b + u], logits[b + u :], self.cfg.tau)
        kept = cons["mask"].sum()
        hits = ((cons["pseudo"] == unl["labels"]).float() * cons["mask"]).sum()
        row = {"loss_x": loss_x.detach(), "loss_u": cons["loss_u"].detach(), "mask_rate": cons["mask"].mean(),
               # Monitoring only: the true labels of the unlabeled images never reach the loss.
               "pseudo_acc": 100.0 * hits / kept.clamp(min=1.0)}
        loss = loss_x + self.cfg.lambda_u * cons["loss_u"]
        if self.tasks:
            # The transformed images: the labeled batch and the strong view.
            rows = torch.cat([torch.arange(b), torch.arange(b + u, b + 2 * u)]).to(logits.device)
            targets = {f"target_{t}": torch.cat([lab[f"target_{t}"], unl[f"strong/target_{t}"]]) for t in self.tasks}
            pre = {t: v.index_select(0, rows) for t, v in out["pretext_logits"].items()}
            gate = out.get("gate_logits")
            terms = self.model.pretext_terms(pre, None if gate is None else gate.index_select(0, rows), targets)
            loss = loss + self.model.lam * terms["loss_ssl"]
            row.update(gssl_scalars({**terms, "logits": logits, "pretext_logits": pre}, targets, self.tasks))
            row.pop("loss_cls")
        return {"loss": loss, **row}

    # ---- evaluation
    def evaluate(self, model, loader, *, accelerator, epoch: int, last: bool) -> dict:
        raw = super().evaluate(model, loader, accelerator=accelerator, epoch=epoch, last=last)
        if self._ensure_ema() is None:
            return raw
        with torch.no_grad():  # the buffers the loop made equal on every process
            for mine, theirs in zip(self.ema.module.buffers(), model.buffers()):
                mine.copy_(theirs)
        report = super().evaluate(self.ema.module, loader, accelerator=accelerator, epoch=epoch, last=last)
        report.update({f"val_raw_{k[4:]}": v for k, v in raw.items() if k.startswith("val_")})
        return report

    def eval_model(self):
        return self.ema.module if self._ensure_ema() is not None else self.model

    def state_dict(self) -> dict:
        return {"ema": self.ema.module.state_dict()} if self.ema is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "ema" in state and self._ensure_ema() is not None:
            self.ema.module.load_state_dict(state["ema"])
