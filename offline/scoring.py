"""How wrong a count is: predicted events matched to labelled ones, and the error figures.

Pure arithmetic (no model, no video), so every figure of ``docs/accuracy.md`` can be checked by hand.

**Matching.** Per series (a line and direction, or an entry and exit approach), predictions are
matched one-to-one to labelled records whose time is within ``tolerance_s`` (Hungarian
assignment on the time difference). What is left over is then matched across series of the same
line or entry approach: a prediction there is the right vehicle with the wrong direction or exit
(``wrong_series``). Left-over labelled records are ``missed`` (unless they are boundary cases,
which may be counted or not), left-over predictions ``invented``. A matched prediction whose
class is neither the record's class nor one of its ``alt`` classes is ``misclassed``.

**Resolved truth.** Boundary records count as truth only when something matched them, and a
record matched by a prediction of one of its ``alt`` classes counts in that class. Then per
recording and kind (lines, movements):

* total error = |P - T| / T  (P predictions, T resolved truth records);
* cell error  = sum over cells |P_c - T_c| / T, a cell being (series, class);
* series error = |P_s - T_s| per series (the per-movement absolute error);
* the AI City Challenge Track 1 effectiveness: the recording is cut into 10 equal segments; for
  each (series, class) with N > 0 labelled vehicles the cumulative counts at the end of each
  segment give wRMSE = sqrt(sum_i w_i (P_i - T_i)^2) with w_i = i / 55, nwRMSE = 1 - wRMSE / N
  (0 if wRMSE > N); effectiveness = sum N nwRMSE / sum N (1 is perfect).

Pooled figures add the absolute differences and truth counts over recordings (a surplus in one
recording never cancels a shortfall in another).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import lap

from offline.truth import TruthRecord

Kind = Literal["line", "movement"]
SEGMENTS = 10


@dataclass(frozen=True)
class Predicted:
    """One counted event of a counter (ours or the peer's), on the recording's frame clock."""

    kind: Kind
    series: tuple[str, str]
    vehicle_class: str
    frame: int
    track_id: int = -1


@dataclass(frozen=True)
class Finding:
    """One difference between a count and the truth, for the per-vehicle list."""

    what: Literal["missed", "invented", "misclassed", "wrong_series"]
    kind: Kind
    frame: int
    truth: TruthRecord | None = None
    predicted: Predicted | None = None


@dataclass
class KindScore:
    """The figures of one kind of event (lines or movements) of one recording."""

    truth: int = 0
    predicted: int = 0
    abs_total: int = 0
    abs_cells: int = 0
    series_error: dict[tuple[str, str], int] = field(default_factory=dict)
    effectiveness_num: float = 0.0
    effectiveness_den: int = 0

    @property
    def total_error(self) -> float | None:
        """|P - T| / T (None without truth)."""
        return self.abs_total / self.truth if self.truth else None

    @property
    def cell_error(self) -> float | None:
        """sum |P_c - T_c| / T (None without truth)."""
        return self.abs_cells / self.truth if self.truth else None

    @property
    def effectiveness(self) -> float | None:
        """AI City Track 1 effectiveness (None without truth)."""
        return self.effectiveness_num / self.effectiveness_den if self.effectiveness_den else None

    def add(self, other: "KindScore") -> None:
        """Pool another recording's figures into this one."""
        self.truth += other.truth
        self.predicted += other.predicted
        self.abs_total += other.abs_total
        self.abs_cells += other.abs_cells
        self.effectiveness_num += other.effectiveness_num
        self.effectiveness_den += other.effectiveness_den
        for key, value in other.series_error.items():
            self.series_error[key] = self.series_error.get(key, 0) + value


@dataclass
class Score:
    """Everything ``traffic eval`` reports for one counter on one recording."""

    lines: KindScore = field(default_factory=KindScore)
    movements: KindScore = field(default_factory=KindScore)
    findings: list[Finding] = field(default_factory=list)

    def kind(self, kind: Kind) -> KindScore:
        """The figures of one kind."""
        return self.lines if kind == "line" else self.movements

    @property
    def overall(self) -> KindScore:
        """Lines and movements together."""
        both = KindScore()
        both.add(self.lines)
        both.add(self.movements)
        return both


def match(truth: Sequence[TruthRecord], predicted: Sequence[Predicted], tolerance_frames: int) -> tuple[dict[int, int], list[Finding]]:
    """Match predictions to records (index -> index) and list the differences (see the module docstring)."""
    pairs: dict[int, int] = {}
    findings: list[Finding] = []
    for group in _groups(truth, predicted, lambda s: s):
        pairs.update(_assign(truth, predicted, *group, tolerance_frames))
    # second pass: same line / same entry, another direction / exit
    left_t = [i for i in range(len(truth)) if i not in pairs]
    left_p = [j for j in range(len(predicted)) if j not in pairs.values()]
    second: dict[int, int] = {}
    for group in _groups([truth[i] for i in left_t], [predicted[j] for j in left_p], lambda s: (s[0], "")):
        ti, pj = group
        for a, b in _assign([truth[i] for i in left_t], [predicted[j] for j in left_p], ti, pj, tolerance_frames).items():
            second[left_t[a]] = left_p[b]
    for i, j in second.items():
        findings.append(Finding("wrong_series", truth[i].kind, truth[i].frame, truth[i], predicted[j]))
    matched = {**pairs, **second}
    for i, j in pairs.items():
        if not truth[i].accepts(predicted[j].vehicle_class):
            findings.append(Finding("misclassed", truth[i].kind, truth[i].frame, truth[i], predicted[j]))
    used = set(matched.values())
    for i, record in enumerate(truth):
        if i not in matched and not record.boundary:
            findings.append(Finding("missed", record.kind, record.frame, record, None))
    for j, p in enumerate(predicted):
        if j not in used:
            findings.append(Finding("invented", p.kind, p.frame, None, p))
    findings.sort(key=lambda f: (f.frame, f.what))
    return matched, findings


def _groups(truth: Sequence[TruthRecord], predicted: Sequence[Predicted], key) -> Iterable[tuple[list[int], list[int]]]:  # type: ignore[no-untyped-def]
    by_t: dict[tuple, list[int]] = {}
    by_p: dict[tuple, list[int]] = {}
    for i, r in enumerate(truth):
        by_t.setdefault((r.kind, key(r.series)), []).append(i)
    for j, p in enumerate(predicted):
        by_p.setdefault((p.kind, key(p.series)), []).append(j)
    for k in sorted(set(by_t) & set(by_p)):
        yield by_t[k], by_p[k]


def _assign(truth: Sequence[TruthRecord], predicted: Sequence[Predicted], ti: list[int], pj: list[int], tolerance: int) -> dict[int, int]:
    big = tolerance + 1000.0  # beyond the tolerance: never a match (cost_limit below)
    cost = np.full((len(ti), len(pj)), big)
    for a, i in enumerate(ti):
        for b, j in enumerate(pj):
            gap = abs(truth[i].frame - predicted[j].frame)
            if gap <= tolerance:
                # prefer the right class among equally close candidates
                cost[a, b] = gap + (0 if truth[i].accepts(predicted[j].vehicle_class) else 0.5)
    if not len(ti) or not len(pj):
        return {}
    # cost_limit: leaving a record and a prediction unmatched costs as much as one pair at the tolerance
    _, rows, _ = lap.lapjv(cost, extend_cost=True, cost_limit=tolerance + 1.0)  # rows[a] = matched column or -1
    return {ti[a]: pj[b] for a, b in enumerate(rows) if b >= 0 and cost[a, b] < big}


def score(
    truth: Sequence[TruthRecord], predicted: Sequence[Predicted], frames: int, fps: float, tolerance_s: dict[Kind, float] | None = None
) -> Score:
    """All figures of one counter on one recording of ``frames`` frames at ``fps``."""
    tolerance = tolerance_s or {"line": 1.0, "movement": 3.0}
    result = Score()
    matched: dict[int, int] = {}
    for kind in ("line", "movement"):
        t_idx = [i for i, r in enumerate(truth) if r.kind == kind]
        p_idx = [j for j, p in enumerate(predicted) if p.kind == kind]
        pairs, findings = match([truth[i] for i in t_idx], [predicted[j] for j in p_idx], int(round(tolerance[kind] * fps)))  # type: ignore[index]
        matched.update({t_idx[a]: p_idx[b] for a, b in pairs.items()})
        result.findings += findings
    result.findings.sort(key=lambda f: (f.frame, f.what))
    resolved: list[tuple[Kind, tuple[str, str], str, int]] = []  # kind, series, class, frame
    for i, record in enumerate(truth):
        j = matched.get(i)
        if record.boundary and j is None:
            continue
        cls = record.vehicle_class
        if j is not None and predicted[j].vehicle_class in record.alt and predicted[j].series == record.series:
            cls = predicted[j].vehicle_class
        resolved.append((record.kind, record.series, cls, record.frame))
    for kind in ("line", "movement"):
        ks = result.kind(kind)  # type: ignore[arg-type]
        t = [(s, c, f) for k, s, c, f in resolved if k == kind]
        p = [(x.series, x.vehicle_class, x.frame) for x in predicted if x.kind == kind]
        ks.truth, ks.predicted = len(t), len(p)
        ks.abs_total = abs(len(p) - len(t))
        tc, pc = Counter((s, c) for s, c, _ in t), Counter((s, c) for s, c, _ in p)
        ks.abs_cells = sum(abs(pc[k] - tc[k]) for k in set(tc) | set(pc))
        ts, ps = Counter(s for s, _, _ in t), Counter(s for s, _, _ in p)
        ks.series_error = {k: abs(ps[k] - ts[k]) for k in sorted(set(ts) | set(ps))}
        for cell, n in tc.items():
            nw = nwrmse([f for s, c, f in t if (s, c) == cell], [f for s, c, f in p if (s, c) == cell], frames)
            ks.effectiveness_num += n * nw
            ks.effectiveness_den += n
    return result


def nwrmse(truth_frames: Sequence[int], predicted_frames: Sequence[int], frames: int, segments: int = SEGMENTS) -> float:
    """The AI City normalized weighted RMSE of one (series, class): 1 - wRMSE / N, floored at 0.

    Segment i (1..segments) ends at frame ceil(i * frames / segments); its weight is i / sum(1..segments).
    """
    n = len(truth_frames)
    if n == 0:
        return 0.0
    total_weight = segments * (segments + 1) / 2
    acc = 0.0
    for i in range(1, segments + 1):
        end = math.ceil(i * frames / segments)
        diff = sum(f < end for f in predicted_frames) - sum(f < end for f in truth_frames)
        acc += (i / total_weight) * diff * diff
    w = math.sqrt(acc)
    return 0.0 if w > n else 1.0 - w / n
