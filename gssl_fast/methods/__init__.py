"""Training methods: a registry of :class:`~gssl_fast.methods.base.Method` classes by name.

``[method] name = "..."`` in a recipe picks one; the method's ``Config`` dataclass gives
the other keys of ``[method]``. Built in:

    supervised.py    cross-entropy or LDAM-DRW, G-SSL when pretext.tasks is non-empty,
                     MixUp / CutMix through timm (Tables 1 and 3)
    adversarial.py   PGD adversarial training with G-SSL, robust accuracy (Table 2)
    fixmatch.py      FixMatch with G-SSL: labeled and unlabeled streams, weak and strong
                     views, EMA weights (Table 4)
    simclr.py        SimCLR and G-SimCLR in stages: autoencoder, k-means, guided
                     contrastive pretraining, linear evaluation, fine-tuning

A method defined anywhere (a test file, a user's module) joins with ``@register_method``.
"""

from __future__ import annotations

from gssl_fast.methods.base import Method, MethodContext, Stream

# method.name -> Method subclass
METHODS: dict[str, type[Method]] = {}
# The method of a recipe without [method].
DEFAULT_METHOD = "supervised"


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding ``cls`` to :data:`METHODS` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a class attribute 'name'")
    if "name" not in getattr(cls.Config, "__dataclass_fields__", {}):
        raise ValueError(f"{cls.__name__}.Config must be a dataclass with a 'name' field")
    METHODS[cls.name] = cls
    return cls


def build_method(cfg, ctx: MethodContext) -> Method:
    """The method of ``cfg`` (a ``[method]`` dataclass; None: the default method's
    defaults) built for ``ctx``."""
    from pipelines.errors import unknown_name

    if cfg is None:
        cfg = METHODS[DEFAULT_METHOD].Config()
    if cfg.name not in METHODS:
        raise unknown_name("method.name", cfg.name, METHODS)
    return METHODS[cfg.name](cfg, ctx)


# The built-in methods register themselves on import.
from gssl_fast.methods import supervised, adversarial, fixmatch, simclr  # noqa: E402,F401,I001

__all__ = ["DEFAULT_METHOD", "METHODS", "Method", "MethodContext", "Stream", "build_method", "register_method"]
