"""URL masking, source kinds, settings parsing, camera planning and the encoder's sizes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ingest.encoder import JpegEncoder, target_size
from ingest.service import plan_cameras
from ingest.settings import IngestSettings
from ingest.sources import describe_source, file_path, is_live
from traffic.errors import BadInput, ConfigError
from traffic.site import parse_site


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # user and password: the password is masked, the user kept for debugging
        ("rtsp://admin:hunter22@10.0.0.12:554/stream1", "rtsp://admin:***@10.0.0.12:554/stream1"),
        # percent-encoded password with special characters
        ("rtsp://viewer:p%40ss%3Aw0rd@cam.local/live", "rtsp://viewer:***@cam.local/live"),
        # empty password
        ("rtsp://viewer:@cam.local/live", "rtsp://viewer:***@cam.local/live"),
        # tokens in a query string are dropped entirely
        ("http://cam.local/video.mjpg?token=abcdef123456", "http://cam.local/video.mjpg"),
        # credentials and query both
        ("https://u:pw123456@cam/x.mjpg?auth=zzz", "https://u:***@cam/x.mjpg"),
        # no credentials: unchanged
        ("rtsp://10.0.0.12/stream1", "rtsp://10.0.0.12/stream1"),
        # a file path is not a URL and has nothing to hide
        ("/data/videos/a.mp4", "/data/videos/a.mp4"),
    ],
)
def test_describe_source_masks_secrets(url: str, expected: str) -> None:
    assert describe_source(url) == expected


@pytest.mark.parametrize(
    ("url", "live"),
    [
        ("rtsp://cam/x", True),  # RTSP camera
        ("RTSP://cam/x", True),  # scheme case does not matter
        ("http://cam/video.mjpg", True),  # HTTP-MJPEG
        ("file:///data/a.mp4", False),  # file URL
        ("videos/a.mp4", False),  # relative path
        ("C:/videos/a.mp4", False),  # a Windows drive letter is not a scheme we stream
    ],
)
def test_is_live(url: str, live: bool) -> None:
    assert is_live(url) is live


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("file:///data/a.mp4", Path("/data/a.mp4")),  # absolute file URL
        ("file://localhost/data/a.mp4", Path("/data/a.mp4")),  # localhost host
        ("videos/a.mp4", Path("videos/a.mp4")),  # plain relative path
    ],
)
def test_file_path(url: str, path: Path) -> None:
    assert file_path(url) == path


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ("", {}),  # nothing overridden
        ("cam-1=rtsp://u:p@h/x", {"cam-1": "rtsp://u:p@h/x"}),  # one pair
        (" cam-1 = rtsp://h/x , cam-2=http://h/y?a=b ", {"cam-1": "rtsp://h/x", "cam-2": "http://h/y?a=b"}),  # spaces, '=' in the query
    ],
)
def test_source_overrides(sources: str, expected: dict[str, str]) -> None:
    assert IngestSettings(sources=sources).source_overrides() == expected


def test_bad_override_does_not_echo_the_url() -> None:
    with pytest.raises(ConfigError) as info:
        IngestSettings(sources="rtsp://u:topsecret@h/x").source_overrides()
    assert "topsecret" not in str(info.value)


def _site() -> object:
    return parse_site(
        {
            "intersections": [
                {"id": "i1", "cameras": [{"id": "a", "source": "a.mp4", "fps": 5}, {"id": "b", "source": "rtsp://h/b"}]}
            ]
        }
    )


@pytest.mark.parametrize(
    ("cameras", "sources", "expected"),
    [
        # default: every camera of the site, sources from the file
        ("", "", [("a", "a.mp4"), ("b", "rtsp://h/b")]),
        # a subset
        ("b", "", [("b", "rtsp://h/b")]),
        # an override replaces the source of one camera only
        ("", "b=rtsp://u:p@other/b", [("a", "a.mp4"), ("b", "rtsp://u:p@other/b")]),
    ],
)
def test_plan_cameras(cameras: str, sources: str, expected: list[tuple[str, str]]) -> None:
    plans = plan_cameras(_site(), IngestSettings(cameras=cameras, sources=sources))  # type: ignore[arg-type]
    assert [(p.camera, p.url) for p in plans] == expected
    assert all(p.intersection == "i1" for p in plans)


@pytest.mark.parametrize(
    ("cameras", "sources"),
    [
        ("zzz", ""),  # unknown camera in the subset
        ("", "zzz=rtsp://h/x"),  # override for an unknown camera
    ],
)
def test_plan_cameras_rejects_unknown_ids(cameras: str, sources: str) -> None:
    with pytest.raises(ConfigError, match="zzz"):
        plan_cameras(_site(), IngestSettings(cameras=cameras, sources=sources))  # type: ignore[arg-type]


def test_backoff_max_below_initial_is_a_config_error() -> None:
    from traffic.settings import load_settings

    with pytest.raises(ConfigError, match="BACKOFF_MAX_S"):
        load_settings(IngestSettings, backoff_initial_s=5, backoff_max_s=1)


@pytest.mark.parametrize(
    ("size", "max_width", "expected"),
    [
        ((1920, 1080), 640, (640, 360)),  # 1080p to 640 wide keeps 16:9
        ((640, 480), 640, (640, 480)),  # already at the limit: untouched
        ((320, 240), 640, (320, 240)),  # never enlarged
        ((1920, 1080), 0, (1920, 1080)),  # 0 = never resize
        ((1000, 1), 10, (10, 1)),  # a degenerate strip keeps at least one row
    ],
)
def test_target_size(size: tuple[int, int], max_width: int, expected: tuple[int, int]) -> None:
    assert target_size(*size, max_width) == expected


def test_encoder_output_decodes_to_the_target_size() -> None:
    image = np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    encoded = JpegEncoder(640, 80).encode(image)
    decoded = cv2.imdecode(np.frombuffer(encoded.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (360, 640, 3) and (encoded.width, encoded.height) == (640, 360)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((0, 10, 3), np.uint8),  # no rows
        np.zeros((10, 10), np.uint8),  # grey, not BGR
    ],
)
def test_encoder_refuses_bad_images(image: np.ndarray) -> None:
    with pytest.raises(BadInput):
        JpegEncoder(640, 80).encode(image)
