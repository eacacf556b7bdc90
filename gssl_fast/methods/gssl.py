"""The G-SSL step several methods share: the class head with its loss (CE or LDAM-DRW)
and, with ``pretext.tasks``, the gated pretext heads on the loader's localizable views
(docs/method.md section 2). Supervised, adversarial and FixMatch training extend it."""

from __future__ import annotations

from gssl_fast.methods.base import Method
from gssl_fast.task import build_task, gssl_scalars, pretext_batch_targets


class GSSLMethod(Method):
    """A method whose model is the G-SSL component (``task.GSSLTask``): the class head
    with its loss (CE or LDAM-DRW) and, with ``pretext.tasks``, the gated pretext heads."""

    def build_model(self):
        c = self.ctx
        return build_task(c.model, c.pretext, c.loss, num_classes=c.num_classes, class_counts=c.class_counts,
                          mean=c.mean, std=c.std)

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
