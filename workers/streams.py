"""Several OpenVINO inference requests on one model, so frames overlap on a CPU.

Why: Ultralytics 8.4 compiles OpenVINO models with ``PERFORMANCE_HINT=LATENCY`` and runs one
synchronous request at a time (it disabled ``AsyncInferQueue``, which could hang on dynamic INT8
batches: ultralytics#25923). One request spreads a small model over every core, and the cores
wait while Python letterboxes the next frame and runs NMS on the last one. Compiled with
``THROUGHPUT`` instead, OpenVINO makes one *stream* per core group; each calling thread gets its
own ``InferRequest`` (plain synchronous ``infer()``, which releases the GIL), so one frame's
pre/post-processing runs while another frame is in the model. No ``AsyncInferQueue``.

Same numbers: the pre- and post-processing are Ultralytics' own functions (``preprocess``,
``non_max_suppression``, ``construct_result``, set up by a normal ``predict`` call first) and the
IR file is the same, so a frame gives the detections Ultralytics' ``predict`` gives
(``tests/integration/workers/test_worker.py::test_streams_give_ultralytics_detections`` checks this).

Only for what it fits: an OpenVINO export on the CPU with a static batch of 1 and no dynamic
shapes; :func:`eligible` says why not otherwise, and the detector keeps Ultralytics' own path.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class StageTimes:
    """Seconds spent per stage over some frames (thread time, so overlapped stages can sum above the wall time)."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0

    def add(self, other: "StageTimes") -> None:
        self.preprocess += other.preprocess
        self.inference += other.inference
        self.postprocess += other.postprocess

    @property
    def total(self) -> float:
        return self.preprocess + self.inference + self.postprocess


def eligible(predictor: Any, device: str) -> str | None:
    """None when the streams fit this model, else the reason they do not (logged by the detector)."""
    backend = getattr(getattr(predictor, "model", None), "backend", None)
    if device != "cpu":
        return f"device {device}"
    if getattr(predictor.model, "format", None) != "openvino" or not hasattr(backend, "ov_compiled_model"):
        return "not an OpenVINO export"
    if getattr(backend, "read_model", None) is not None or getattr(backend, "dynamic", False):
        return "dynamic input shapes"
    if int(getattr(backend, "batch", 1)) != 1:
        return f"static batch {backend.batch} (streams run one frame per request)"
    if predictor.args.task != "detect":
        return f"task {predictor.args.task}"
    return None


class OpenVinoStreams:
    """One THROUGHPUT-compiled model, one request per thread; ``run`` is thread-safe.

    Args:
        predictor: the Ultralytics predictor after one ``predict`` call with the detector's arguments
            (conf, iou, classes, imgsz), whose pre/post-processing is reused.
        xml: the IR file of the export.
        streams: OpenVINO ``NUM_STREAMS``; 0 lets OpenVINO's THROUGHPUT hint choose for this CPU.
    """

    def __init__(self, predictor: Any, xml: Path, streams: int = 0) -> None:
        import openvino as ov

        config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT"}
        if streams > 0:
            config["NUM_STREAMS"] = streams
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(xml), str(xml.with_suffix(".bin"))), "CPU", config)
        self.size = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self._outputs = len(self.compiled.outputs)
        self._predictor = predictor
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def run(self, frame: np.ndarray) -> tuple[Any, StageTimes]:
        """One BGR frame -> (Ultralytics ``Results`` of it, stage times); on the calling thread's own request."""
        import torch
        from ultralytics.utils import nms

        p = self._predictor
        started = time.perf_counter()
        im = p.preprocess([frame])  # letterbox, BGR->RGB, /255: Ultralytics' own
        loaded = time.perf_counter()
        request = self._request()
        request.infer({0: im.cpu().numpy().astype(np.float32, copy=False)})
        # copy: the request reuses its output buffer for the next frame
        outputs = [torch.from_numpy(request.get_output_tensor(i).data.copy()) for i in range(self._outputs)]
        inferred = time.perf_counter()
        preds = outputs[0] if len(outputs) == 1 else outputs
        args = p.args
        kept = nms.non_max_suppression(
            preds, args.conf, args.iou, args.classes, args.agnostic_nms, max_det=args.max_det, nc=0,
            end2end=getattr(p.model, "end2end", False), rotated=False,
        )  # fmt: skip  # DetectionPredictor.postprocess, minus the batch bookkeeping
        result = p.construct_result(kept[0], im, frame, "")
        return result, StageTimes(loaded - started, inferred - loaded, time.perf_counter() - inferred)

    def map(self, frames: list[np.ndarray]) -> list[tuple[Any, StageTimes]]:
        """Run several frames over the streams at once; results in input order."""
        if len(frames) <= 1 or self.size == 1:
            return [self.run(f) for f in frames]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.size, thread_name_prefix="ov-stream")
        return list(self._pool.map(self.run, frames))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
