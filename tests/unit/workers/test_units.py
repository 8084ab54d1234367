"""Worker pure logic: JPEG validation, device selection, settings; the CUDA path where CUDA exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from traffic.errors import BadInput, ConfigError
from traffic.settings import load_settings
from workers.decode import decode_jpeg
from workers.detector import resolve_device
from workers.settings import WorkerSettings

_, _JPEG = cv2.imencode(".jpg", np.full((48, 64, 3), 127, np.uint8))
JPEG = _JPEG.tobytes()


def test_decode_gives_bgr_array() -> None:
    assert decode_jpeg(JPEG).shape == (48, 64, 3)


@pytest.mark.parametrize(
    "data",
    [
        b"",  # empty value
        b"GIF89a....",  # another format
        JPEG[: len(JPEG) // 2],  # truncated transfer
        b"\xff\xd8" + b"\x00" * 50 + b"\xff\xd9",  # markers but no image
    ],
)
def test_bad_jpegs_are_bad_input(data: bytes) -> None:
    with pytest.raises(BadInput):
        decode_jpeg(data)


def test_cuda_without_cuda_is_a_config_error() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: nothing to refuse")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize(("device", "ok"), [("cpu", True), ("cuda:1", True), ("CUDA", True), ("gpu", False), ("cuda:x", False)])
def test_device_setting_form(monkeypatch: pytest.MonkeyPatch, device: str, ok: bool) -> None:
    monkeypatch.setenv("TRAFFIC_WORKER_DEVICE", device)
    if ok:
        assert load_settings(WorkerSettings).device == device.lower()
    else:
        with pytest.raises(ConfigError, match="TRAFFIC_WORKER_DEVICE"):
            load_settings(WorkerSettings)


def test_class_list_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAFFIC_WORKER_CLASSES", " car, bus ,truck")
    assert load_settings(WorkerSettings).class_names() == ("car", "bus", "truck")


@pytest.fixture
def cuda_detector(shared: Path) -> Any:
    """A detector on cuda:0 with FP16 batches of 8; skips (with the reason) without CUDA or a PyTorch model."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine (no GPU): the CUDA batch path cannot run here")
    from workers.detector import Detector, DetectorSettings

    model = next(iter(sorted(shared.glob("models/*.pt"))), None)
    if model is None:
        pytest.skip("no PyTorch (.pt) model in shared/models: the CUDA path needs a PyTorch model, the shared one is OpenVINO INT8")
    return Detector(DetectorSettings(model=str(model), device="cuda:0", half=True, batch_size=8))


def _bus() -> np.ndarray:
    import ultralytics

    return cv2.imread(str(Path(ultralytics.__file__).parent / "assets" / "bus.jpg"))


@pytest.mark.gpu
def test_half_precision_batches_on_cuda(cuda_detector: Any) -> None:
    """The GPU path: device cuda:0, FP16, a batch of 8. Needs a CUDA machine and a .pt model."""
    assert cuda_detector.half and cuda_detector.device == "cuda:0"
    found = cuda_detector.detect([_bus()] * 8)
    assert len(found) == 8 and all(any(d.label == "bus" for d in frame) for frame in found)


def test_streams_only_for_a_batch_1_openvino_export_on_the_cpu() -> None:
    """Where OpenVINO streams do not fit, the detector keeps Ultralytics' own path, and says why."""
    from types import SimpleNamespace

    from workers.streams import eligible

    def predictor(fmt: str = "openvino", batch: int = 1, dynamic: bool = False, task: str = "detect") -> SimpleNamespace:
        backend = SimpleNamespace(ov_compiled_model=object(), read_model=None, dynamic=dynamic, batch=batch)
        return SimpleNamespace(model=SimpleNamespace(format=fmt, backend=backend), args=SimpleNamespace(task=task))

    assert eligible(predictor(), "cpu") is None
    assert eligible(predictor(), "cuda:0") == "device cuda:0"
    assert eligible(predictor(fmt="pt"), "cpu") == "not an OpenVINO export"
    assert "static batch 8" in (eligible(predictor(batch=8), "cpu") or "")
    assert eligible(predictor(dynamic=True), "cpu") == "dynamic input shapes"
    assert eligible(predictor(task="segment"), "cpu") == "task segment"


def test_worker_settings_for_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAFFIC_WORKER_STREAMS", "2")
    monkeypatch.setenv("TRAFFIC_WORKER_PIPELINE_BATCHES", "4")
    settings = load_settings(WorkerSettings)
    assert (settings.streams, settings.pipeline_batches) == (2, 4)
    monkeypatch.setenv("TRAFFIC_WORKER_PIPELINE_BATCHES", "0")
    with pytest.raises(ConfigError, match="TRAFFIC_WORKER_PIPELINE_BATCHES"):
        load_settings(WorkerSettings)


@pytest.mark.gpu
def test_cuda_runs_ultralytics_batches_with_stage_times(cuda_detector: Any) -> None:
    """On CUDA the worker's engine is Ultralytics' (FP16, one call per batch), with per-stage times for its metrics."""
    assert (cuda_detector.engine, cuda_detector.parallelism) == ("ultralytics", 1)
    found, times = cuda_detector.detect_timed([_bus()] * 8)
    assert len(found) == 8 and times.inference > 0 and times.preprocess > 0
