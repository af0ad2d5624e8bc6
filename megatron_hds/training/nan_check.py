"""--check-for-nan-in-loss-and-grad: a step whose loss (in any domain) or gradient norm is NaN
or Inf stops the run with an error naming the iteration and the domains, before the
mixture scheduler sees the step and before any checkpoint holds it.

The optimizer never applies a step whose gradient norm is not finite (it reports it as
skipped), and a non-finite loss makes the gradients non-finite, so the weights stay those
of the last good step. An fp16 step skipped for a loss-scale overflow (gradient norm None,
the loss finite) is the scaler's business, not an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm of a step was NaN or Inf."""


def check_finite(iteration: int, domain_names: Sequence[str], domain_loss: np.ndarray, domain_tokens: np.ndarray,
                 grad_norm: float | None) -> None:
    """Raise NonFiniteLossError when a domain with tokens in this step has a non-finite mean
    loss, or the gradient norm is non-finite (None: an fp16 overflow skip, not checked).
    Every rank holds the same reduced values, so every rank raises together."""
    bad = [name for name, loss, tokens in zip(domain_names, domain_loss, domain_tokens)
           if tokens > 0 and not math.isfinite(loss)]
    bad_norm = grad_norm is not None and not math.isfinite(grad_norm)
    if not bad and not bad_norm:
        return
    what = []
    if bad:
        what.append(f"the loss of domain{'s' if len(bad) > 1 else ''} {', '.join(bad)} is not finite")
    if bad_norm:
        what.append(f"the gradient norm is {grad_norm}")
    raise NonFiniteLossError(
        f"iteration {iteration}: {' and '.join(what)}. The run stops here (--check-for-nan-in-loss-and-grad), "
        "before the mixture scheduler or any checkpoint sees this step: restart from the last checkpoint, e.g. "
        "with a lower --lr, or find the data that causes it (--no-check-for-nan-in-loss-and-grad skips such "
        "steps instead)")
