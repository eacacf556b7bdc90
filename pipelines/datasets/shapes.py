"""The built-in procedural dataset: coloured shapes on lit, textured backgrounds.

Ten classes of objects (:data:`CLASSES`), each image one object with a random colour,
position and size. No download, deterministic from ``(seed, split)``, and vectorized:
10000 images of 32 x 32 take under a second on one core.

The scene is built so that the pretext tasks can be solved from any 16 x 16 quadrant
(of a 32 x 32 image), as they can on natural photos:

- image = albedo x illumination. The light falls from above: brightness decreases from
  top to bottom in every pixel, object or background (tells up from down: rotation).
- The blue part of the light grows from left to right, so ``blue / red`` increases to the
  right everywhere (tells left from right, hence mirror images: flip).
- The background is tiled with small S-shaped glyphs: rotated they stay S, mirrored
  they become Z, so handedness shows in every patch whatever the colours.
- A fixed colour scheme: every albedo, background or object, has red > green > blue with
  a clear margin, and the illumination keeps that order (tells the channel permutation).

Objects stand out from the beige background by hue (more saturated red / orange / brown)
and by their edges; their class is their shape.
"""

from __future__ import annotations

import numpy as np

from pipelines.datasets.arrays import CIFAR_MEAN, CIFAR_STD, ArrayDataset, check_split
from pipelines.errors import UserError

SPLIT_CODES = {"train": 0, "val": 1}
CHUNK = 2048  # images rendered at once: bounds the float32 temporaries to ~100 MB at 64 x 64
NOISE_STD = 0.01  # pixel noise, in [0, 1] units


# Signed distance (in pixels, negative inside) of each class's shape. dx: [n, 1, S],
# dy: [n, S, 1] pixel offsets from the object's centre (y points down); r: [n, 1, 1] size.
def _circle(dx, dy, r):
    return np.hypot(dx, dy) - r


def _square(dx, dy, r):
    return np.maximum(np.abs(dx), np.abs(dy)) - 0.8 * r


def _triangle(dx, dy, r):
    c = 1.15 * r  # circumradius; shifted down by c / 4 so it is centred in its box
    dy = dy + 0.25 * c
    edges = np.maximum(np.maximum(dy, -0.866 * dx - 0.5 * dy), 0.866 * dx - 0.5 * dy)
    return edges - 0.5 * c


def _diamond(dx, dy, r):
    return (np.abs(dx) + np.abs(dy) - r) / np.sqrt(2.0)


def _plus(dx, dy, r, arm=1.0):
    ax, ay, w = np.abs(dx), np.abs(dy), 0.3 * r
    return np.minimum(np.maximum(ax - arm * r, ay - w), np.maximum(ax - w, ay - arm * r))


def _cross(dx, dy, r):
    return _plus((dx + dy) / np.sqrt(2.0), (dx - dy) / np.sqrt(2.0), r, arm=1.2)


def _ring(dx, dy, r):
    return np.abs(np.hypot(dx, dy) - 0.7 * r) - 0.3 * r


def _frame(dx, dy, r):
    return np.abs(np.maximum(np.abs(dx), np.abs(dy)) - 0.62 * r) - 0.22 * r


def _star(dx, dy, r):
    # Five sharp points (one straight up) between rounded valleys at 0.42 r.
    theta = np.arctan2(dy, dx) + np.pi / 2
    s = np.abs(np.sin(2.5 * theta))
    return np.hypot(dx, dy) - r * (0.42 + 0.58 * (1.0 - s) ** 2)


def _bars(dx, dy, r):
    period = 0.8 * r  # three horizontal bars, centred at 0 and +-period, 0.4 r thick
    stripes = np.abs(dy - period * np.round(dy / period)) - 0.2 * r
    return np.maximum(np.maximum(np.abs(dx) - 0.85 * r, np.abs(dy) - r), stripes)


SHAPES = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "diamond": _diamond,
    "plus": _plus,
    "cross": _cross,
    "ring": _ring,
    "frame": _frame,
    "star": _star,
    "bars": _bars,
}
CLASSES: tuple[str, ...] = tuple(SHAPES)

# One tile of the background texture: an S-shaped glyph of 3 x 3 blocks. Its mirror image
# is a Z, which no rotation turns back into an S, so every patch of background shows its
# handedness; at 3 x 3 pixels a single convolution can tell the two apart. Empty rows
# and columns keep neighbouring glyphs apart: touching glyphs would merge into diagonal
# stripes, whose mirror image is only a rotation and so shows no handedness.
GLYPH = np.zeros((5, 5), dtype=np.float32)
GLYPH[0, 1:3] = GLYPH[1, 1] = GLYPH[2, 0:2] = 1.0


