"""The stages of SimCLR and G-SimCLR, each a method of its own trained (or run) by the
loop in ``<run>/stages/<name>/`` (``gssl_fast.run.stages``): autoencoder, cluster, pretrain,
linear, finetune. A stage reads what the stages before it wrote there."""


from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gssl_fast import checkpoint
from gssl_fast.methods.base import Method, Metric, Stream, main_batch, pixels
from gssl_fast.methods.simclr.config import SimCLRConfig
from gssl_fast.model.metrics import gather_by_index
from gssl_fast.sections import Recipe
from pipelines.atomic import write_atomic
from pipelines.errors import UserError

CODES, PSEUDO_LABELS, CLUSTERS = "codes.npy", "pseudo_labels.npy", "clusters.json"
# The optimizer of linear evaluation and fine-tuning (cosine over their epochs), whatever pretraining used.
SGD = dict(name="sgd", momentum=0.9, nesterov=False, schedule="cosine", warmup_epochs=0.0)


class _Stage(Method):
    """A stage of :class:`SimCLR`: reads and writes the files of the run's stages."""

    stage = ""

    def folder(self, stage: str | None = None) -> Path:
        return checkpoint.stage_dir(self.ctx.run_dir, stage or self.stage)

    def pretrained(self):
        """The contrastive model with the weights of the pretrain stage's last checkpoint."""
        found = checkpoint.list_checkpoints(self.folder("pretrain"))
        if not found:
            raise UserError(f"stage {self.stage} needs a pretrained model; {self.folder('pretrain')} has no checkpoint")
        model = build_contrastive(self.ctx, self.cfg)
        model.load_state_dict(checkpoint.load(found[-1])["model"])
        return model

    def sections(self, recipe: Recipe, *, epochs: int, lr: float, batch_size: int | None = None,
                 **optim) -> Recipe:
        train = dataclasses.replace(recipe.train, epochs=epochs, steps=0, steps_per_epoch=0,
                                    batch_size=batch_size or recipe.train.batch_size)
        opt = dataclasses.replace(recipe.optim, lr=lr, **optim)
        return dataclasses.replace(recipe, train=train, optim=opt)


def build_contrastive(ctx, cfg):
    from gssl_fast.methods.simclr.models import ContrastiveModel
    from gssl_fast.model.network import InputNormalize, build_backbone

    return ContrastiveModel(build_backbone(ctx.model), InputNormalize(ctx.mean, ctx.std), cfg.projection)


class AutoencoderStage(_Stage):
    stage = "autoencoder"

    @classmethod
    def metrics(cls):
        about = ("Mean squared error of the autoencoder's reconstruction of the validation images and (with "
                 "method.ae_patience) of the held-out training images that stop it (pixels in [0, 1]).")
        return {**super().metrics(), "val_mse": Metric("MSE", "val", about=about),
                "holdout_mse": Metric("held-out MSE", "val", about=about)}

    def build_model(self):
        from gssl_fast.methods.simclr.models import Autoencoder
        from gssl_fast.methods.simclr.early_stopping import EarlyStopping

        self.stopper = EarlyStopping(self.cfg.ae_patience) if self.cfg.ae_patience else None
        return Autoencoder(decoder=self.cfg.ae_decoder)

    def stage_sections(self, recipe):
        return self.sections(recipe, epochs=self.cfg.ae_epochs, lr=self.cfg.ae_lr, batch_size=self.cfg.ae_batch_size,
                             name="adam", weight_decay=0.0, schedule="constant", warmup_epochs=0.0)

    def streams(self):
        subset = linear_split(self.cfg, self.ctx)[0] if self.stopper else None  # the held-out share stops it
        return {"train": Stream(self.cfg.ae_batch_size, views={"images": ()}, indices=subset)}

    def training_step(self, model, batches, *, accelerator):
        x = pixels(main_batch(batches)["images"])
        noisy = x + self.cfg.ae_noise * torch.randn_like(x)
        loss = F.mse_loss(model(noisy)["reconstruction"].float(), x)
        return {"loss": loss}

    def evaluate(self, model, loader, *, accelerator, epoch, last):
        mse = lambda out, x: F.mse_loss(out["reconstruction"].float(), pixels(x),  # noqa: E731
                                        reduction="none").mean(dim=(1, 2, 3))[:, None]
        report = {"val_mse": float(collect(model, loader, accelerator, mse)[0].mean())}
        if self.stopper is not None:  # Keras' EarlyStopping on the held-out MSE, the best weights kept
            held = self.loader_factories["train_eval"](linear_split(self.cfg, self.ctx)[1])
            report["holdout_mse"] = float(collect(model, held, accelerator, mse)[0].mean())
            self.stopper.update(report["holdout_mse"], epoch, model)
            if self.stopper.stopped or last:
                self.stopper.restore(model)  # before this epoch's checkpoint and the codes
        return report

    def early_stop(self) -> bool:
        return self.stopper is not None and self.stopper.stopped

    def state_dict(self):
        return {"early": self.stopper.state_dict()} if self.stopper is not None else {}

    def load_state_dict(self, state):
        if self.stopper is not None and "early" in state:
            self.stopper.load_state_dict(state["early"])

    def finish(self, accelerator):
        """The codes of every training image, in dataset order -> codes.npy."""
        codes, _ = collect(self.model, self.loader_factories["train_eval"](), accelerator, lambda out, x: out["code"])
        if accelerator.is_main_process:
            save_array(self.folder() / CODES, codes.numpy().astype(np.float32))


