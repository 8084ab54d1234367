"""Camera assignment: the camera -> partition mapping, the leader's cooperative plan, the lease clock."""

from __future__ import annotations

import math
import random

import pytest

from ingest.assignment import camera_partition, cameras_by_partition, plan_round
from ingest.lease import Lease

# -- mapping -------------------------------------------------------------------------------------


def test_camera_partition_is_kafkas_default_partitioner() -> None:
    """The Java client's partition for the key: toPositive(murmur2(key)) % n.

    murmur2("21") = -973932308 in org.apache.kafka.common.utils.UtilsTest; & 0x7fffffff = 1173551340.
    """
    assert camera_partition("21", 1000) == 1173551340 % 1000
    assert camera_partition("21", 7) == 1173551340 % 7
    assert all(0 <= camera_partition(f"cam-{i}", 5) < 5 for i in range(50))


def test_mapping_does_not_depend_on_the_site_order() -> None:
    cameras = [f"cam-{i:02d}" for i in range(40)]
    shuffled = cameras[::-1]
    assert cameras_by_partition(cameras, 32) == cameras_by_partition(shuffled, 32)
    # adding a camera never moves the others
    more = cameras_by_partition([*cameras, "cam-new"], 32)
    for p, cams in cameras_by_partition(cameras, 32).items():
        assert set(cams) <= set(more[p])


# -- plan ----------------------------------------------------------------------------------------

P = list(range(16))


def _loads(plan: dict[str, list[int]], weights: dict[int, int]) -> dict[str, int]:
    return {m: sum(weights.get(p, 0) for p in parts) for m, parts in plan.items()}


def _run_to_stable(owned: dict[str, list[int]], partitions: list[int], weights: dict[int, int], rounds: int = 6):
    """Rebalance rounds as the group would run them: each member then owns what it was given."""
    history = []
    for _ in range(rounds):
        plan = plan_round(owned, partitions, weights)
        history.append(plan)
        if plan == {m: sorted(set(v)) for m, v in owned.items()}:
            return plan, history
        owned = {m: list(v) for m, v in plan.items()}
    return plan, history


def _never_two_owners(history: list[dict[str, list[int]]], start: dict[str, list[int]]) -> None:
    """Across rounds, a partition is given to a member only if no other member owned it the round before."""
    owned = {m: set(v) for m, v in start.items()}
    for plan in history:
        for member, parts in plan.items():
            for p in parts:
                others = [o for o, had in owned.items() if o != member and p in had]
                assert not others, f"partition {p} handed to {member} while {others} still own it"
        owned = {m: set(v) for m, v in plan.items()}


@pytest.mark.parametrize(
    ("case", "owned", "weights"),
    [
        # first join: nobody owns anything, 12 cameras one per partition, 3 members
        ("fresh", {"a": [], "b": [], "c": []}, {p: 1 for p in range(12)}),
        # a member died: its partitions are free, the two survivors take them in one round
        ("death", {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7]}, {p: 1 for p in range(12)}),
        # a fourth member joins a balanced group of three
        ("join", {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7], "c": [8, 9, 10, 11], "d": []}, {p: 1 for p in range(12)}),
        # uneven partitions (hash collisions): weights 3, 2, 1...
        ("weighted", {"a": [], "b": []}, {0: 3, 1: 2, 2: 2, 3: 1, 4: 1, 5: 1}),
    ],
)
def test_plan_converges_balanced_without_double_owners(case: str, owned, weights) -> None:
    plan, history = _run_to_stable(owned, P, weights)
    _never_two_owners(history, owned)
    loads = _loads(plan, weights)
    assert max(loads.values()) - min(loads.values()) <= max(weights.values()), (case, loads)
    # every partition is given to exactly one member in the end
    given = sorted(p for parts in plan.values() for p in parts)
    assert given == P, case


def test_death_is_taken_over_in_one_round() -> None:
    weights = {p: 1 for p in range(12)}
    plan = plan_round({"a": [0, 1, 2, 3], "b": [4, 5, 6, 7]}, list(range(12)), weights)  # c (8..11) is gone
    assert sorted(p for parts in plan.values() for p in parts if weights.get(p)) == list(range(12))
    assert set(plan["a"]) >= {0, 1, 2, 3} and set(plan["b"]) >= {4, 5, 6, 7}  # nobody else moved


def test_join_moves_only_what_the_newcomer_needs() -> None:
    weights = {p: 1 for p in range(12)}
    owned = {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7], "c": [8, 9, 10, 11], "d": []}
    first = plan_round(owned, list(range(12)), weights)
    # round 1: the moving partitions are taken from their owners and given to nobody yet
    assert first["d"] == []
    moving = {p for m in "abc" for p in owned[m]} - {p for m in "abc" for p in first[m]}
    assert len(moving) == 3
    second = plan_round(first, list(range(12)), weights)
    assert set(second["d"]) == moving
    for member in "abc":
        assert set(second[member]) == set(first[member])  # the others keep everything else


