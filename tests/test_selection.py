"""How a run's time budget is shared (lipbound.methods.selection.budget_share): by the methods'
weights, among the budgeted methods still to run, never below MIN_SHARE of the total."""

from __future__ import annotations

import pytest

from lipbound.methods import METHODS
from lipbound.methods.selection import MIN_SHARE, budget_share


def test_shares_follow_the_weights_of_the_budgeted_methods_left() -> None:
    bab, lower, autolip = METHODS["local-bab"], METHODS["lower"], METHODS["autolip"]
    w_bab = bab.budget_weight
    assert w_bab > 1 and lower.budget_weight == 1  # the registry's choice; the arithmetic below follows it
    # 60 s left, local-bab then lower: local-bab gets w/(w+1) of it, lower the rest
    assert budget_share(60.0, 60.0, [bab, lower]) == pytest.approx(60.0 * w_bab / (w_bab + 1))
    assert budget_share(60.0, 10.0, [lower]) == pytest.approx(10.0)
    # autolip first among three: 1 / (1 + w + 1) of the time left
    assert budget_share(60.0, 60.0, [autolip, bab, lower]) == pytest.approx(60.0 / (w_bab + 2))


def test_unbudgeted_methods_take_no_share_and_a_late_method_keeps_a_minimum() -> None:
    budgeted = [s for s in METHODS.values() if s.budgeted and s.budget_weight == 1]
    unbudgeted = [s for s in METHODS.values() if not s.budgeted]
    a, b = budgeted[:2]
    if unbudgeted:
        assert budget_share(20.0, 20.0, [a, unbudgeted[0], b]) == pytest.approx(10.0)
    assert budget_share(20.0, 0.01, [a, b]) == pytest.approx(MIN_SHARE * 20.0)
