"""Worker pure logic: JPEG validation, device selection, settings; the CUDA path where CUDA exists."""

from __future__ import annotations

from pathlib import Path

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


@pytest.mark.gpu
def test_half_precision_batches_on_cuda(shared: Path) -> None:
    """The GPU path: device cuda:0, FP16, a batch of 8. Needs a CUDA machine and a .pt model."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine (no GPU): the FP16 batch path cannot run here")
    import ultralytics

    from workers.detector import Detector, DetectorSettings

    model = next(iter(sorted(shared.glob("models/*.pt"))), None)
    if model is None:
        pytest.skip("no PyTorch (.pt) model in shared/models: FP16 needs a PyTorch model, the shared one is OpenVINO INT8")
    detector = Detector(DetectorSettings(model=str(model), device="cuda:0", half=True, batch_size=8))
    assert detector.half and detector.device == "cuda:0"
    bus = cv2.imread(str(Path(ultralytics.__file__).parent / "assets" / "bus.jpg"))
    found = detector.detect([bus] * 8)
    assert len(found) == 8 and all(any(d.label == "bus" for d in frame) for frame in found)