class Cluster(_Stage):
    stage, trains = "cluster", False

    @classmethod
    def metrics(cls):
        about = "k-means of the autoencoder's codes: the clusters and the images of the smallest and largest."
        return {**super().metrics(), "clusters": Metric("k", "clusters", about=about, curve=False),
                "cluster_min": Metric("smallest", "clusters", about=about, curve=False),
                "cluster_max": Metric("largest", "clusters", about=about, curve=False)}

    def build_model(self):
        return torch.nn.Identity()

    def run(self, accelerator):
        from sklearn.cluster import KMeans

        path = self.folder() / PSEUDO_LABELS
        k = self.cfg.clusters or self.ctx.train.batch_size * accelerator.num_processes
        if accelerator.is_main_process:
            codes = np.load(self.folder("autoencoder") / CODES, allow_pickle=False)
            km = KMeans(n_clusters=k, n_init=self.cfg.kmeans_n_init, random_state=self.ctx.train.seed).fit(codes)
            labels = km.labels_.astype(np.int64)
            save_array(path, labels)
            sizes = np.bincount(labels, minlength=k)
            (self.folder() / CLUSTERS).write_text(json.dumps({"k": k, "sizes": sizes.tolist(),
                                                              "inertia": float(km.inertia_)}))
        accelerator.wait_for_everyone()
        sizes = np.bincount(np.load(path, allow_pickle=False), minlength=k)
        return {"clusters": k, "cluster_min": int(sizes.min()), "cluster_max": int(sizes.max())}


class Pretrain(_Stage):
    stage = "pretrain"

    @classmethod
    def metrics(cls):
        guided = ("Guided batches, epoch means: the most images of one pseudo-label in a global batch, whether the "
                  "batch is one planned batch (1) and by how much it exceeds the plan's bound (0 by construction).")
        return {**super().metrics(),
                "val_knn_acc1": Metric("top-1", "kNN", "%", ".2f", about="Top-1 accuracy (%) of a kNN classifier "
                                       "(k = method.knn_k) on the pooled features of the validation images, the "
                                       "training images its memory bank."),
                "guided_max_repeat": Metric("max repeat", "guided", about=guided),
                "guided_in_plan": Metric("in plan", "guided", about=guided),
                "guided_excess": Metric("excess", "guided", about=guided)}

    def build_model(self):
        return build_contrastive(self.ctx, self.cfg)

    def streams(self):
        view = pretrain_view(self.cfg, self.ctx.data.image_size)
        self.plan, self.pseudo = None, None
        if self.cfg.guided:
            from pipelines.sampling import guided_batch_bound

            labels = np.load(self.folder("cluster") / PSEUDO_LABELS, allow_pickle=False)
            global_batch = self.ctx.train.batch_size * world_size()
            self.pseudo = torch.from_numpy(labels)
            self.plan = guided_plan(labels, global_batch, self.ctx.train.seed)
            self.bound = torch.from_numpy(guided_batch_bound(labels, global_batch))
        return {"train": Stream(self.ctx.train.batch_size, views={"view1": view, "view2": view}, plan=self.plan)}

    def on_epoch_start(self, epoch: int) -> None:
        if self.plan is not None:  # which planned global batch each image is in this epoch
            plan = torch.from_numpy(self.plan(epoch))
            self.row_of = torch.full((len(self.pseudo),), -1, dtype=torch.int64)
            self.row_of[plan.reshape(-1)] = torch.arange(len(plan)).repeat_interleave(plan.shape[1])

    def training_step(self, model, batches, *, accelerator):
        from gssl_fast.methods.simclr.losses import nt_xent

        batch = main_batch(batches)
        b = batch["view1"].shape[0]
        z = model(torch.cat([batch["view1"], batch["view2"]]))["z"]
        loss = nt_xent(z[:b], z[b:], self.cfg.temperature, gather=True)
        row = {"loss": loss}
        if self.pseudo is not None:
            # From the indices every process trained on: the most images of one
            # pseudo-label in the global batch, whether that batch is one planned batch,
            # and by how much it exceeds that batch's bound (0 by construction).
            everyone = accelerator.gather(batch["indices"]).cpu()
            repeat = torch.bincount(self.pseudo.index_select(0, everyone)).max()
            rows = self.row_of.index_select(0, everyone)
            row.update(guided_max_repeat=repeat.float(), guided_in_plan=(rows == rows[0]).all().float(),
                       guided_excess=(repeat - self.bound[rows[0]]).clamp(min=0).float())
        return row

    def evaluate(self, model, loader, *, accelerator, epoch, last):
        if not self.cfg.knn_k:
            return {}
        from gssl_fast.methods.simclr.losses import knn_accuracy

        feats = lambda out, x: out["features"]  # noqa: E731
        bank, bank_labels = collect(model, self.loader_factories["train_eval"](), accelerator, feats)
        query, query_labels = collect(model, loader, accelerator, feats)
        acc = knn_accuracy(bank, bank_labels, query, query_labels, k=self.cfg.knn_k, num_classes=self.ctx.num_classes)
        return {"val_knn_acc1": acc}


