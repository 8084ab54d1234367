"""Consumer-group lag on a topic, read from the broker the way KEDA's Kafka scaler reads it.

    lag(partition) = log-end offset - committed offset of the group
                     (no committed offset: log-end - log-start, as with offsetResetPolicy earliest)
    total          = sum over the topic's partitions

Used by ``traffic status`` and by the scaling tests; KEDA asks for ``ceil(total / lagThreshold)``
workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from traffic.settings import KafkaSettings


@dataclass(frozen=True)
class GroupLag:
    """Lag of one consumer group on one topic, in messages (frames for traffic.frames)."""

    group: str
    topic: str
    partitions: dict[int, int]  # partition -> lag
    committed: bool  # whether the group has committed any offset on the topic

    @property
    def total(self) -> int:
        return sum(self.partitions.values())


class LagReader:
    """One admin client and one offsets consumer, reused across reads; close() when done."""

    def __init__(self, kafka: KafkaSettings, client_id: str = "traffic-lag") -> None:
        from traffic import clients

        self._admin = clients.admin(kafka, client_id=client_id)
        try:
            self._consumer = clients.consumer(kafka, client_id=client_id, group_id=None, enable_auto_commit=False)
        except BaseException:
            self._admin.close()
            raise

    def lag(self, group: str, topic: str) -> GroupLag:
        from kafka import TopicPartition

        partitions = sorted(self._consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = self._consumer.end_offsets(tps) if tps else {}
        starts = self._consumer.beginning_offsets(tps) if tps else {}
        offsets = self._admin.list_group_offsets(group).get(group) or {}
        committed = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}
        lags = {tp.partition: max(0, ends[tp] - committed.get(tp.partition, starts[tp])) for tp in tps}
        return GroupLag(group=group, topic=topic, partitions=lags, committed=bool(committed))

    def groups(self) -> list[str]:
        """Every consumer group the broker knows."""
        groups = self._admin.list_groups()
        return sorted(g["group_id"] if isinstance(g, dict) else g[0] for g in groups)

    def close(self) -> None:
        self._consumer.close()
        self._admin.close()

    def __enter__(self) -> LagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