def _block(side: int) -> int:
    """Pixels per glyph block: 1 at 32 x 32 (a 3 x 3 glyph every 5 pixels), 2 at 64 x 64."""
    return max(1, side // 32)


def _draw_scenes(rng: np.random.Generator, labels: np.ndarray, side: int) -> dict[str, np.ndarray]:
    """Random parameters of every image, ``[N]`` or ``[N, 3]`` arrays, all drawn before
    rendering (only the pixel noise is drawn per chunk, in chunk order)."""
    n = labels.shape[0]

    def u(lo, hi, shape=(n,)):
        return rng.uniform(lo, hi, shape).astype(np.float32)

    size = u(0.16, 0.26) * side
    margin = size + 1.0
    # Albedos in red > green > blue order; the object's blue stays measurable so the
    # left-to-right light cue survives inside large objects.
    obj_red = u(0.45, 1.0)
    bg_red = u(0.8, 0.92)
    return {
        "label": labels,
        "size": size,
        "cx": margin + u(0, 1) * (side - 2 * margin),
        "cy": margin + u(0, 1) * (side - 2 * margin),
        "obj": np.stack([obj_red, obj_red * u(0.3, 0.62), obj_red * u(0.12, 0.26)], 1),
        "bg": np.stack([bg_red, bg_red * u(0.7, 0.8), bg_red * u(0.45, 0.55)], 1),
        "light_top": u(0.92, 1.0),
        "light_bottom": u(0.42, 0.55),
        "light_tilt": u(0.2, 0.26),  # brightness also falls from left to right
        "blue_left": u(0.35, 0.45),
        "blue_right": u(0.95, 1.0),
        "glyph_x": rng.integers(0, GLYPH.shape[1] * _block(side), n),  # offset of the texture's tiling
        "glyph_y": rng.integers(0, GLYPH.shape[0] * _block(side), n),
        "glyph_depth": u(0.25, 0.35),  # how much darker the glyphs are than the background
    }


def _render(p: dict[str, np.ndarray], side: int, rng: np.random.Generator) -> np.ndarray:
    """Scene parameters of ``n`` images -> ``[n, S, S, 3]`` uint8 (a transposed view)."""
    n = p["label"].shape[0]
    col = lambda a: a[:, None, None]  # noqa: E731  [n] -> [n, 1, 1]
    coords = np.arange(side, dtype=np.float32) + 0.5  # pixel centres
    xs, ys = coords[None, None, :], coords[None, :, None]

    dx, dy = xs - col(p["cx"]), ys - col(p["cy"])
    sdf = np.empty((n, side, side), dtype=np.float32)
    for k, shape in enumerate(SHAPES.values()):
        m = p["label"] == k
        if m.any():
            sdf[m] = shape(dx[m], dy[m], col(p["size"][m]))
    alpha = np.clip(0.5 - sdf, 0.0, 1.0)  # one pixel of antialiasing at the edge

    # Background texture: a tiling of S glyphs, GLYPH blocks of _block(side) pixels.
    block, pixels = _block(side), np.arange(side)
    gy = (pixels[None, :, None] + col(p["glyph_y"])) // block % GLYPH.shape[0]
    gx = (pixels[None, None, :] + col(p["glyph_x"])) // block % GLYPH.shape[1]
    texture = 1.0 - col(p["glyph_depth"]) * GLYPH[gy, gx]
    # Channel-first [3, n, S, S] while computing: long inner loops, then one transpose.
    image = p["bg"].T[:, :, None, None] * texture  # background albedo
    image += alpha * (p["obj"].T[:, :, None, None] - image)

    # Light from the upper left: a brightness gradient about 25 degrees off vertical,
    # which each of the 8 flip/rotation variants of a quadrant points a different way,
    # in every channel alike, so that the channel permutation does not hide it.
    light = col(p["light_top"]) + col(p["light_bottom"] - p["light_top"]) * (ys / side)
    light = light - col(p["light_tilt"]) * (xs / side - 0.5)
    blue = col(p["blue_left"]) + col(p["blue_right"] - p["blue_left"]) * (xs / side)
    image *= light
    image[2] *= blue
    # Uniform noise of std NOISE_STD: a third of the cost of Gaussian noise.
    noise = rng.random(image.shape, dtype=np.float32)
    noise -= 0.5
    noise *= np.float32(NOISE_STD * np.sqrt(12.0))
    image += noise
    np.clip(image, 0.0, 1.0, out=image)
    image *= 255.0
    image += 0.5
    return image.astype(np.uint8).transpose(1, 2, 3, 0)


def make_shapes(num_images: int, *, image_size: int = 32, seed: int = 0, split: str = "train") -> ArrayDataset:
    """Generates the procedural dataset: ``num_images`` images of ``image_size`` square.

    Returns an ArrayDataset: images ``[N, S, S, 3]`` uint8, labels ``[N]`` int64 over
    :data:`CLASSES` (balanced: counts differ by at most one, in shuffled order), the
    CIFAR normalization. The same ``(seed, split)`` gives the same images; train and val
    come from different random streams. ``image_size``: even, at least 16.
    """
    check_split(split)
    if image_size < 16 or image_size % 2:
        raise ValueError(f"shapes image_size must be even and >= 16, got {image_size}")
    if num_images < 0 or seed < 0:
        raise ValueError(f"num_images and seed must be >= 0, got {num_images} and {seed}")
    rng = np.random.default_rng([seed, SPLIT_CODES[split]])
    labels = rng.permutation(np.arange(num_images) % len(CLASSES)).astype(np.int64)
    params = _draw_scenes(rng, labels, image_size)
    images = np.empty((num_images, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, num_images, CHUNK):
        chunk = {k: v[start:start + CHUNK] for k, v in params.items()}
        images[start:start + CHUNK] = _render(chunk, image_size, rng)
    return ArrayDataset(images, labels, CLASSES, CIFAR_MEAN, CIFAR_STD)


def shapes(cfg, split: str) -> ArrayDataset:
    """Registry entry: ``cfg.train_size`` or ``cfg.val_size`` images at ``cfg.image_size``."""
    if cfg.image_size < 16 or cfg.image_size % 2:
        raise UserError(f"data.image_size must be even and >= 16 for the shapes dataset, got {cfg.image_size}")
    num = cfg.train_size if check_split(split) == "train" else cfg.val_size
    return make_shapes(num, image_size=cfg.image_size, seed=cfg.seed, split=split)