class Linear(_Stage):
    stage = "linear"

    @classmethod
    def metrics(cls):
        from gssl_fast.methods.simclr.models import DEPTHS

        out = super().metrics()
        for d in DEPTHS:
            about = (f"The linear classifier at {d.upper()}: top-1 accuracy (%) on the held-out training images that "
                     "select its epoch, on the validation images, and on those at the selected epoch (counted from 0).")
            out.update({f"holdout_{d}_acc1": Metric("holdout", d.upper(), "%", ".2f", about=about),
                        f"val_{d}_acc1": Metric("val", d.upper(), "%", ".2f", about=about),
                        f"selected_{d}_acc1": Metric("selected", d.upper(), "%", ".2f", about=about),
                        f"selected_{d}_epoch": Metric("selected epoch", d.upper(), about=about, curve=False)})
        return out

    def build_model(self):
        from gssl_fast.methods.simclr.models import LinearProbes

        self.best = {}
        return LinearProbes(self.pretrained(), self.ctx.num_classes)

    def stage_sections(self, recipe):
        return self.sections(recipe, epochs=self.cfg.linear_epochs, lr=self.cfg.linear_lr, **SGD, weight_decay=0.0,
                             batch_size=self.cfg.linear_batch_size or None)

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        return linear_split(self.cfg, self.ctx)

    def streams(self):
        return {"train": Stream(self.cfg.linear_batch_size or self.ctx.train.batch_size, indices=self.split()[0])}

    def training_step(self, model, batches, *, accelerator):
        batch = main_batch(batches)
        out = model(batch["images"])
        losses = {f"loss_{d}": F.cross_entropy(out[f"logits_{d}"], batch["labels"]) for d in model_depths(model)}
        return {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}}

    def evaluate(self, model, loader, *, accelerator, epoch, last):
        held = self.loader_factories["train_eval"](self.split()[1])
        report = {}
        for d in model.depths:
            pick = lambda out, x, d=d: out[f"logits_{d}"].argmax(1)[:, None]  # noqa: E731
            (hp, hl), (vp, vl) = (collect(model, ld, accelerator, pick) for ld in (held, loader))
            h_acc, v_acc = (100.0 * float((p[:, 0] == lab).double().mean()) for p, lab in ((hp, hl), (vp, vl)))
            report[f"holdout_{d}_acc1"], report[f"val_{d}_acc1"] = h_acc, v_acc
            if h_acc > self.best.get(d, (-1.0, 0.0, -1))[0]:
                self.best[d] = (h_acc, v_acc, epoch)
            report[f"selected_{d}_acc1"], report[f"selected_{d}_epoch"] = self.best[d][1], self.best[d][2]
        report["val_acc1"] = report[f"val_{model.depths[0]}_acc1"]
        return report

    def state_dict(self):
        return {"best": {d: torch.tensor(v, dtype=torch.float64) for d, v in self.best.items()}}

    def load_state_dict(self, state):
        self.best = {d: (float(v[0]), float(v[1]), int(v[2])) for d, v in state.get("best", {}).items()}


