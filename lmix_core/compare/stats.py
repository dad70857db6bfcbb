"""Confidence intervals for method comparisons: a two-level bootstrap over seeds and problems, paired differences.

A method's score on one evaluation is a matrix ``x`` of shape ``[C, P]``: ``C`` cells (one per pair of training
seed and data seed) by ``P`` held-out problems (each entry a problem's mean correctness over its samples). The
estimate is the grand mean ``x̄``. Both sources of variation are resampled: one bootstrap replicate draws ``C``
cells with replacement and, independently, ``P`` problem positions with replacement, and takes the mean of the
selected sub-matrix::

    x̄*_b = mean_{c ∈ C*_b, p ∈ P*_b} x[c, p]          b = 1..B

The 95% interval is the 2.5th and 97.5th percentiles of ``x̄*`` (percentile bootstrap). With one cell this is the
ordinary percentile bootstrap over problems, which :func:`scipy.stats.bootstrap` computes too (the tests compare).
Problems differ between data seeds; a problem position ``p`` then pairs the ``p``-th problem of each data seed,
which leaves every cell's own problems resampled uniformly.

A **paired difference** ``A − B`` resamples the matrix ``d = x_A − x_B`` (same cells, same problems), so the
variation the two methods share (hard problems, an unlucky seed) cancels. It is *significant* at 5% when its
interval excludes 0; ``p_value`` is the two-sided bootstrap p-value ``2·min(P*(d̄* ≤ 0), P*(d̄* ≥ 0))``, capped at 1.
"""

from __future__ import annotations

import attrs
import numpy as np

DEFAULT_RESAMPLES = 4000
LEVEL = 0.95


@attrs.frozen(kw_only=True)
class Estimate:
    """A mean with its bootstrap interval.

    Attributes:
        mean: the grand mean over cells and problems.
        low: lower end of the interval.
        high: upper end of the interval.
        cells: the number of seed cells ``C``.
        problems: the number of problems ``P``.
    """

    mean: float
    low: float
    high: float
    cells: int
    problems: int

    def render(self, digits: int = 3) -> str:
        """``0.412 [0.380, 0.445]``."""
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@attrs.frozen(kw_only=True)
class Difference:
    """A paired difference ``A − B`` with its interval and significance.

    Attributes:
        estimate: the mean difference and its interval.
        p_value: two-sided bootstrap p-value.
        significant: whether the interval excludes 0.
    """

    estimate: Estimate
    p_value: float
    significant: bool

    def render(self, digits: int = 3) -> str:
        """``+0.031 [+0.012, +0.050] *`` (``*`` when significant)."""
        e = self.estimate
        star = " *" if self.significant else ""
        return f"{e.mean:+.{digits}f} [{e.low:+.{digits}f}, {e.high:+.{digits}f}]{star}"


def _matrix(x: object) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"scores must be a non-empty [cells, problems] matrix (got shape {a.shape})")
    if not np.isfinite(a).all():
        raise ValueError("scores must be finite")
    return a


def replicates(x: object, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``B`` bootstrap replicates of the grand mean of ``x`` (``[C, P]``, or ``[P]`` for one cell). Shape ``[B]``.

    The same ``seed`` draws the same cells and problems for every matrix of the same shape, which is what makes
    two methods' replicates paired.
    """
    a = _matrix(x)  # [C, P]
    C, P = a.shape
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, C, size=(resamples, C))  # [B, C]
    probs = rng.integers(0, P, size=(resamples, P))  # [B, P]
    # mean over the selected sub-matrix = mean over c* of (mean over p* of a[c*, p*]); counts make it one matmul
    weights = np.zeros((resamples, P))  # [B, P]
    np.add.at(weights, (np.arange(resamples)[:, None], probs), 1.0 / P)
    per_cell = weights @ a.T  # [B, C]: each cell's mean over the drawn problems
    return np.take_along_axis(per_cell, cells, axis=1).mean(axis=1)  # [B]


def _interval(mean: float, reps: np.ndarray, shape: tuple[int, int], level: float) -> Estimate:
    alpha = (1.0 - level) / 2
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return Estimate(mean=mean, low=float(low), high=float(high), cells=shape[0], problems=shape[1])


def estimate(
    x: object, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = LEVEL
) -> Estimate:
    """The grand mean of ``x`` (``[C, P]``) with its two-level percentile bootstrap interval."""
    a = _matrix(x)
    return _interval(float(a.mean()), replicates(a, resamples=resamples, seed=seed), a.shape, level)


def paired_difference(
    a: object, b: object, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = LEVEL
) -> Difference:
    """``A − B`` on the same cells and problems (both ``[C, P]``), with its interval, p-value and significance."""
    xa, xb = _matrix(a), _matrix(b)
    if xa.shape != xb.shape:
        raise ValueError(f"paired scores must have one shape (got {xa.shape} and {xb.shape})")
    d = xa - xb  # [C, P]
    reps = replicates(d, resamples=resamples, seed=seed)  # [B]
    est = _interval(float(d.mean()), reps, d.shape, level)
    p = min(1.0, 2.0 * min(float((reps <= 0).mean()), float((reps >= 0).mean())))
    return Difference(estimate=est, p_value=p, significant=bool(est.low > 0 or est.high < 0))


__all__ = ["DEFAULT_RESAMPLES", "Difference", "Estimate", "estimate", "paired_difference", "replicates"]
