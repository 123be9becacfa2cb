"""The budget of large request bodies in flight (docs/reference.md#request-memory): small
bodies are free, a large one reserves its size for as long as it is read and decoded, and a
reservation that would pass the per-peer or the total limit is refused before any byte."""

from __future__ import annotations

import pytest

from injector.server.body_budget import SMALL_BODY, BodyBudget, OverBudget

MIB = 1024 * 1024


def test_a_small_body_reserves_nothing_even_with_the_budget_spent():
    budget = BodyBudget(total=2 * MIB, per_peer=2 * MIB)
    with budget.reserved("10.0.0.1", 2 * MIB), budget.reserved("10.0.0.1", SMALL_BODY):
        assert budget.used == 2 * MIB


def test_a_large_body_holds_its_size_until_it_is_done():
    budget = BodyBudget(total=8 * MIB, per_peer=4 * MIB)
    with budget.reserved("10.0.0.1", 3 * MIB):
        assert (budget.used, dict(budget.by_peer)) == (3 * MIB, {"10.0.0.1": 3 * MIB})
    assert (budget.used, dict(budget.by_peer)) == (0, {})


def test_one_peer_cannot_take_more_than_its_share():
    budget = BodyBudget(total=8 * MIB, per_peer=4 * MIB)
    with budget.reserved("10.0.0.1", 3 * MIB):
        with pytest.raises(OverBudget) as refused, budget.reserved("10.0.0.1", 2 * MIB):
            pass
        assert refused.value.scope == "peer"
        with budget.reserved("10.0.0.2", 3 * MIB):  # another peer still gets in
            assert budget.used == 6 * MIB


def test_many_peers_together_cannot_pass_the_total():
    budget = BodyBudget(total=5 * MIB, per_peer=3 * MIB)
    with budget.reserved("10.0.0.1", 3 * MIB), pytest.raises(OverBudget) as refused, \
            budget.reserved("10.0.0.2", 3 * MIB):
        pass
    assert refused.value.scope == "total" and budget.used == 0


def test_a_reservation_is_given_back_when_reading_fails():
    budget = BodyBudget(total=8 * MIB, per_peer=8 * MIB)
    with pytest.raises(ConnectionResetError), budget.reserved("10.0.0.1", 3 * MIB):
        raise ConnectionResetError("Connection lost")
    assert budget.used == 0 and not budget.by_peer
