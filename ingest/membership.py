"""The ingest group: Kafka's group protocol decides which replica reads which camera.

How (the way Kafka Connect shares out its tasks, with no infrastructure beyond the broker):

* every replica joins the consumer group ``group_id`` on the small ``assignment_topic``; a
  camera is the partition its id hashes to (:mod:`ingest.assignment`). Nothing is produced to or
  fetched from that topic: its partitions only name the cameras, the group coordinator only says
  who owns them;
* the group runs KIP-429 *cooperative* rebalancing with our own assignor (:class:`CameraAssignor`):
  a member keeps what it owns; a partition that must move is first taken away from its owner in one
  round - the owner stops the cameras, publishes their end-of-session markers, waits for the
  broker's acknowledgement (:meth:`CameraHolder.release`, inside the revoke callback, before it
  rejoins) - and only the next round gives it to its new owner. Adding a replica moves about
  ``cameras / replicas`` cameras and nobody else reconnects;
* a replica that dies is expelled after ``session_timeout_ms``; its partitions are owned by
  nobody and go to the others in one round;
* a replica that cannot confirm its membership stops its cameras by itself when its
  :class:`ingest.lease.Lease` runs out, before the coordinator could hand them to someone else.

kafka-python does not report heartbeat results; :func:`watch_coordinator` wraps two methods of
its coordinator (pinned kafka-python 3.0) to feed the lease, and checks at start that they exist.
Releases run in their own thread while the rebalance callback waits for them on kafka-python's IO
loop without blocking it (:func:`off_the_loop`), so heartbeats go on during a long release.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from kafka import KafkaConsumer  # the type; built by traffic.clients
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor, RebalanceProtocol
from kafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment, ConsumerProtocolSubscription
from kafka.structs import TopicPartition

try:  # the awaitable kafka-python's own sleep() returns (kafka-python 3.0's IO loop is not asyncio)
    from kafka.net.selector import KernelEvent, NetworkSelector
except ImportError:  # pragma: no cover - another kafka-python: watch_coordinator refuses to start
    KernelEvent = NetworkSelector = None  # type: ignore[assignment,misc]

from ingest.assignment import cameras_by_partition, plan_round
from ingest.backoff import Backoff
from ingest.lease import Lease
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings
from traffic import clients
from traffic.errors import BrokerUnavailable, ConfigError
from traffic.health import Health
from traffic.settings import KafkaSettings

log = logging.getLogger(__name__)

POLL_MS = 200  # the membership loop's poll: also how often the lease is checked
AuthorizationFailedError = (GroupAuthorizationFailedError, TopicAuthorizationFailedError, ClusterAuthorizationFailedError)


class CameraHolder(Protocol):
    """What the membership drives: the service that actually reads cameras."""

    def held(self) -> set[str]:
        """Cameras being read now."""
        ...

    def hold(self, cameras: set[str]) -> None:
        """Start reading ``cameras`` (each in a new session)."""
        ...

    def release(self, cameras: set[str], flush: bool) -> None:
        """Stop ``cameras``; with ``flush`` end their sessions with a marker and wait for the acknowledgements."""
        ...


class CameraAssignor(AbstractPartitionAssignor):
    """The leader's plan (:func:`ingest.assignment.plan_round`) as a kafka-python cooperative assignor.

    Args:
        topic: the assignment topic.
        weights: partition -> cameras it carries (from this replica's site file).
        ingester: this replica's name, sent to the leader for its logs.
    """

    name = "traffic-cameras"
    version = 1  # ConsumerProtocolSubscription v1 carries owned_partitions (KIP-429)

    def __init__(self, topic: str, weights: dict[int, int], ingester: str) -> None:
        self.topic = topic
        self.weights = weights
        self.ingester = ingester
        self.owned: set[int] = set()

    def supported_protocols(self) -> list[RebalanceProtocol]:
        return [RebalanceProtocol.COOPERATIVE]

    def metadata(self, topics: set[str]) -> ConsumerProtocolSubscription:
        owned = [ConsumerProtocolSubscription.TopicPartition(topic=self.topic, partitions=sorted(self.owned))] if self.owned else []
        return ConsumerProtocolSubscription(
            version=self.version, topics=sorted(topics), user_data=self.ingester.encode(), owned_partitions=owned
        )

    def assign(self, cluster: Any, members: list[Any]) -> dict[str, ConsumerProtocolAssignment]:
        partitions = sorted(cluster.partitions_for_topic(self.topic) or ())
        owned = {
            m.member_id: [p for tp in (getattr(m.metadata, "owned_partitions", None) or ()) if tp.topic == self.topic for p in tp.partitions]
            for m in members
        }
        plan = plan_round(owned, partitions, self.weights)
        names = {m.member_id: (m.metadata.user_data or b"").decode(errors="replace") or m.member_id for m in members}
        withheld = sum(self.weights.get(p, 0) for p in partitions) - sum(self.weights.get(p, 0) for parts in plan.values() for p in parts)
        log.info(
            "camera assignment planned",
            extra={
                "members": len(members),
                "cameras": {names[m]: sum(self.weights.get(p, 0) for p in parts) for m, parts in plan.items()},
                "cameras_moving": withheld,
            },
        )
        return {
            member: ConsumerProtocolAssignment(self.version, [(self.topic, parts)] if parts else [], b"")
            for member, parts in plan.items()
        }

    def on_assignment(self, assignment: ConsumerProtocolAssignment, generation: int) -> None:
        self.owned = {tp.partition for tp in assignment.partitions() if tp.topic == self.topic}


def watch_coordinator(consumer: KafkaConsumer, lease: Lease) -> None:
    """Feed ``lease`` from the coordinator's heartbeat and SyncGroup answers (send times, monotonic).

    Raises:
        RuntimeError: this kafka-python has no such hooks (the pinned version, 3.0, has).
    """
    coordinator = getattr(consumer, "_coordinator", None)
    names = ("_handle_heartbeat_response", "_process_sync_group_response")
    if (coordinator is None or not all(callable(getattr(coordinator, n, None)) for n in names)
            or KernelEvent is None or not hasattr(NetworkSelector, "_sleep")):  # fmt: skip
        raise RuntimeError("this kafka-python version does not expose the group coordinator hooks ingest needs (pin 3.0)")
    on_heartbeat_response = coordinator._handle_heartbeat_response  # noqa: SLF001
    on_sync_response = coordinator._process_sync_group_response  # noqa: SLF001

    def heartbeat(response: Any, send_time: float) -> Any:
        if response.error_code == 0:
            lease.confirmed(send_time)
        elif response.error_code == RebalanceInProgressError.errno:
            lease.kept_alive(send_time)  # the coordinator also resets the session timer on these
        return on_heartbeat_response(response, send_time)

    def sync(response: Any, send_time: float) -> Any:
        if response.error_code == 0:
            lease.confirmed(send_time)
        return on_sync_response(response, send_time)

    coordinator._handle_heartbeat_response = heartbeat  # noqa: SLF001
    coordinator._process_sync_group_response = sync  # noqa: SLF001


async def off_the_loop(fn: Any, *args: Any) -> None:
    """Run the blocking ``fn(*args)`` in a thread; wait for it on kafka-python's IO loop without blocking it.

    Why: a rebalance callback runs on the loop that also sends the heartbeats; a release waits for
    the broker's acknowledgements, which may take seconds when the broker is busy.
    """
    done = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the callback
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name="release", daemon=True).start()
    while not done.is_set():
        await KernelEvent("_sleep", 0.02)
    if failure:
        raise failure[0]


class _Listener(AsyncConsumerRebalanceListener):
    """Runs inside the rebalance, on kafka-python's IO loop: a revoke returns only once the release is done."""

    def __init__(self, membership: "CameraMembership") -> None:
        self._membership = membership

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await off_the_loop(self._membership.partitions_revoked, {tp.partition for tp in revoked}, False)

    async def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        await off_the_loop(self._membership.partitions_revoked, {tp.partition for tp in lost}, True)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._membership.partitions_assigned({tp.partition for tp in assigned})  # starts threads: quick


class CameraMembership(threading.Thread):
    """Keeps this replica in the ingest group and makes ``holder`` read exactly the cameras it owns.

    Lifecycle: ``start()``; ``stop()`` releases every camera (end markers acknowledged), then leaves
    the group so the others take the cameras over at once; ``join()``. ``error`` holds a fatal
    configuration error (the service then stops).
    """

    def __init__(
        self,
        settings: IngestSettings,
        kafka: KafkaSettings,
        cameras: Iterable[str],
        holder: CameraHolder,
        metrics: IngestMetrics,
        health: Health,
    ) -> None:
        super().__init__(name="membership", daemon=True)
        self._settings = settings
        self._kafka = kafka
        self._holder = holder
        self._metrics = metrics
        self._health = health
        self.ingester = metrics.ingester
        self.by_partition = cameras_by_partition(cameras, settings.assignment_partitions)
        self.lease = Lease(
            settings.session_timeout_ms / 1000, settings.rebalance_timeout_ms / 1000, settings.lease_margin_ms / 1000
        )
        self._assigned: set[int] = set()  # partitions the group gave us (kafka-python's view)
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._lease_lapsed = False
        self.error: Exception | None = None

    # -- what the service asks ---------------------------------------------------------------
    def may_publish(self) -> bool:
        """True while this replica's lease lasts (the publisher asks before every frame)."""
        return self.lease.valid()

    def assigned_cameras(self) -> set[str]:
        """Cameras of the partitions the group gave this replica."""
        with self._lock:
            return {c for p in self._assigned for c in self.by_partition.get(p, ())}

    def stop(self) -> None:
        self._stop_event.set()

    # -- rebalance callbacks (kafka-python's IO thread) ---------------------------------------
    def partitions_assigned(self, partitions: set[int]) -> None:
        with self._lock:
            self._assigned |= partitions
            cameras = {c for p in partitions for c in self.by_partition.get(p, ())}
            if cameras and self.lease.valid() and not self._stop_event.is_set():
                new = cameras - self._holder.held()
                self._holder.hold(new)
                self._metrics.assignment_changed("assigned", len(new))
                log.info("cameras assigned", extra={"ingester": self.ingester, "cameras": sorted(new)})
            self._publish_state()

    def partitions_revoked(self, partitions: set[int], lost: bool) -> None:
        with self._lock:
            self._assigned -= partitions
            cameras = {c for p in partitions for c in self.by_partition.get(p, ())} & self._holder.held()
            if lost:
                self.lease.revoke()
            if cameras:
                flush = not lost and self.lease.valid()
                started = time.monotonic()
                self._holder.release(cameras, flush=flush)
                self._metrics.assignment_changed("released" if flush else "lost", len(cameras))
                log.info(
                    "cameras released" if flush else "cameras lost",
                    extra={"ingester": self.ingester, "cameras": sorted(cameras), "took_s": round(time.monotonic() - started, 3)},
                )
            self._publish_state()

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except ConfigError as exc:
            self.error = exc
            log.error("camera assignment cannot go on", extra={"error": str(exc)})
            self._fence_all("lost")

    def _run(self) -> None:
        backoff = Backoff(self._settings.backoff_initial_s, self._settings.backoff_max_s)
        while not self._stop_event.is_set():
            try:
                consumer = self._connect()
            except AuthorizationFailedError as exc:
                raise self._refused(exc) from None
            except (KafkaError, OSError, BrokerUnavailable) as exc:
                self._health.set("assignment", False, f"group coordinator unreachable: {exc.__class__.__name__}")
                log.warning("cannot join the ingest group; retrying", extra={"group": self._settings.group_id, "error": str(exc)})
                self._stop_event.wait(backoff.next_s())
                continue
            backoff.reset()
            try:
                self._serve(consumer)
            except AuthorizationFailedError as exc:
                raise self._refused(exc) from None
            except KafkaError as exc:  # the consumer is unusable: fence, start over as a new member
                log.warning("ingest group membership failed; rejoining", extra={"error": str(exc)})
                self._fence_all("lost")
                self._stop_event.wait(backoff.next_s())
            finally:
                self._leave(consumer)

    def _refused(self, exc: KafkaError) -> ConfigError:
        s = self._settings
        return ConfigError(
            f"Kafka refused the ingest group ({exc.__class__.__name__}): the principal needs Read and Describe on the group "
            f"{s.group_id!r}, and Create, Describe and Read on the topic {s.assignment_topic!r} (docs/security.md)"
        )

    def _connect(self) -> KafkaConsumer:
        """Check the assignment topic (create it if missing) and join the group (as a new member)."""
        self._ensure_topic()
        s = self._settings
        assignor = CameraAssignor(s.assignment_topic, {p: len(c) for p, c in self.by_partition.items()}, self.ingester)
        consumer = clients.consumer(
            self._kafka,
            client_id=f"traffic-ingest-{self.ingester}",
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            partition_assignment_strategy=[assignor],
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.rebalance_timeout_ms,
            bootstrap_timeout_ms=s.bootstrap_timeout_ms,
        )
        watch_coordinator(consumer, self.lease)
        consumer.subscribe([s.assignment_topic], listener=_Listener(self))
        log.info("joining the ingest group", extra={"group": s.group_id, "ingester": self.ingester, "topic": s.assignment_topic})
        return consumer

    def _ensure_topic(self) -> None:
        s = self._settings
        admin = clients.admin(self._kafka, client_id=f"traffic-ingest-{self.ingester}")
        try:
            if s.assignment_topic not in set(admin.list_topics()):
                try:
                    # replication factor -1: the broker's default.replication.factor (3 on the Strimzi cluster)
                    admin.create_topics([NewTopic(s.assignment_topic, s.assignment_partitions, -1,
                                                  topic_configs={"retention.ms": str(3600 * 1000)})])  # fmt: skip
                    log.info("assignment topic created", extra={"topic": s.assignment_topic, "partitions": s.assignment_partitions})
                except TopicAlreadyExistsError:
                    pass
            described = admin.describe_topics([s.assignment_topic])
        finally:
            admin.close()
        count = len(described[0].get("partitions") or []) if described else 0
        if count and count != s.assignment_partitions:
            raise ConfigError(
                f"topic {s.assignment_topic} has {count} partitions but TRAFFIC_INGEST_ASSIGNMENT_PARTITIONS is "
                f"{s.assignment_partitions}: every replica must map cameras to the same partitions (set it to {count})"
            )

    def _serve(self, consumer: KafkaConsumer) -> None:
        while not self._stop_event.is_set():
            self.lease.polled()
            consumer.poll(timeout_ms=POLL_MS)
            paused = consumer.paused()
            assigned = consumer.assignment()
            if assigned - paused:
                consumer.pause(*(assigned - paused))  # nothing to fetch there: the partitions only name cameras
            self._reconcile()
        # Stopping: end every session (markers acknowledged) while still the owner, then leave.
        with self._lock:
            held = self._holder.held()
            if held:
                flush = self.lease.valid()
                self._holder.release(held, flush=flush)
                self._metrics.assignment_changed("released" if flush else "lease_expired", len(held))
                log.info("cameras released", extra={"ingester": self.ingester, "cameras": sorted(held), "reason": "shutdown"})
            self._publish_state()

    def _reconcile(self) -> None:
        """Read exactly the assigned cameras while the lease lasts, none without it."""
        with self._lock:
            valid = self.lease.valid()
            held = self._holder.held()
            if not valid:
                if held:
                    self._holder.release(held, flush=False)
                    self._metrics.assignment_changed("lease_expired", len(held))
                    log.warning(
                        "membership not confirmed in time: cameras stopped before the group can move them",
                        extra={"ingester": self.ingester, "cameras": sorted(held), "lease_margin_s": self.lease.margin_s},
                    )
                self._lease_lapsed = self._lease_lapsed or bool(self._assigned)
            else:
                missing = self.assigned_cameras() - held
                if missing:
                    self._holder.hold(missing)
                    self._metrics.assignment_changed("assigned", len(missing))
                    if self._lease_lapsed:
                        log.info("membership confirmed again: cameras restarted", extra={"ingester": self.ingester, "cameras": sorted(missing)})
                self._lease_lapsed = False
            self._publish_state()

    def _fence_all(self, change: str) -> None:
        with self._lock:
            self.lease.revoke()
            self._assigned.clear()
            held = self._holder.held()
            if held:
                self._holder.release(held, flush=False)
                self._metrics.assignment_changed(change, len(held))
            self._publish_state()

    def _leave(self, consumer: KafkaConsumer) -> None:
        try:
            consumer.close(autocommit=False, timeout_ms=self._settings.release_timeout_ms)
        except KafkaError as exc:
            log.warning("leaving the ingest group failed", extra={"error": str(exc)})
        with self._lock:
            self.lease.revoke()
            self._assigned.clear()
            self._publish_state()

    def _publish_state(self) -> None:
        if self.lease.valid():
            self._health.set("assignment", True)
        else:
            self._health.set("assignment", False, "membership of the ingest group not confirmed")
        self._metrics.held(self._holder.held())
