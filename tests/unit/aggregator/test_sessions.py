"""The session gate: a camera switches to a new session only when it is real; counts stay as without the gate."""

from __future__ import annotations

from aggregator.counting import CameraCounter
from aggregator.sessions import Held, SessionGate
from tests.synthetic import CAMERA, synthetic_site, synthetic_stream
from traffic.wire import DetectionEvent


def event(session: str, seq: int, capture_ms: int = 1_767_225_600_000) -> DetectionEvent:
    return DetectionEvent(camera=CAMERA, intersection="x", session=session, seq=seq, capture_ms=capture_ms + seq * 100, model="m", width=640, height=480)


def held(e: DetectionEvent) -> Held:
    return Held(e, e.encode(), e.camera.encode())


class Counter:
    """The counter's position as the gate sees it."""

    def __init__(self) -> None:
        self.session: str | None = None
        self.next_seq = 0
        self.ended = False

    def feed(self, events: tuple[DetectionEvent, ...]) -> None:
        for e in events:
            if e.session != self.session:
                self.session, self.next_seq, self.ended = e.session, 0, False
            if e.seq >= self.next_seq:
                self.next_seq = e.seq + 1


def offer(gate: SessionGate, c: Counter, e: DetectionEvent):  # type: ignore[no-untyped-def]
    out = gate.offer(held(e), c.session, c.next_seq, c.ended)
    c.feed(out.feed)
    return out


def test_first_session_and_its_events_pass() -> None:
    gate, c = SessionGate(), Counter()
    assert offer(gate, c, event("s1", 0)).feed == (event("s1", 0),)
    assert offer(gate, c, event("s1", 1)).feed == (event("s1", 1),)


def test_a_stray_event_of_a_foreign_session_is_held_then_refused() -> None:
    gate, c = SessionGate(confirm_events=3, foreign_after=3), Counter()
    for seq in range(5):
        offer(gate, c, event("s1", seq))
    stray = offer(gate, c, event("foreign", 0))
    assert stray.feed == () and gate.waiting == 1
    refused = [offer(gate, c, event("s1", seq)).refused for seq in range(5, 8)]
    assert refused[0] == refused[1] == () and [h.event.session for h in refused[2]] == ["foreign"]
    assert gate.waiting == 0 and c.session == "s1"


def test_duplicates_of_the_current_session_do_not_count_as_progress() -> None:
    gate, c = SessionGate(confirm_events=3, foreign_after=2), Counter()
    for seq in range(5):
        offer(gate, c, event("s1", seq))
    offer(gate, c, event("s2", 0))
    for _ in range(5):
        assert offer(gate, c, event("s1", 2)).refused == ()  # a redelivered old event
    assert gate.waiting == 1


def test_a_restart_without_end_marker_is_confirmed_after_three_events_in_order() -> None:
    gate, c = SessionGate(confirm_events=3), Counter()
    for seq in range(5):
        offer(gate, c, event("s1", seq))
    assert offer(gate, c, event("s2", 0)).feed == ()
    assert offer(gate, c, event("s2", 1)).feed == ()
    out = offer(gate, c, event("s2", 2))
    assert [e.seq for e in out.feed] == [0, 1, 2] and c.session == "s2"
    assert offer(gate, c, event("s1", 5)).feed == (event("s1", 5),)  # the old session: passed on (the counter drops it)


def test_after_an_end_marker_seq_zero_switches_at_once() -> None:
    gate, c = SessionGate(), Counter()
    offer(gate, c, event("s1", 0))
    c.ended = True
    assert offer(gate, c, event("s2", 0)).feed == (event("s2", 0),)


def test_a_second_candidate_replaces_the_first_which_is_refused() -> None:
    gate, c = SessionGate(), Counter()
    offer(gate, c, event("s1", 0))
    offer(gate, c, event("x", 4))
    out = offer(gate, c, event("y", 0))
    assert [h.event.session for h in out.refused] == ["x"] and gate.candidate == "y"


def test_counts_through_the_gate_equal_counts_without_it_and_strays_change_nothing() -> None:
    site = synthetic_site()
    a = synthetic_stream(per_movement=1, session="a").events
    b = synthetic_stream(per_movement=1, session="b", start_ms=a[-1].capture_ms + 1000).events
    plain = CameraCounter(site, CAMERA)
    expected = [x for e in a + b for x in plain.update(e)] + plain.finish()
    gated, gate = CameraCounter(site, CAMERA), SessionGate()
    strays = {50: a[50].model_copy(update={"session": "stray", "seq": 0}), 200: a[10].model_copy(update={"session": "stray2", "seq": 7})}
    got = []
    for i, e in enumerate(a + b):
        for one in ([strays[i]] if i in strays else []) + [e]:
            out = gate.offer(held(one), gated.session, gated.next_seq, gated.stream_ended)
            for f in out.feed:
                got += gated.update(f)
    got += gated.finish()
    assert [x.event_id for x in got] == [x.event_id for x in expected]
