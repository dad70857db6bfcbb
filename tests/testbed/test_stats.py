"""The comparison statistics against hand-computed bootstrap distributions and scipy's percentile bootstrap."""

import numpy as np
import pytest
from scipy import stats as sps

from lmix_core.compare.stats import estimate, paired_difference, replicates


def test_two_problems_replicates_follow_the_hand_computed_distribution():
    # one cell, problems [0, 1]: a resample of 2 gives mean 0 (1/4), 0.5 (1/2), 1 (1/4)
    reps = replicates([0.0, 1.0], resamples=40_000, seed=1)
    freq = {v: float(np.isclose(reps, v).mean()) for v in (0.0, 0.5, 1.0)}
    assert freq[0.0] == pytest.approx(0.25, abs=0.01)
    assert freq[0.5] == pytest.approx(0.50, abs=0.01)
    assert freq[1.0] == pytest.approx(0.25, abs=0.01)


def test_cells_are_resampled_too():
    # two cells, constant within each: problems add nothing, the cell draw gives 0 (1/4), 0.5 (1/2), 1 (1/4)
    x = np.array([[0.0] * 5, [1.0] * 5])
    reps = replicates(x, resamples=40_000, seed=2)
    assert float(np.isclose(reps, 0.5).mean()) == pytest.approx(0.5, abs=0.01)
    e = estimate(x, resamples=40_000, seed=2)
    assert (e.mean, e.low, e.high, e.cells, e.problems) == (0.5, 0.0, 1.0, 2, 5)


def test_one_cell_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(0)
    x = rng.binomial(4, 0.3, size=300) / 4.0
    ours = estimate(x, resamples=20_000, seed=3)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20_000, method="percentile", random_state=4)
    assert ours.mean == pytest.approx(x.mean())
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.004)


def test_paired_difference_cancels_shared_problem_difficulty():
    rng = np.random.default_rng(5)
    difficulty = rng.uniform(0, 1, size=(3, 400))  # shared by both methods
    a = difficulty + 0.02
    b = difficulty
    d = paired_difference(a, b, resamples=2000)
    assert d.estimate.mean == pytest.approx(0.02)
    assert d.estimate.low == pytest.approx(0.02) and d.estimate.high == pytest.approx(0.02)
    assert d.significant and d.p_value == 0.0
    # unpaired, the same gap is far inside the spread of either mean
    assert estimate(a).low < estimate(b).high


def test_noise_difference_is_not_significant():
    rng = np.random.default_rng(6)
    a = rng.binomial(1, 0.5, size=(2, 200)).astype(float)
    b = rng.binomial(1, 0.5, size=(2, 200)).astype(float)
    d = paired_difference(a, b, resamples=4000)
    assert d.estimate.low < 0 < d.estimate.high
    assert not d.significant and d.p_value > 0.05
    assert paired_difference(a, a).p_value == 1.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        paired_difference(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="non-empty"):
        estimate([])
    with pytest.raises(ValueError, match="finite"):
        estimate([0.0, float("nan")])
