"""The G-SSL step several methods share: the class head with its loss (CE or LDAM-DRW)
and, with ``pretext.tasks``, the gated pretext heads on the loader's localizable views
(docs/method.md section 2). Supervised, adversarial and FixMatch training extend it."""

from __future__ import annotations

from gssl_fast.methods.base import Method, Metric
from gssl_fast.model.task import build_task, gssl_scalars, pretext_batch_targets


# What the G-SSL component logs (``task.gssl_scalars``: ``pretext_acc/<task>``, ``gate/<task>``).
GSSL_METRICS: dict[str, Metric] = {
    "gate": Metric("gate value", "gate", fmt=".3f",
                   about="The gate's weight on each pretext task's loss in training, a line per task (the long "
                         "paper's Figure 6)."),
    "pretext_acc": Metric("pretext head top-1", "pretext", "%", ".2f",
                          about="Top-1 accuracy (%) of each pretext head on its transform's labels in training, "
                                "a line per task."),
}


class GSSLMethod(Method):
    """A method whose model is the G-SSL component (``task.GSSLTask``): the class head
    with its loss (CE or LDAM-DRW) and, with ``pretext.tasks``, the gated pretext heads."""

    def build_model(self):
        c = self.ctx
        return build_task(c.model, c.pretext, c.loss, num_classes=c.num_classes, class_counts=c.class_counts,
                          mean=c.mean, std=c.std)

    @classmethod
    def metrics(cls):
        return {**super().metrics(), **cls.own_metrics(), **GSSL_METRICS}

    @classmethod
    def own_metrics(cls) -> dict:
        """What a method built on the G-SSL model logs besides it (``{field: Metric}``),
        shown after the evaluation and before the G-SSL groups."""
        return {}

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.model.tasks

    def on_epoch_start(self, epoch: int) -> None:
        self.model.class_loss.set_epoch(epoch)  # deferred re-weighting from loss.drw_start_epoch

    def gssl_step(self, model, images, batch) -> dict:
        """The G-SSL loss of ``images`` (pixels) with the labels and pretext targets of ``batch``."""
        targets = pretext_batch_targets(batch, self.tasks)
        out = model(images, batch["labels"], targets)
        return {"loss": out["loss"], **gssl_scalars(out, targets, self.tasks)}
