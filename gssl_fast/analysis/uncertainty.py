"""What a trained model says about how sure it is: calibration of its class head, and
out-of-distribution (OOD) scores from the class head and the pretext heads.

Calibration (``calibration``): expected calibration error over 15 equal-width confidence
bins (percent), negative log-likelihood (nats) and the Brier score (sum over classes of
the squared error of the probabilities, mean over images); ``fit_temperature`` finds the
``T`` of ``softmax(logits / T)`` that minimizes the NLL of held-out images.

OOD scores, higher = more unlike the training data (``ood_scores``):
    msp          1 - the maximum softmax probability (Hendrycks and Gimpel)
    energy       -logsumexp(logits) (Liu et al.)
    pretext      the pretext heads' mean loss over a fixed set of localizable transforms of
                 the image: every rotation label (4 quadrants x 4 turns), and each quadrant
                 flipped / with each channel permutation when those heads were trained
                 (Hendrycks et al. 2019's rotation score, on quadrants)
    msp_pretext  -log(max softmax) + pretext, both in nats (their combination)
``ood_metrics`` gives AUROC and AUPR (OOD images the positives) and the FPR at 95 % TPR (the
share of OOD images taken for in-distribution when 95 % of those are), all in percent.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BINS = 15
SCORES = ("msp", "energy", "pretext", "msp_pretext")
PRETEXT_SCORES = ("pretext", "msp_pretext")


def calibration(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict:
    """``{ece, nll, brier}`` of ``[N, K]`` logits against ``[N]`` int64 labels (ECE in
    percent) and the reliability diagram's ``bins`` (``{lower, upper, count, accuracy,
    confidence}`` lists, accuracy and confidence in [0, 1])."""
    logits = logits.double() / temperature
    probs = logits.softmax(1)
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, BINS + 1, dtype=torch.float64)
    # Bin b holds confidences in (edge b, edge b+1]; a confidence of 0 cannot occur.
    which = torch.bucketize(confidence, edges[1:-1], right=False)
    count = torch.bincount(which, minlength=BINS).double()
    acc = torch.bincount(which, weights=correct, minlength=BINS) / count.clamp(min=1)
    conf = torch.bincount(which, weights=confidence, minlength=BINS) / count.clamp(min=1)
    ece = float((count / len(labels) * (acc - conf).abs()).sum()) * 100
    onehot = F.one_hot(labels, logits.shape[1]).double()
    return {"ece": ece, "nll": float(F.cross_entropy(logits, labels)),
            "brier": float(((probs - onehot) ** 2).sum(1).mean()),
            "bins": {"lower": edges[:-1].tolist(), "upper": edges[1:].tolist(), "count": count.long().tolist(),
                     "accuracy": acc.tolist(), "confidence": conf.tolist()}}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature ``T > 0`` minimizing the NLL of ``softmax(logits / T)`` on these
    (held-out) ``[N, K]`` logits and ``[N]`` labels: L-BFGS on ``log T``, from ``T = 1``."""
    logits, log_t = logits.double(), torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def transform_set(tasks) -> list[dict[str, int]]:
    """The fixed localizable transforms of the pretext score (module docstring):
    ``[{quadrant, flip, rotation, perm}]``."""
    tasks = tuple(tasks)
    rotations = range(4) if "rotation" in tasks else (0,)
    out = [dict(quadrant=q, flip=0, rotation=k, perm=0) for q in range(4) for k in rotations]
    if "flip" in tasks:
        out += [dict(quadrant=q, flip=1, rotation=0, perm=0) for q in range(4)]
    if "perm" in tasks:
        out += [dict(quadrant=q, flip=0, rotation=0, perm=p) for q in range(4) for p in range(1, 6)]
    return out


@torch.no_grad()
def pretext_score(model, images: torch.Tensor, flip_axis: str = "horizontal") -> torch.Tensor:
    """``[B]`` float32: the mean, over :func:`transform_set`, of the summed cross-entropy
    of every pretext head of ``model`` (``model.tasks``) on its transform's label;
    ``images`` ``[B, 3, H, W]`` pixels (uint8 or float in [0, 1])."""
    from pipelines.localizable import PARAM_KEYS, apply_localizable, pretext_targets

    b, total = len(images), torch.zeros(len(images), dtype=torch.float32, device=images.device)
    transforms = transform_set(model.tasks)
    for t in transforms:
        params = {k: torch.full((b,), t[k], dtype=torch.int64, device=images.device) for k in PARAM_KEYS}
        out = model(apply_localizable(images, **params, flip_axis=flip_axis))
        targets = pretext_targets(params, model.tasks)
        total += model.pretext_losses(out["pretext_logits"], targets).sum(0)
    return total / len(transforms)


def ood_scores(logits: torch.Tensor, pretext: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``{score: [N] float}`` of module docstring from ``[N, K]`` logits and the ``[N]``
    pretext score (None: a model without pretext heads, which gives msp and energy only)."""
    logits = logits.double()
    log_msp = logits.log_softmax(1).max(1).values
    out = {"msp": 1 - log_msp.exp(), "energy": -logits.logsumexp(1)}
    if pretext is not None:
        out["pretext"] = pretext.double()
        out["msp_pretext"] = pretext.double() - log_msp
    return out


def ood_metrics(inside: np.ndarray, outside: np.ndarray) -> dict[str, float]:
    """``{auroc, aupr, fpr95}`` in percent of anomaly scores of in-distribution images
    ``inside`` ``[N]`` and OOD images ``outside`` ``[M]`` (OOD the positive class)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    inside, outside = np.asarray(inside, dtype=np.float64), np.asarray(outside, dtype=np.float64)
    truth = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    scores = np.r_[inside, outside]
    # 95 % of in-distribution images are at or below this score, taken as in-distribution.
    threshold = np.quantile(inside, 0.95, method="higher")
    return {"auroc": 100 * roc_auc_score(truth, scores), "aupr": 100 * average_precision_score(truth, scores),
            "fpr95": 100 * float((outside <= threshold).mean())}
