"""How this task's model is called and scored: ``forward``, ``loss``, ``predict``.

The purification loop and every defense go through this object only, so this is where the
task's output format lives (logits, a loss dict, per-pixel scores, token logits). The toy task
is classification; replace the three methods when the task is not.
"""

from __future__ import annotations

from nft.core import ClassificationTask

__all__ = ["YourTaskTask"]


class YourTaskTask(ClassificationTask):
    """Logits in, cross-entropy loss, arg-max prediction (the core's classification task)."""

    name = "yourtask"
