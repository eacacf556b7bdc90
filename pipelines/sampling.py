"""Which samples a process reads in an epoch: shuffling, sharding, batching.

Shared by the backends that index in-memory data, so that every backend gives a
process the same share of an epoch for the same (seed, epoch, shard).
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit seed for a stream named by ``parts`` (e.g. ``"order", epoch``).

    Hashing keeps streams of neighbouring seeds, ranks and epochs unrelated.
    """
    text = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(seed: int, *parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def check_shard(shard_id: int, num_shards: int) -> None:
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"need 0 <= shard_id < num_shards, got shard_id={shard_id}, num_shards={num_shards}")


def num_batches(n: int, *, batch_size: int, shard_id: int, num_shards: int, drop_last: bool) -> int:
    """Batches per epoch for this shard.

    With ``drop_last`` every shard reports the same count (from the smallest share), so
    the processes of a data-parallel run take the same number of steps.
    """
    check_shard(shard_id, num_shards)
    if drop_last:
        return (n // num_shards) // batch_size
    share = len(range(shard_id, n, num_shards))
    return -(-share // batch_size)


def epoch_indices(
    n: int, *, seed: int, epoch: int, shuffle: bool, shard_id: int, num_shards: int, drop_last: bool, batch_size: int
) -> torch.Tensor:
    """Dataset positions this shard reads in ``epoch``, in order: ``[M]`` int64.

    One permutation per epoch, the same on every shard, dealt round-robin: the shares
    are disjoint and together cover the dataset (up to the dropped tail with
    ``drop_last``).
    """
    check_shard(shard_id, num_shards)
    order = torch.randperm(n, generator=generator(seed, "order", epoch)) if shuffle else torch.arange(n)
    share = order[shard_id::num_shards]
    keep = num_batches(n, batch_size=batch_size, shard_id=shard_id, num_shards=num_shards, drop_last=drop_last)
    return share[: keep * batch_size] if drop_last else share
