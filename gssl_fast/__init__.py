"""gssl_fast: Gated Self-Supervised Learning at full loader speed.

Kept light on purpose: importing ``pipelines`` pulls in ``gssl_fast.pretext`` and
``gssl_fast.data`` only, never the trainer.
"""

__version__ = "0.1.0"
