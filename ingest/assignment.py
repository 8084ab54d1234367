"""Which ingest replica reads which camera: cameras hashed onto the partitions of the assignment topic,
partitions shared out by a balanced, sticky, cooperative plan. Pure functions, no Kafka.

A camera belongs to the partition a record keyed by its id would go to with Kafka's default
partitioner (murmur2)::

    cam-north ──murmur2──> partition 17 ─┐
    cam-south ──murmur2──> partition  3  ├── the group gives partition 17 to replica B:
    cam-east  ──murmur2──> partition 17 ─┘   B reads cam-north and cam-east

The mapping depends only on the camera id and the partition count, never on the site file's
order, so replicas running different versions of the site file (a rolling update) still agree
on who owns a camera. Cameras that hash to the same partition move together.

:func:`plan_round` is the leader's side of KIP-429 incremental cooperative rebalancing:

1. every member keeps the partitions it owns (sticky); a partition claimed by two members (a
   zombie that came back) is given to nobody, so both release it;
2. unowned partitions (new cameras, a dead member's) go to the least-loaded members, heaviest first;
3. partitions move from the most to the least loaded member while that narrows the spread
   (load = cameras; partitions without cameras are balanced by count on their own);
4. a partition whose target owner is not its current owner is assigned to *nobody* this round:
   the owner releases it (ends its sessions, flushes) and rejoins, and the next round gives it to
   the new owner. So no camera is ever assigned to two members at once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from traffic.partitions import camera_partition


def cameras_by_partition(camera_ids: Iterable[str], partitions: int) -> dict[int, list[str]]:
    """Partition -> the cameras it carries (sorted); partitions without cameras are absent."""
    out: dict[int, list[str]] = defaultdict(list)
    for camera in sorted(set(camera_ids)):
        out[camera_partition(camera, partitions)].append(camera)
    return dict(out)


def plan_round(
    owned: Mapping[str, Iterable[int]],
    partitions: Sequence[int],
    weights: Mapping[int, int],
) -> dict[str, list[int]]:
    """This rebalance round's assignment: member id -> partitions (sorted).

    Args:
        owned: member id -> the partitions it says it owns now (its JoinGroup metadata).
        partitions: every partition of the assignment topic.
        weights: partition -> cameras it carries (missing = 0).

    Returns:
        Every member (also those given nothing). Partitions moving between members, and partitions
        claimed by several members, are in no member's list (they land in the next round).
    """
    members = sorted(owned)
    if not members:
        return {}
    existing = set(partitions)
    claims: dict[int, list[str]] = defaultdict(list)
    for member in members:
        for p in set(owned[member]):
            if p in existing:
                claims[p].append(member)
    contested = {p for p, who in claims.items() if len(who) > 1}
    current = {p: who[0] for p, who in claims.items() if len(who) == 1}

    target: dict[str, set[int]] = {m: set() for m in members}
    for p, member in current.items():
        target[member].add(p)

    def weight(p: int) -> int:
        return max(0, int(weights.get(p, 0)))

    def load(member: str) -> tuple[int, int]:
        return sum(weight(p) for p in target[member]), len(target[member])

    free = sorted((p for p in existing if p not in claims), key=lambda p: (-weight(p), p))
    for p in free:
        if weight(p) > 0:
            lightest = min(members, key=lambda m: (load(m)[0], load(m)[1], m))
        else:
            lightest = min(members, key=lambda m: (_zero_count(target[m], weight), m))
        target[lightest].add(p)

    _balance_weighted(target, members, weight, current)
    _balance_empty(target, members, weight, current)

    # Cooperative rule: nothing is handed to a member while another one still owns it.
    return {
        m: sorted(p for p in target[m] if p not in contested and current.get(p, m) == m)
        for m in members
    }


def _zero_count(parts: set[int], weight) -> int:  # noqa: ANN001 - the local weight function
    return sum(1 for p in parts if weight(p) == 0)


def _balance_weighted(target: dict[str, set[int]], members: list[str], weight, current: Mapping[int, str]) -> None:  # noqa: ANN001
    """Move camera-carrying partitions from the most to the least loaded member while the spread narrows."""
    for _ in range(len(members) * (sum(len(t) for t in target.values()) + 1)):
        loads = {m: sum(weight(p) for p in target[m]) for m in members}
        heavy = max(members, key=lambda m: (loads[m], m))
        light = min(members, key=lambda m: (loads[m], m))
        gap = loads[heavy] - loads[light]
        # moving w narrows the spread when 0 < w < gap; prefer the move closest to half the gap, and
        # partitions the heavy member does not read yet (no camera has to reconnect for those)
        candidates = [p for p in target[heavy] if 0 < weight(p) < gap]
        if not candidates:
            return
        best = min(candidates, key=lambda p: (abs(gap - 2 * weight(p)), current.get(p) == heavy, p))
        target[heavy].remove(best)
        target[light].add(best)


def _balance_empty(target: dict[str, set[int]], members: list[str], weight, current: Mapping[int, str]) -> None:  # noqa: ANN001
    """Spread the partitions without cameras evenly by count (they cost nothing, but keep the plan stable)."""
    for _ in range(sum(len(t) for t in target.values()) + 1):
        counts = {m: _zero_count(target[m], weight) for m in members}
        most = max(members, key=lambda m: (counts[m], m))
        least = min(members, key=lambda m: (counts[m], m))
        if counts[most] - counts[least] <= 1:
            return
        movable = sorted((p for p in target[most] if weight(p) == 0), key=lambda p: (current.get(p) == most, p))
        target[most].remove(movable[0])
        target[least].add(movable[0])
