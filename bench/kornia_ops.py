"""Our view ops against kornia.augmentation on uint8 batches: crop + flip and random
grayscale, timed and checked pixel for pixel against the reference semantics.

    python -m bench.kornia_ops [--device cuda] [--threads 1] [--json out.json] [--quick]

Needs kornia (``pip install kornia``; not a dependency of the project). Rows per image
side (batch 256, ``[B, 3, H, W]`` uint8, the same images for all), on the CPU and on
``--device`` when it is CUDA:

- copy (ceiling): ``x.clone()`` of the uint8 batch
- to float (kornia's entry): ``x.float()``, which every kornia row pays: kornia's
  augmentations refuse uint8 (``TypeError: Expected input of [bfloat16, float16, float32,
  float64]``), and our loaders carry uint8 up to ``normalize``
- crop+flip ours: ``pipelines.views.apply_ops(x, (CropFlip(4, True),), generator)``,
  drawing and applying (one gather on uint8)
- crop+flip kornia: ``x.float()`` then ``AugmentationSequential(RandomCrop((H, W),
  padding=4), RandomHorizontalFlip())``, drawing and applying
- grayscale ours: ``apply_ops(x, (Grayscale(0.2),), generator)``
- grayscale kornia: ``x.float()`` then ``RandomGrayscale(p=0.2)``

Each row: milliseconds per batch (median of interleaved timed runs of ``--calls`` batches
after warm-up, with min..max), ``kornia_over_ours`` (time ratio, > 1: kornia is slower),
and the torch operators dispatched per batch at the full and at a quarter batch (equal
counts: the launches do not grow with the batch). Kornia's outputs are float32 and are
not cast back to uint8 (a cast would add to its time).

Semantics (printed and stored in the JSON header under ``semantics``): kornia's drawn
crop offsets and flips (``_params`` after the call) are replayed through our ``crop_flip``
and the pixels compared; kornia's grayscale is compared with ours under kornia's drawn
mask. ``tests/bench/test_kornia_semantics.py`` asserts the same findings.
"""

from __future__ import annotations

import torch

from bench.common import (
    bench_parser, count_ops, header, load_average, print_table, summarize, time_interleaved, write_json,
)
from pipelines.augment import crop_flip
from pipelines.views import CropFlip, Grayscale, apply_ops

PADDING = 4  # crop padding in pixels (CIFAR's RandomCrop(32, padding=4))
GRAY_P = 0.2  # grayscale probability (SimCLR's RandomGrayscale(p=0.2))


def import_kornia():
    try:
        import kornia
        import kornia.augmentation  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"bench/kornia_ops.py needs kornia ({e}); pip install kornia") from e
    return kornia


def kornia_crop_flip(side: int, padding: int = PADDING):
    """kornia's crop with ``padding`` (its defaults: constant fill 0, ``slice`` cropping)
    then a per-sample left-right flip with p=0.5, in one ``AugmentationSequential``."""
    import kornia.augmentation as K

    return K.AugmentationSequential(K.RandomCrop((side, side), padding=padding), K.RandomHorizontalFlip())


def kornia_drawn_crop_flip(seq) -> dict[str, torch.Tensor]:
    """``{crop_y, crop_x, hflip}`` ([B] int64, CPU) that ``seq`` drew in its last call.

    RandomCrop's ``src`` box (``[B, 4, 2]``, corners in (x, y) order) is in the padded
    image's coordinates, so its top-left corner is our offset in ``[0, 2 * padding]``;
    RandomHorizontalFlip's ``batch_prob`` is 1 where it flipped."""
    crop, flip = (item.data for item in seq._params)
    top_left = crop["src"][:, 0].round().long().cpu()
    return {"crop_y": top_left[:, 1], "crop_x": top_left[:, 0], "hflip": (flip["batch_prob"] > 0.5).long().cpu()}


def check_crop_flip(x: torch.Tensor, padding: int = PADDING) -> dict:
    """kornia's crop + flip replayed through our ``crop_flip`` at kornia's own draws."""
    seq = kornia_crop_flip(x.shape[-1], padding)
    got = seq(x.float())
    drawn = kornia_drawn_crop_flip(seq)
    want = crop_flip(x, drawn["crop_y"], drawn["crop_x"], drawn["hflip"], padding).float()
    crop = seq[0]
    return {
        "check": "crop+flip", "side": x.shape[-1], "device": x.device.type,
        "pixel_exact": bool(torch.equal(got, want)),
        "max_abs_diff": float((got - want).abs().max()),
        "offsets_seen": [int(min(drawn["crop_y"].min(), drawn["crop_x"].min())),
                         int(max(drawn["crop_y"].max(), drawn["crop_x"].max()))],
        "flips_seen": int(drawn["hflip"].sum()),
        "padding_mode": crop.flags["padding_mode"], "fill": crop.flags["fill"],
        "cropping_mode": crop.flags["cropping_mode"],
    }


