"""Activity gating through the whole chain, with a worker killed half-way: the offline counts, exactly.

The unchanged-frame decision is made by the camera's single ingester in seq order and the
detections are substituted by the aggregator's per-camera counter in seq order, so nothing
depends on which worker handled which frame. Here a worker is killed with ``kill -9`` while the
synthetic recording (test_count_synthetic.py: a car, 12 s of empty road, a car) streams through
ingest -> Kafka -> workers -> Kafka -> aggregator; the final counts must equal ``traffic count``'s
with the same gate, and the pipeline must have skipped the same frames.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from offline.count import count_video
from devkit.local_pipeline import PipelineConfig
from ingest.settings import IngestSettings
from tests.integration.offline.test_count_synthetic import eastbound, make_video, site_file, westbound
from traffic.site import load_site
from workers.detector import DetectorSettings

from .test_pipeline import _run, kill_worker_after


@pytest.mark.slow  # a real-time pipeline run with a worker restart; the default suite keeps the gated offline count (tests/integration/offline/test_count_activity.py)
def test_gated_stream_with_a_killed_worker_gives_the_offline_counts(kafka_bootstrap: str, shared: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    video = make_video(shared / "videos" / "intersection.mp4", tmp_path / "synthetic.mp4",
                       [eastbound(0, 40), westbound(160, 40)], total_frames=200, fps=10)  # fmt: skip
    site_path = site_file(tmp_path / "site.yaml", video, fps=10, track_timeout_s=2.0)
    site = load_site(site_path)
    monkeypatch.setenv("TRAFFIC_AGGREGATOR_SITE_CONFIG", str(site_path))  # the aggregator's own setting (LocalPipeline sets TRAFFIC_SITE_CONFIG)
    model = shared / "models" / "yolo11n_int8_openvino_model"
    offline = count_video(video, site, "cam-synth", DetectorSettings(model=str(model), classes=tuple(site.counting.classes)),
                          activity=IngestSettings().activity_rule())  # fmt: skip
    expected: Counter[tuple[str, str, str, str]] = Counter()
    for c in offline.crossings:
        key = ("line", c.line, c.direction, c.vehicle_class) if c.kind == "line" else ("movement", c.approach, c.movement, c.vehicle_class)
        expected[key] += 1  # type: ignore[index]
    assert sum(expected.values()) == 4 and offline.reused >= 100

    cfg = PipelineConfig(bootstrap=kafka_bootstrap, site=site_path, camera="cam-synth", source=str(video), model=str(model),
                         out_dir=tmp_path / "run", workers=1)  # fmt: skip
    result = _run(cfg, disturb=kill_worker_after(100))
    assert +Counter(result["final"]) == +expected
    events = {e.frame_key: e for e in result["events"] if not e.end_of_session}
    assert len(events) == 200, "a frame has no detection event after the crash"
    assert sum(e.reused_from_seq is not None for e in events.values()) == offline.reused  # the same frames skipped the model
