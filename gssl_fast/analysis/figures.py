"""The report's figures that read trained models: Grad-CAM on the last conv layer for a
fixed set of validation images, one column per run (the long paper's Figure 7), and a
t-SNE of the pooled validation features (Figure 8); and :class:`PageFigure`, how the
page (``gssl_fast.report``) shows any figure."""

from __future__ import annotations

import hashlib
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class PageFigure:
    """A PNG of the report with the heading and the one-line caption the page shows it with."""

    file: str
    heading: str
    caption: str


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _load(run: Path, loaded=None):
    """``(recipe, model, val)`` of ``run``: from ``loaded`` (what
    ``load_for_evaluation(run)`` gave) when the caller has it already."""
    from gssl_fast.analysis.inference import load_for_evaluation

    recipe, _, model, val = loaded or load_for_evaluation(run)
    return recipe, model, val


@dataclass(frozen=True)
class CamColumn:
    """One run's Grad-CAM: ``images`` uint8 [N, H, W, 3], the validation images it was
    computed on, their ``labels`` int [N] (indices of ``classes``), ``maps`` float [N, H, W]
    in [0, 1]."""

    run: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    maps: np.ndarray

    def image_key(self) -> str:
        """The same for two columns exactly when they show the same images with the same labels."""
        digest = hashlib.sha1(repr((self.images.shape, list(self.classes))).encode())
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()


def gradcam_column(run: Path, count: int, loaded=None) -> CamColumn:
    """Grad-CAM of the true class on the last conv layer of ``run``'s model for ``count``
    validation images spread over its split (``loaded``: as for :func:`_load`)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from gssl_fast.analysis.inference import Classifier
    from gssl_fast.model.network import last_conv_name

    _, model, val = _load(run, loaded)
    idx = np.linspace(0, len(val.labels) - 1, count).astype(int)
    images = val.images(idx)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    layer = dict(model.backbone.named_modules())[last_conv_name(model.backbone)]
    with GradCAM(model=Classifier(model), target_layers=[layer]) as cam:
        maps = cam(input_tensor=pixels, targets=[ClassifierOutputTarget(int(y)) for y in val.labels[idx]])
    return CamColumn(run.name, images, val.labels[idx], list(val.classes), maps)


def _wrap(text: str, width: int) -> str:
    # Run names are long and hyphenated (c10-rho0.01-gssl-rot-flip): broken over lines, never cut short.
    return textwrap.fill(text, width, break_on_hyphens=True, break_long_words=True) or text


def draw_gradcam(columns: list[CamColumn]):
    """A grid of the images of ``columns`` (which must share them): one row per image,
    the image and its class first, then each run's Grad-CAM over it. Returns the figure."""
    plt = _plt()
    first, wide = columns[0], 16  # characters a 1.6-inch column holds at 7 points
    count, titles = len(first.labels), [_wrap(c.run, wide) for c in columns]
    lines = max(t.count("\n") + 1 for t in titles)
    fig, axes = plt.subplots(count, len(columns) + 1, figsize=(1.6 * (len(columns) + 1), 1.6 * count + 0.15 * lines),
                             squeeze=False)
    for row in range(count):
        image = first.images[row] / 255.0
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(_wrap(first.classes[first.labels[row]], wide + 2), fontsize=6)
        for col, column in enumerate(columns, start=1):
            axes[row, col].imshow(image)
            axes[row, col].imshow(column.maps[row], cmap="jet", alpha=0.45)
    for col, title in enumerate(titles, start=1):
        axes[0, col].set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def gradcam_figures(columns: list[CamColumn], out: Path) -> tuple[list[PageFigure], str]:
    """Grad-CAM grids (Figure 7) of the runs' ``columns`` (:func:`gradcam_column`): one of
    every run when their validation images are the same, else one per set of runs that
    share them. Returns the figures and a note for the page ("" when there is one grid)."""
    plt = _plt()
    groups: dict[str, list[CamColumn]] = {}
    for column in columns:
        groups.setdefault(column.image_key(), []).append(column)
    figures = []
    for i, group in enumerate(groups.values(), start=1):
        names = ", ".join(c.run for c in group)
        figure = PageFigure("gradcam.png" if len(groups) == 1 else f"gradcam_{i}.png",
                            f"Grad-CAM: {names}" if len(groups) > 1 else "Grad-CAM",
                            f"Grad-CAM of the true class on the last conv layer for {len(group[0].labels)} validation "
                            f"images, one per row: the image, then a column per run ({names}).")
        fig = draw_gradcam(group)
        fig.savefig(out / figure.file, dpi=100)
        plt.close(fig)
        figures.append(figure)
    if len(groups) == 1:
        return figures, ""
    sets = "; ".join(", ".join(c.run for c in group) for group in groups.values())
    note = (f"The runs' validation images differ (another dataset, seed, size or split), so each set of runs that "
            f"share them has a grid of its own and a row shows one image: {sets}.")
    print(f"note: {note}", file=sys.stderr)
    return figures, note


@torch.no_grad()
def tsne_figure(run: Path, out: Path, count: int, name: str, loaded=None) -> PageFigure:
    """t-SNE of the pooled features of ``count`` validation images, coloured by class
    (Figure 8; ``loaded``: as for :func:`_load`)."""
    from sklearn.manifold import TSNE
    from tqdm import tqdm

    plt = _plt()
    _, model, val = _load(run, loaded)
    idx = np.linspace(0, len(val.labels) - 1, min(count, len(val.labels))).astype(int)
    images, feats = val.images(idx), []
    for start in tqdm(range(0, len(idx), 256), desc=f"features {run.name}", file=sys.stderr):
        batch = torch.from_numpy(images[start:start + 256]).permute(0, 3, 1, 2)
        feats.append(model(batch)["features"].float())
    feats = torch.cat(feats).numpy()
    points = TSNE(n_components=2, perplexity=min(30.0, len(idx) - 1.0), init="pca", random_state=0).fit_transform(feats)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(points[:, 0], points[:, 1], c=val.labels[idx], cmap="tab10" if len(val.classes) <= 10 else "tab20",
               s=6)
    ax.set_title(f"t-SNE of pooled features: {run.name}", fontsize=8), ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return PageFigure(name, f"t-SNE: {run.name}", f"t-SNE of the pooled backbone features of {len(idx)} validation "
                      f"images of {run.name}, a colour per class.")