def grayscale_weights() -> dict[str, list[float]]:
    """The (R, G, B) weights each library applies to a float image (the grey of unit images)."""
    import kornia
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    unit = torch.eye(3).view(3, 3, 1, 1)
    return {"torchvision (ours)": [round(v, 6) for v in rgb_to_grayscale(unit).flatten().tolist()],
            "kornia": [round(v, 6) for v in kornia.color.rgb_to_grayscale(unit).flatten().tolist()]}


def check_grayscale(x: torch.Tensor, p: float = GRAY_P) -> dict:
    """kornia's RandomGrayscale against our Grayscale under kornia's drawn mask; kornia's
    float grey is cast to uint8 as torchvision casts its own (truncation)."""
    import kornia.augmentation as K

    aug = K.RandomGrayscale(p=p)
    got = aug(x.float())
    mask = (aug._params["batch_prob"] > 0.5).long()
    want = Grayscale(p).apply(x, {"grayscale": mask.to(x.device)})
    diff = (got.to(torch.uint8).int() - want.int()).abs()
    grey = mask.bool().to(x.device)
    white = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8, device=x.device)
    return {
        "check": "grayscale", "side": x.shape[-1], "device": x.device.type,
        "pixel_exact": bool(diff.max() == 0),
        "kept_images_exact": bool(torch.equal(got[~grey], x[~grey].float())),
        "grey_images": int(grey.sum()),
        "max_abs_diff": int(diff.max()),
        "differing_grey_pixels": float((diff[grey] > 0).float().mean()) if grey.any() else 0.0,
        "white_ours": int(Grayscale(p).apply(white, {"grayscale": torch.ones(1, dtype=torch.long)}).max()),
        "white_kornia": float(K.RandomGrayscale(p=1.0)(white.float()).max()),
    }


def repeat(fn, calls: int):
    def run():
        for _ in range(calls):
            fn()
    return run


def rows_for(side: int, batch: int, device: torch.device, args) -> tuple[list[dict], list[dict]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, side, side), generator=g, dtype=torch.uint8).to(device)
    semantics = [check_crop_flip(x), check_grayscale(x)]
    import kornia.augmentation as K

    seq, gray = kornia_crop_flip(side), K.RandomGrayscale(p=GRAY_P)
    crop_ops, gray_ops = (CropFlip(PADDING, True),), (Grayscale(GRAY_P),)
    impls = {
        ("copy (ceiling)", ""): lambda x: x.clone(),
        ("to float (kornia's entry)", ""): lambda x: x.float(),
        ("crop+flip", "ours"): lambda x: apply_ops(x, crop_ops, g),
        ("crop+flip", "kornia"): lambda x: seq(x.float()),
        ("grayscale", "ours"): lambda x: apply_ops(x, gray_ops, g),
        ("grayscale", "kornia"): lambda x: gray(x.float()),
    }
    runs = {key: repeat(lambda fn=fn: fn(x), args.calls) for key, fn in impls.items()}
    times = time_interleaved(runs, repeats=args.repeats, warmup=2, device=device)
    xq = x[: batch // 4].clone()
    rows = []
    for (op, impl), fn in impls.items():
        s = summarize(times[(op, impl)], batch * args.calls)
        per_batch = [t / args.calls * 1e3 for t in times[(op, impl)]]
        rows.append({"op": op, "impl": impl, "side": side, "batch": batch, "device": device.type,
                     "threads": args.threads, "ms_per_batch": s["seconds_median"] / args.calls * 1e3,
                     "ms_min": min(per_batch), "ms_max": max(per_batch),
                     "ops": count_ops(lambda fn=fn: fn(x)), "ops_quarter_batch": count_ops(lambda fn=fn: fn(xq)),
                     **s})
    for r in rows:
        if r["impl"] == "kornia":
            ours = next(o for o in rows if o["op"] == r["op"] and o["impl"] == "ours")
            r["kornia_over_ours"] = r["ms_per_batch"] / ours["ms_per_batch"]
    return rows, semantics


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1, as the other benches)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--repeats", type=int, default=9, help="interleaved timed runs per row")
    p.add_argument("--calls", type=int, default=4, help="batches per timed run")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.sizes, args.calls = 3, [32], 1
    kornia = import_kornia()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device(args.device)] if torch.device(args.device).type == "cuda" else [])
    load_before = load_average()
    rows, semantics = [], []
    for device in devices:
        for side in args.sizes:
            r, s = rows_for(side, args.batch, device, args)
            rows += r
            semantics += s
    info = {**header(), "kornia": kornia.__version__, "load_avg_1min_before": load_before}
    cols = ["op", "impl", "side", "device", "ms_per_batch", "ms_min", "ms_max", "kornia_over_ours", "ops",
            "ops_quarter_batch"]
    print_table("our view ops vs kornia.augmentation (ms per batch of uint8 images; kornia's include x.float())",
                info, rows, cols)
    weights = grayscale_weights()
    print(f"# grayscale weights (R, G, B): {weights}")
    for s in semantics:
        print("# semantics " + ", ".join(f"{k}={v}" for k, v in s.items()))
    write_json(args.json, "kornia_ops", {**info, "semantics": semantics, "grayscale_weights": weights}, rows)


if __name__ == "__main__":
    main()
