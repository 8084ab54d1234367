"""The accuracy arithmetic of ``traffic eval`` on hand-made cases (offline/scoring.py, offline/truth.py)."""

from __future__ import annotations

import math

import pytest

from offline.scoring import Predicted, match, nwrmse, score
from offline.truth import TruthFile, TruthRecord

FPS = 10.0


def line(id_: str, frame: int, direction: str = "in", cls: str = "car", **kw: object) -> TruthRecord:
    return TruthRecord.model_validate({"id": id_, "frame": frame, "line": "l1", "direction": direction, "class": cls, **kw})


def move(id_: str, frame: int, entry: str, exit_: str, cls: str = "car", **kw: object) -> TruthRecord:
    return TruthRecord.model_validate({"id": id_, "frame": frame, "entry": entry, "exit": exit_, "class": cls, **kw})


def p_line(frame: int, direction: str = "in", cls: str = "car", track: int = 1) -> Predicted:
    return Predicted("line", ("l1", direction), cls, frame, track)


def p_move(frame: int, entry: str, exit_: str, cls: str = "car", track: int = 1) -> Predicted:
    return Predicted("movement", (entry, exit_), cls, frame, track)


@pytest.mark.parametrize(
    ("truth", "predicted", "whats"),
    [
        ([line("a", 50)], [p_line(52)], []),  # within the 1 s tolerance: matched
        ([line("a", 50)], [p_line(70)], ["missed", "invented"]),  # 2 s apart: one missed, one invented
        ([line("a", 50)], [p_line(50, cls="truck")], ["misclassed"]),  # right vehicle, wrong class
        ([line("a", 50, alt=["truck"])], [p_line(50, cls="truck")], []),  # an accepted alternative class
        ([line("a", 50)], [p_line(50, direction="out")], ["wrong_series"]),  # same line, wrong direction
        ([line("a", 50, boundary=True)], [], []),  # a boundary case not counted: accepted
        ([line("a", 50, boundary=True)], [p_line(50)], []),  # a boundary case counted: accepted too
        ([line("a", 50), line("b", 52)], [p_line(51)], ["missed"]),  # two vehicles, one count: one missed
        ([], [p_line(5)], ["invented"]),  # nothing labelled there
    ],
)
def test_line_matching(truth: list[TruthRecord], predicted: list[Predicted], whats: list[str]) -> None:
    _, findings = match(truth, predicted, tolerance_frames=10)
    assert sorted(f.what for f in findings) == sorted(whats)


def test_movement_with_the_wrong_exit_is_one_finding_not_two() -> None:
    _, findings = match([move("m", 100, "east", "north")], [p_move(110, "east", "west")], tolerance_frames=30)
    assert [(f.what, f.truth.id if f.truth else None) for f in findings] == [("wrong_series", "m")]


def test_total_and_cell_error() -> None:
    truth = [line("a", 10), line("b", 20), line("c", 30, cls="truck"), line("d", 40, boundary=True)]
    predicted = [p_line(10), p_line(20, cls="truck"), p_line(30, cls="truck"), p_line(90)]
    s = score(truth, predicted, frames=100, fps=FPS)
    # resolved truth: a, b, c (d is a boundary case nobody counted) = 3; predicted 4
    assert (s.lines.truth, s.lines.predicted) == (3, 4)
    assert s.lines.total_error == pytest.approx(1 / 3)
    # cells: car 2 labelled vs 2 counted (a, and the invented one); truck 1 labelled vs 2 counted -> |2-2| + |2-1| = 1
    assert s.lines.cell_error == pytest.approx(1 / 3)
    assert sorted(f.what for f in s.findings) == ["invented", "misclassed"]


def test_alt_class_moves_the_truth_to_the_counted_class() -> None:
    s = score([line("a", 10, alt=["truck"])], [p_line(10, cls="truck")], frames=100, fps=FPS)
    assert (s.lines.total_error, s.lines.cell_error) == (0.0, 0.0)


def test_series_error_is_per_movement_without_classes() -> None:
    truth = [move("1", 10, "e", "n"), move("2", 20, "e", "n"), move("3", 30, "w", "e")]
    predicted = [p_move(10, "e", "n", cls="truck"), p_move(31, "w", "e"), p_move(50, "w", "e")]
    s = score(truth, predicted, frames=100, fps=FPS)
    assert s.movements.series_error == {("e", "n"): 1, ("w", "e"): 1}


def test_nwrmse_by_hand() -> None:
    assert nwrmse([5, 15], [5, 15], frames=100) == 1.0  # perfect
    assert nwrmse([], [3], frames=100) == 0.0  # no truth: no weight, 0 by definition
    # one of two vehicles counted 40 frames late (segment 1 instead of 0... cumulative counts differ for 4 segments)
    truth, predicted = [5, 15], [5, 55]
    weights = [i / 55 for i in range(1, 11)]
    diffs = [0 if (i * 10) <= 15 else (-1 if (i * 10) <= 55 else 0) for i in range(1, 11)]
    expected = 1 - math.sqrt(sum(w * d * d for w, d in zip(weights, diffs))) / 2
    assert nwrmse(truth, predicted, frames=100) == pytest.approx(expected)
    assert nwrmse([5], [], frames=100) == pytest.approx(1 - math.sqrt(sum(i / 55 for i in range(1, 11))))  # = 0: floored


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"id": "x", "frame": 1, "class": "car"}, "either a line crossing"),  # neither kind
        ({"id": "x", "frame": 1, "class": "car", "line": "l1"}, "needs both line and direction"),
        ({"id": "x", "frame": 1, "class": "car", "line": "l1", "direction": "in", "entry": "a", "exit": "b"}, "either a line"),
        ({"id": "x", "frame": 1, "class": "lorry", "line": "l1", "direction": "in"}, "class"),  # not a known class
    ],
)
def test_bad_records_are_refused(record: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TruthRecord.model_validate(record)


def test_truth_file_checks_lines_frames_and_ids() -> None:
    base = {"video": "v.mp4", "site": "s.yaml", "camera": "c", "fps": 10, "frames": 100, "labelled_lines": ["l1"]}
    ok = TruthFile.model_validate({**base, "vehicles": [{"id": "a", "frame": 5, "line": "l1", "direction": "in", "class": "car"}]})
    assert len(ok.vehicles) == 1
    with pytest.raises(ValueError, match="not in labelled_lines"):
        TruthFile.model_validate({**base, "vehicles": [{"id": "a", "frame": 5, "line": "l2", "direction": "in", "class": "car"}]})
    with pytest.raises(ValueError, match="past the recording"):
        TruthFile.model_validate({**base, "vehicles": [{"id": "a", "frame": 100, "line": "l1", "direction": "in", "class": "car"}]})
    with pytest.raises(ValueError, match="appears twice"):
        TruthFile.model_validate({**base, "vehicles": [{"id": "a", "frame": 5, "line": "l1", "direction": "in", "class": "car"}] * 2})
    with pytest.raises(ValueError, match="labelled_movements is false"):
        TruthFile.model_validate({**base, "vehicles": [{"id": "a", "frame": 5, "entry": "x", "exit": "y", "class": "car"}]})
