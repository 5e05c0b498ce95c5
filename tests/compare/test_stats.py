"""Paired statistics against independent computations."""
import math

import numpy as np
import pytest

from jmlr_jax.compare.stats import mcnemar, paired_bootstrap


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    a = rng.normal(size=400)
    b = a - 0.3 + rng.normal(scale=0.5, size=400)
    r = paired_bootstrap(a, b, n_boot=4000)
    d = a - b
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert r["diff"] == pytest.approx(d.mean())
    # the percentile interval of a mean is close to the normal one at n = 400
    assert r["lo"] == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se)
    assert r["hi"] == pytest.approx(d.mean() + 1.96 * se, abs=0.25 * se) and r["excludes_0"]
    const = paired_bootstrap([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert (const["lo"], const["hi"]) == pytest.approx((0.5, 0.5))
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_mcnemar_exact_binomial():
    a = np.array([1] * 10 + [0] * 2 + [1] * 20 + [0] * 5, bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 20 + [0] * 5, bool)
    r = mcnemar(a, b)
    n = 12
    p = min(1.0, 2 * sum(math.comb(n, k) for k in range(0, 3)) / 2 ** n)
    assert (r["only_a"], r["only_b"]) == (10, 2) and r["p"] == pytest.approx(p)
    assert mcnemar([True, False], [True, False])["p"] == 1.0