def test_stable_group_plans_no_move() -> None:
    weights = {p: 1 for p in range(12)}
    owned = {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7], "c": [8, 9, 10, 11]}
    plan = plan_round(owned, P, weights)
    for member in owned:
        assert set(owned[member]) <= set(plan[member])  # empty partitions may be spread, cameras stay


def test_a_partition_claimed_twice_goes_to_nobody() -> None:
    """A member that was expelled and came back still claiming its old partitions: both let go first."""
    plan = plan_round({"a": [0, 1], "b": [1, 2]}, [0, 1, 2], {0: 1, 1: 1, 2: 1})
    assert 1 not in plan["a"] and 1 not in plan["b"]
    assert 0 in plan["a"] and 2 in plan["b"]


def test_unknown_partitions_and_no_members() -> None:
    assert plan_round({}, P, {}) == {}
    plan = plan_round({"a": [99]}, [0, 1], {0: 1})  # 99 no longer exists
    assert plan == {"a": [0, 1]}


def test_random_groups_always_converge() -> None:
    rng = random.Random(7)
    for _ in range(200):
        partitions = list(range(rng.randint(1, 40)))
        weights = {p: rng.choice((0, 0, 1, 1, 1, 2, 3)) for p in partitions}
        members = [f"m{i}" for i in range(rng.randint(1, 6))]
        owned = {m: [] for m in members}
        for p in partitions:  # some partitions owned (at most once), some free
            if rng.random() < 0.6:
                owned[rng.choice(members)].append(p)
        plan, history = _run_to_stable(owned, partitions, weights, rounds=10)
        _never_two_owners(history, owned)
        assert sorted(p for parts in plan.values() for p in parts) == partitions
        loads = _loads(plan, weights)
        assert max(loads.values()) - min(loads.values()) <= max([1, *weights.values()])


# -- lease ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lease_runs_from_the_send_time_of_answered_requests() -> None:
    clock = Clock()
    lease = Lease(session_timeout_s=10, rebalance_timeout_s=30, margin_s=2, clock=clock)
    assert not lease.valid() and lease.valid_until() == -math.inf  # never confirmed
    lease.polled()
    lease.confirmed(sent_at=99.0)  # answered now, sent a second ago
    assert lease.valid_until() == pytest.approx(99.0 + 10 - 2)
    clock.now = 106.9
    assert lease.valid()
    clock.now = 107.1
    assert not lease.valid()


def test_rebalance_keeps_the_session_but_not_past_the_rebalance_timeout() -> None:
    clock = Clock()
    lease = Lease(session_timeout_s=10, rebalance_timeout_s=15, margin_s=1, clock=clock)
    lease.confirmed(sent_at=100.0)
    for t in range(101, 120):  # heartbeats answered REBALANCE_IN_PROGRESS: we never rejoined
        clock.now = t
        lease.polled()
        lease.kept_alive(sent_at=t)
    # the coordinator may drop a member that does not rejoin within the rebalance timeout
    assert lease.valid_until() == pytest.approx(100.0 + 15 - 1)
    assert not lease.valid()


def test_a_stalled_poll_loop_ends_the_lease() -> None:
    clock = Clock()
    lease = Lease(session_timeout_s=10, rebalance_timeout_s=20, margin_s=1, clock=clock)
    lease.polled(at=100.0)
    for t in range(100, 130):  # heartbeats fine, poll() not called: kafka-python leaves the group
        lease.confirmed(sent_at=t)
    assert lease.valid_until() == pytest.approx(100.0 + 20 - 1)


def test_revoke_ends_the_lease_until_confirmed_again() -> None:
    clock = Clock()
    lease = Lease(session_timeout_s=10, rebalance_timeout_s=30, margin_s=2, clock=clock)
    lease.polled()
    lease.confirmed(sent_at=100.0)
    lease.revoke()
    assert not lease.valid()
    lease.confirmed(sent_at=100.0)
    assert lease.valid()


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        # heartbeats must fit three times into the session timeout
        ({"session_timeout_ms": 6000, "heartbeat_interval_ms": 2500}, "third of session_timeout_ms"),
        # the rebalance timeout (max_poll_interval) below the session timeout makes no sense
        ({"session_timeout_ms": 20000, "rebalance_timeout_ms": 10000}, "rebalance_timeout_ms"),
        # a margin eating the whole session: the lease would never be valid
        ({"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "lease_margin_ms": 4500}, "lease_margin_ms"),
        # a release that does not end within a rebalance (kafka-python would leave the group)
        ({"rebalance_timeout_ms": 15000, "release_timeout_ms": 14000}, "release_timeout_ms"),
    ],
)
def test_group_timing_settings_are_checked(values: dict[str, int], problem: str) -> None:
    from pydantic import ValidationError

    from ingest.settings import IngestSettings

    with pytest.raises(ValidationError, match=problem):
        IngestSettings(**values)


def test_test_timings_are_valid_settings() -> None:
    """The short timings the integration tests use are accepted (and the defaults are)."""
    from ingest.settings import IngestSettings

    IngestSettings()
    IngestSettings(session_timeout_ms=6000, heartbeat_interval_ms=500, rebalance_timeout_ms=15000,
                   lease_margin_ms=1500, release_timeout_ms=2000)  # fmt: skip
