"""Ground truth of a recording: one record per vehicle and counted event, labelled by a person.

A truth file (YAML) belongs to one recording and one camera of a site file; the protocol that
produced it is in ``docs/accuracy.md``::

    video: videos/intersection.mp4        # relative to TRAFFIC_SHARED_DIR (the recordings are not in the repo)
    site: ../sites/intersection.yaml      # relative to this file
    camera: cam-demo
    fps: 30.0                             # the file's frame rate: ``frame`` below is a frame index of the file
    labelled_lines: [west-leg, east-leg]  # every crossing of these lines is labelled
    labelled_movements: true              # every movement through the approach zones is labelled
    vehicles:
      - {id: v01, frame: 132, line: west-leg, direction: westbound, class: car}
      - {id: v02, frame: 402, entry: east, exit: north, class: car, alt: [truck], note: white van}
      - {id: v03, frame: 3, line: east-leg, direction: eastbound, class: car, boundary: true}

* ``frame``: for a line, the frame where the vehicle's ground point (middle of its wheels) is on
  the line; for a movement, the last frame where it is seen leaving through its exit.
* ``class``: as a person names it: ``car`` (also SUVs, pick-ups, vans with windows), ``truck``
  (goods vehicles), ``bus``, ``motorcycle`` (also scooters and mopeds), ``bicycle``, ``person``.
  ``alt`` lists other classes a reasonable labeller could give (a van: ``[truck]``): a count with
  any of them is not a class error.
* ``boundary: true``: the event is only partly in the recording (the vehicle is on the line in
  the first or last frame, or leaves or appears mid-way at the picture edge); counting it and not
  counting it are both accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from traffic.errors import ConfigError
from traffic.settings import shared_dir
from traffic.site import Site, load_site
from traffic.wire import Identifier

VehicleClass = Literal["car", "truck", "bus", "motorcycle", "bicycle", "person"]


class TruthRecord(BaseModel):
    """One labelled event: a line crossing (``line`` + ``direction``) or a movement (``entry`` + ``exit``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: str = Field(min_length=1, max_length=64)
    frame: int = Field(ge=0)
    vehicle_class: VehicleClass = Field(alias="class")
    alt: tuple[VehicleClass, ...] = ()
    line: Identifier | None = None
    direction: str | None = None
    entry: Identifier | None = None
    exit: Identifier | None = None
    boundary: bool = False
    note: str = ""

    @model_validator(mode="after")
    def _one_kind(self) -> "TruthRecord":
        is_line = self.line is not None or self.direction is not None
        is_movement = self.entry is not None or self.exit is not None
        if is_line == is_movement:
            raise ValueError("a record is either a line crossing (line, direction) or a movement (entry, exit)")
        if is_line and (self.line is None or self.direction is None):
            raise ValueError("a line crossing needs both line and direction")
        if is_movement and (self.entry is None or self.exit is None):
            raise ValueError("a movement needs both entry and exit")
        return self

    @property
    def kind(self) -> Literal["line", "movement"]:
        """``line`` or ``movement``."""
        return "line" if self.line is not None else "movement"

    @property
    def series(self) -> tuple[str, str]:
        """(line, direction) or (entry, exit): the count series the record belongs to."""
        return (self.line, self.direction) if self.kind == "line" else (self.entry, self.exit)  # type: ignore[return-value]

    def accepts(self, vehicle_class: str) -> bool:
        """True if a count of this class is not a class error."""
        return vehicle_class == self.vehicle_class or vehicle_class in self.alt


class TruthFile(BaseModel):
    """A labelled recording (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    video: str
    site: str
    camera: Identifier
    fps: float = Field(gt=0)
    frames: int = Field(gt=0, description="frames of the recording")
    labelled_lines: tuple[Identifier, ...] = ()
    labelled_movements: bool = False
    labelled_by: str = ""
    checked: str = Field(default="", description="how the labels were checked")
    vehicles: tuple[TruthRecord, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> "TruthFile":
        seen: set[tuple[str, str]] = set()
        for record in self.vehicles:
            key = (record.id, record.kind)
            if key in seen:
                raise ValueError(f"record {record.id!r} ({record.kind}) appears twice")
            seen.add(key)
            if record.kind == "line" and record.line not in self.labelled_lines:
                raise ValueError(f"record {record.id!r} is on line {record.line!r}, which is not in labelled_lines")
            if record.kind == "movement" and not self.labelled_movements:
                raise ValueError(f"record {record.id!r} is a movement but labelled_movements is false")
            if record.frame >= self.frames:
                raise ValueError(f"record {record.id!r}: frame {record.frame} is past the recording's {self.frames} frames")
        return self


class LabelledRecording:
    """A truth file with its site, camera and video resolved."""

    def __init__(self, path: Path, truth: TruthFile, site: Site) -> None:
        self.path = path
        self.truth = truth
        self.site = site
        self.name = path.name.removesuffix(".truth.yaml").removesuffix(".yaml")

    @property
    def video(self) -> Path:
        """The recording (under ``TRAFFIC_SHARED_DIR``)."""
        return shared_dir() / self.truth.video

    def check_against_site(self) -> None:
        """Every labelled line, direction and approach must exist in the site's camera: ConfigError naming the record."""
        _, camera = self.site.camera(self.truth.camera)
        lines = {line.id: {line.in_label, line.out_label} for line in camera.lines}
        approaches = {a.id for a in camera.approaches}
        for line in self.truth.labelled_lines:
            if line not in lines:
                raise ConfigError(f"{self.path}: labelled line {line!r} is not a line of camera {camera.id} (known: {', '.join(lines)})")
        for r in self.truth.vehicles:
            if r.kind == "line" and r.direction not in lines[r.line]:  # type: ignore[index]
                raise ConfigError(f"{self.path}: record {r.id}: direction {r.direction!r} is not a label of line {r.line} ({sorted(lines[r.line])})")  # type: ignore[index]
            if r.kind == "movement" and (r.entry not in approaches or r.exit not in approaches):
                raise ConfigError(f"{self.path}: record {r.id}: approaches {r.entry!r} / {r.exit!r} not all in {sorted(approaches)}")


def load_truth(path: str | Path) -> LabelledRecording:
    """Load and validate a truth file and its site; ConfigError naming the file and the problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"truth file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        truth = TruthFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise ConfigError(f"{path}: {problems}") from None
    recording = LabelledRecording(path, truth, load_site(path.parent / truth.site))
    recording.check_against_site()
    return recording