class Finetune(_Stage):
    stage = "finetune"

    @classmethod
    def metrics(cls):
        return {**super().metrics(), "finetune_acc1": Metric("fine-tuned top-1", "")}  # val_acc1 under its own name

    def build_model(self):
        from gssl_fast.methods.simclr.models import FineTuned

        return FineTuned(self.pretrained(), self.ctx.num_classes)

    def stage_sections(self, recipe):
        return self.sections(recipe, epochs=self.cfg.finetune_epochs, lr=self.cfg.finetune_lr, **SGD,
                             weight_decay=5e-4, batch_size=self.cfg.finetune_batch_size or None)

    def streams(self):
        batch = self.cfg.finetune_batch_size or self.ctx.train.batch_size
        return {"train": Stream(batch, indices=finetune_positions(self.cfg, self.ctx))}

    def training_step(self, model, batches, *, accelerator):
        batch = main_batch(batches)
        loss = F.cross_entropy(model(batch["images"])["logits"].float(), batch["labels"])
        return {"loss": loss}

    def evaluate(self, model, loader, *, accelerator, epoch, last):
        report = super().evaluate(model, loader, accelerator=accelerator, epoch=epoch, last=last)
        return {**report, "finetune_acc1": report["val_acc1"]}  # its own name in the run's table


def linear_split(cfg: SimCLRConfig, ctx) -> tuple[np.ndarray, np.ndarray]:
    """``([M] train positions, [N - M] held-out positions)`` of the linear stage: a seeded
    ``method.holdout`` share of every class held out to select the classifier."""
    from pipelines.sampling import held_out_positions

    labels = np.asarray(ctx.train_labels)
    held = held_out_positions(labels, cfg.holdout, ctx.train.seed)
    return np.setdiff1d(np.arange(len(labels)), held), held


def finetune_positions(cfg: SimCLRConfig, ctx) -> np.ndarray:
    """``[M]`` positions of the fine-tuning subset: ``method.finetune_fraction`` of the
    training images, the same number from every class; or (``finetune_subset = "random"``,
    the notebooks' ``np.random.choice(50000, 5000, replace=False)``) that share of all of
    them drawn at random, seeded, from the images the linear stage does not hold out."""
    from pipelines.sampling import balanced_subset, derive_seed

    labels = np.asarray(ctx.train_labels)
    if cfg.finetune_subset == "random":
        pool = linear_split(cfg, ctx)[0]
        rng = np.random.default_rng(derive_seed(ctx.train.seed, "finetune_subset"))
        count = min(len(pool), max(1, round(cfg.finetune_fraction * len(labels))))
        return np.sort(rng.choice(pool, size=count, replace=False))
    k = ctx.num_classes
    per_class = max(1, int(cfg.finetune_fraction * len(labels) / k))
    per_class = min(per_class, int(np.bincount(labels, minlength=k).min()))
    return balanced_subset(labels, per_class * k, k, ctx.train.seed)


def pretrain_view(cfg: SimCLRConfig, image_size: int) -> tuple:
    """The view of each pretraining image (both views alike): SimCLR's (``method.view =
    "simclr"``) or the notebooks' (``"authors"``), drawn per image or per batch."""
    from pipelines.simclr_ops import authors_view, simclr_view
    from pipelines.views import PerBatch

    if cfg.view == "authors":
        view = authors_view(cfg.color_strength, cfg.color_p)
    else:
        view = simclr_view(strength=cfg.color_strength, p=cfg.color_p, input_size=image_size,
                           scale=(cfg.crop_scale_min, 1.0))
    return tuple(PerBatch(op) for op in view) if cfg.view_draws == "batch" else view


def model_depths(model):
    return getattr(model, "module", model).depths


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def guided_plan(pseudo_labels: np.ndarray, global_batch: int, seed: int):
    """``fn(epoch)``: G-SimCLR's global batches of an epoch (``pipelines.sampling.guided_batches``), cached."""
    from pipelines.sampling import guided_batches

    @lru_cache(maxsize=2)
    def plan(epoch: int) -> np.ndarray:
        return guided_batches(pseudo_labels, global_batch, seed=seed, epoch=epoch)

    return plan


@torch.no_grad()
def collect(model, loader, accelerator, take) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [N, D] float32 CPU, labels [N])`` of ``take(model_output, images)`` over
    ``loader`` (every process its shard), gathered and put in dataset order."""
    was = model.training
    model.eval()
    rows, labels, index = [], [], []
    with accelerator.autocast():
        for batch in loader:
            rows.append(take(model(batch["images"]), batch["images"]).float())
            labels.append(batch["labels"])
            index.append(batch["indices"])
    model.train(was)
    _, values, labels = gather_by_index(accelerator, torch.cat(index), torch.cat(rows), torch.cat(labels))
    return values, labels


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary name, then a rename: a killed stage leaves no half file."""
    write_atomic(path, lambda f: np.save(f, array, allow_pickle=False))
