import itertools

import pytest
import torch

from pipelines.localizable import (
    PARAM_KEYS,
    PERMUTATIONS,
    TASKS,
    apply_localizable,
    apply_localizable_,
    draw_localizable,
    reference_localizable,
)


def random_batch(b, side, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (b, 3, side, side), generator=g, dtype=torch.uint8)
    return torch.randn(b, 3, side, side, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16])
@pytest.mark.parametrize("side", [2, 8, 32, 64])
@pytest.mark.parametrize("batch", [1, 5, 64])
@pytest.mark.parametrize("flip_axis", ["horizontal", "vertical"])
def test_matches_per_sample_reference(dtype, side, batch, flip_axis):
    x = random_batch(batch, side, dtype, seed=side * batch)
    params = draw_localizable(batch, generator=torch.Generator().manual_seed(batch))
    kw = {k: params[k] for k in PARAM_KEYS}
    fast = apply_localizable(x, **kw, flip_axis=flip_axis)
    slow = reference_localizable(x, **kw, flip_axis=flip_axis)
    assert fast.dtype == x.dtype and fast.shape == x.shape
    assert torch.equal(fast, slow)


def test_every_parameter_combination_against_spec_definition():
    """All 4*2*4*6 combinations, checked against docs/method.md section 1 written out literally."""
    combos = list(itertools.product(range(4), range(2), range(4), range(6)))
    b, side, r = len(combos), 6, 3
    x = random_batch(b, side, torch.uint8, seed=7)
    q, f, k, p = (torch.tensor(c) for c in zip(*combos))
    out = apply_localizable(x, quadrant=q, flip=f, rotation=k, perm=p)
    for i, (qi, fi, ki, pi) in enumerate(combos):
        rows = slice(0, r) if qi in (0, 1) else slice(r, side)
        cols = slice(0, r) if qi in (0, 2) else slice(r, side)
        quad = x[i, :, rows, cols]
        quad = quad.flip(-1) if fi else quad
        quad = torch.rot90(quad, ki, dims=(-2, -1))
        quad = torch.stack([quad[PERMUTATIONS[pi][c]] for c in range(3)])
        expect = x[i].clone()
        expect[:, rows, cols] = quad
        assert torch.equal(out[i], expect), (qi, fi, ki, pi)


def test_does_not_modify_input_and_pixels_outside_quadrant_untouched():
    x = random_batch(16, 8, torch.uint8)
    before = x.clone()
    params = draw_localizable(16, generator=torch.Generator().manual_seed(3))
    out = apply_localizable(x, **{k: params[k] for k in PARAM_KEYS})
    assert torch.equal(x, before)
    for i in range(16):
        q = int(params["quadrant"][i])
        mask = torch.ones(8, 8, dtype=torch.bool)
        mask[(q // 2) * 4 : (q // 2) * 4 + 4, (q % 2) * 4 : (q % 2) * 4 + 4] = False
        assert torch.equal(out[i][:, mask], x[i][:, mask])


def test_non_contiguous_input():
    x = random_batch(4, 8, torch.uint8).permute(0, 1, 3, 2)
    params = draw_localizable(4, generator=torch.Generator().manual_seed(0))
    kw = {k: params[k] for k in PARAM_KEYS}
    assert torch.equal(apply_localizable(x, **kw), reference_localizable(x, **kw))


@pytest.mark.parametrize("offset", [0, 1, 2, 4, 8])
@pytest.mark.parametrize("side", [32, 64])
def test_in_place_write_back_at_any_alignment(offset, side, device):
    """The quadrant rows go back as the widest elements the batch's address allows (16
    bytes for an aligned 32x32 uint8 batch, single bytes at an odd offset); every width
    moves the bytes unchanged, also runs of 0xFF bytes (NaN when read as a float element);
    on the training device (CUDA where there is one)."""
    b, g = 6, torch.Generator().manual_seed(offset)
    storage = torch.randint(0, 256, (offset + b * 3 * side * side,), generator=g, dtype=torch.uint8)
    storage[offset : offset + 3 * side * side] = 0xFF  # the whole first image
    x = storage.to(device)[offset:].view(b, 3, side, side)
    params = draw_localizable(b, generator=g)
    kw = {k: params[k] for k in PARAM_KEYS}
    expect = reference_localizable(x.cpu(), **kw)
    assert apply_localizable_(x, **kw) is x
    assert torch.equal(x.cpu(), expect)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_float_bit_pattern_is_moved_unchanged(dtype):
    """Float batches holding every bit pattern of their width (signalling NaNs included):
    the transform moves bits, it does no float arithmetic."""
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    g = torch.Generator().manual_seed(1)
    if dtype.itemsize == 2:
        patterns = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(bits)
    else:  # every sign / exponent with random mantissas, the quiet bit on and off
        patterns = torch.randint(-(1 << 62), 1 << 62, (1 << 16,), generator=g).to(bits)
    b, side = patterns.numel() // (3 * 16 * 16), 16
    x = patterns[: b * 3 * side * side].view(dtype).view(b, 3, side, side).clone()
    params = draw_localizable(b, generator=g)
    kw = {k: params[k] for k in PARAM_KEYS}
    expect = reference_localizable(x, **kw)
    assert torch.equal(apply_localizable(x, **kw).view(bits), expect.view(bits))


def test_a_tensor_that_requires_grad_is_refused():
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    z = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="detach"):
        apply_localizable(x, quadrant=z, flip=z, rotation=z, perm=z)


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (2, 3, 7, 7), (2, 1, 8, 8), (3, 8, 8)])
def test_bad_shapes_raise_value_error_naming_the_shape(shape):
    x = torch.zeros(shape, dtype=torch.uint8)
    zeros = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match=str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
        apply_localizable(x, quadrant=zeros, flip=zeros, rotation=zeros, perm=zeros)


