"""Letter-prior removal: recovers the signal under a constant position bias; hand-computed small case."""
import numpy as np
import pytest

from jmlr_jax.eval.calibration import remove_letter_prior


def test_recovers_answers_hidden_by_a_position_bias():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, 400)
    logliks = rng.normal(0, 0.3, (400, 4))
    logliks[np.arange(400), gold] += 1.0  # what the model knows
    logliks[:, 0] += 3.0  # and a strong preference for "A"
    plain = logliks.argmax(1)
    assert (plain == 0).mean() > 0.9 and (plain == gold).mean() < 0.4
    fixed = np.array(remove_letter_prior(logliks.tolist()))
    assert (fixed == gold).mean() > 0.8


def test_hand_computed_and_grouped_by_option_count():
    # two 2-option questions: p = (0.8, 0.2) and (0.6, 0.4); prior = (0.7, 0.3)
    # q0: log(0.8/0.7) = 0.134 vs log(0.2/0.3) = -0.405 -> 0;  q1: log(0.6/0.7) = -0.154 vs log(0.4/0.3) = 0.288 -> 1
    # and two 3-option questions, their own group: prior = (0.497, 0.497, 0.007)
    ll = [np.log([0.8, 0.2]).tolist(), [0.0, 5.0, 0.0], np.log([0.6, 0.4]).tolist(), [5.0, 0.0, 0.0]]
    assert remove_letter_prior(ll) == [0, 1, 1, 0]
    with pytest.raises(ValueError, match="no option scores"):
        remove_letter_prior([[]])
