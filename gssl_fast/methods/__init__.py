"""Training methods, one package each, found by name:

    supervised/    cross-entropy or LDAM-DRW, G-SSL when pretext.tasks is non-empty,
                   MixUp / CutMix through timm (Tables 1 and 3)
    adversarial/   PGD adversarial training with G-SSL, robust accuracy (Table 2)
    fixmatch/      FixMatch with G-SSL: labeled and unlabeled streams, weak and strong
                   views, EMA weights (Table 4)
    simclr/        SimCLR and G-SimCLR in stages: autoencoder, k-means, guided
                   contrastive pretraining, linear evaluation, fine-tuning

Each package holds ``config.py``, its ``[method]`` section (a frozen dataclass whose
``check(recipe, source)`` holds the method's rules), and ``method.py``, the
:class:`~gssl_fast.methods.base.Method`. The registry names both as ``"module:attribute"``
strings, so reading a recipe imports a method's config alone, never its model or torch.
The shared G-SSL step of several methods is :mod:`gssl_fast.methods.gssl`.

A method defined anywhere else (a test file, a user's module) joins with ``@register_method``.
"""

from __future__ import annotations

import importlib

# method.name -> (its Config, its Method), each a "module:attribute" string (or the
# object itself, for a method registered with @register_method).
METHODS: dict[str, tuple] = {
    "supervised": ("gssl_fast.methods.supervised.config:SupervisedConfig",
                   "gssl_fast.methods.supervised.method:Supervised"),
    "adversarial": ("gssl_fast.methods.adversarial.config:AdversarialConfig",
                    "gssl_fast.methods.adversarial.method:Adversarial"),
    "fixmatch": ("gssl_fast.methods.fixmatch.config:FixMatchConfig", "gssl_fast.methods.fixmatch.method:FixMatch"),
    "simclr": ("gssl_fast.methods.simclr.config:SimCLRConfig", "gssl_fast.methods.simclr.method:SimCLR"),
}
# The method of a recipe without [method].
DEFAULT_METHOD = "supervised"
# Names of the method contract, imported (with torch) on first use: `from gssl_fast.methods import Stream`.
_CONTRACT = ("BatchCheck", "Method", "MethodContext", "Metric", "Stream")


def _load(ref):
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _entry(name: str) -> tuple:
    from pipelines.errors import unknown_name

    if name not in METHODS:
        raise unknown_name("method.name", name, METHODS)
    return METHODS[name]


def config_class(name: str) -> type:
    """The ``Config`` dataclass of method ``name`` (its module alone is imported)."""
    return _load(_entry(name)[0])


def method_class(name: str) -> type:
    """The ``Method`` subclass of method ``name``."""
    return _load(_entry(name)[1])


def register_method(cls: type) -> type:
    """Class decorator adding ``cls`` (a Method subclass defined elsewhere) under ``cls.name``."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__} needs a class attribute 'name'")
    if "name" not in getattr(cls.Config, "__dataclass_fields__", {}):
        raise ValueError(f"{cls.__name__}.Config must be a dataclass with a 'name' field")
    METHODS[cls.name] = (cls.Config, cls)
    return cls


def build_method(cfg, ctx):
    """The method of ``cfg`` (a ``[method]`` dataclass; None: the default method's
    defaults) built for ``ctx`` (a ``MethodContext``)."""
    if cfg is None:
        cfg = config_class(DEFAULT_METHOD)()
    return method_class(cfg.name)(cfg, ctx)


def __getattr__(name: str):
    if name in _CONTRACT:
        from gssl_fast.methods import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_METHOD", "METHODS", "build_method", "config_class", "method_class", "register_method", *_CONTRACT]