def test_unknown_flip_axis():
    x = torch.zeros(1, 3, 4, 4)
    z = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="horizontal"):
        apply_localizable(x, quadrant=z, flip=z, rotation=z, perm=z, flip_axis="diagonal")


def test_draw_ranges_targets_and_identity_for_disabled_tasks():
    g = torch.Generator().manual_seed(0)
    p = draw_localizable(4000, tasks=("rotation", "perm"), generator=g)
    assert set(p) == {"quadrant", "flip", "rotation", "perm", "target_rotation", "target_perm"}
    assert all(v.dtype == torch.int64 and v.shape == (4000,) for v in p.values())
    assert p["flip"].eq(0).all()
    assert torch.equal(p["target_rotation"], 4 * p["quadrant"] + p["rotation"])
    assert torch.equal(p["target_perm"], p["perm"])
    # Uniform: every class present with roughly its share.
    counts = torch.bincount(p["target_rotation"], minlength=16).float()
    assert counts.min() > 0.6 * 4000 / 16 and counts.max() < 1.4 * 4000 / 16
    assert torch.bincount(p["perm"], minlength=6).min() > 0.7 * 4000 / 6


def test_draw_is_reproducible_and_seed_dependent():
    a = draw_localizable(32, generator=torch.Generator().manual_seed(5))
    b = draw_localizable(32, generator=torch.Generator().manual_seed(5))
    c = draw_localizable(32, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["target_rotation"], c["target_rotation"])


def test_draw_all_tasks_keys_and_unknown_task():
    p = draw_localizable(3)
    assert {f"target_{t}" for t in TASKS} <= set(p)
    with pytest.raises(ValueError, match="rotation"):
        draw_localizable(3, tasks=("rotate",))


def test_operator_count_does_not_grow_with_batch():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for b in (8, 64, 512):
        x = random_batch(b, 16, torch.uint8)
        p = draw_localizable(b, generator=torch.Generator().manual_seed(0))
        apply_localizable(x, **{k: p[k] for k in PARAM_KEYS})  # warm the index tables
        with Count() as c:
            apply_localizable(x, **{k: p[k] for k in PARAM_KEYS})
        counts.append(c.n)
    assert counts[0] == counts[1] == counts[2], counts


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32])
@pytest.mark.parametrize("gap", [1, 8, 24])
def test_in_place_on_windows_of_a_wider_buffer(dtype, gap, device):
    """A batch whose rows are contiguous but ``gap`` elements apart (channels and images
    one row apart more), as the torch loader's crop hands over: the quadrant rows go back
    as wide elements where the gaps allow, single ones where not, and no element between
    the rows changes; on the training device (CUDA where there is one)."""
    b, side = 10, 16
    x = random_batch(b, side, dtype, seed=gap)
    wide = torch.full((b, 3, side + 1, side + gap), 7, dtype=dtype, device=device)
    windows = wide[:, :, :side, :side]
    windows.copy_(x)
    params = draw_localizable(b, generator=torch.Generator().manual_seed(gap))
    kw = {k: params[k] for k in PARAM_KEYS}
    assert apply_localizable_(windows, **kw) is windows
    assert torch.equal(windows.cpu(), reference_localizable(x, **kw))
    outside = torch.ones(wide.shape, dtype=torch.bool)
    outside[:, :, :side, :side] = False
    assert (wide.cpu()[outside] == 7).all()


def test_in_place_refuses_overlapping_or_transposed_rows():
    x = random_batch(2, 8, torch.uint8)
    params = draw_localizable(2, generator=torch.Generator().manual_seed(0))
    kw = {k: params[k] for k in PARAM_KEYS}
    for bad in (x.transpose(2, 3), x.as_strided(x.shape, (0, 64, 8, 1)), x.as_strided(x.shape, (192, 4, 8, 1))):
        with pytest.raises(ValueError, match="contiguous rows"):
            apply_localizable_(bad, **kw)
