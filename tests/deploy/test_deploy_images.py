"""deploy/images: the Dockerfiles pin their bases, run as non-root, copy only
what exists, and keep the camera's GStreamer out of the pipeline image.
(No Docker engine here: the files are checked, not built.) Also checks that
deploy/tools/install.sh is valid shell."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES = REPO_ROOT / "deploy" / "images"
DOCKERFILES = [IMAGES / "Dockerfile", IMAGES / "Dockerfile.cuda"]
GSTREAMER = re.compile(r"gstreamer|gst-rtsp|python3-gi\b")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, op: str) -> str | None:
        found = [arg for o, arg in self.instructions if o == op]
        return found[-1] if found else None


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "ARG" and not stages and "=" in rest:
            name, value = rest.split("=", 1)
            args[name.strip()] = value.strip()
        elif op == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            base = re.sub(r"\$\{(\w+)\}", lambda v: args.get(v.group(1), v.group(0)), m.group(1))
            stages.append(Stage(base, m.group(2) or str(len(stages))))
        elif stages:
            stages[-1].instructions.append((op, rest))
    return args, stages


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_pinned_by_version_tag(path):
    _, stages = parse_dockerfile(path)
    names = {s.name for s in stages}
    for stage in stages:
        if stage.base in names:
            continue  # FROM an earlier stage
        image, _, tag = stage.base.rpartition(":")
        assert image and re.search(r"\d+\.\d+", tag) and tag != "latest", f"{stage.name}: {stage.base} not pinned"
    # Digests could not be looked up offline; the file must say so.
    assert "digest" in path.read_text()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_and_non_root(path):
    _, stages = parse_dockerfile(path)
    assert len(stages) >= 2, "build dependencies stay in a builder stage"
    final = [s for s in stages if s.name in ("runtime", "camera")]
    assert {s.name for s in final} >= {"runtime"}
    for stage in final:
        user = stage.last("USER")
        assert user and re.match(r"^[1-9]\d*(:[1-9]\d*)?$", user), f"{stage.name}: USER {user!r} must be a non-root uid"
        # Kubernetes runAsUser 10001 is the same user.
        assert user.split(":")[0] == "10001"
    runtime = next(s for s in stages if s.name == "runtime")
    assert runtime.last("ENTRYPOINT") == '["traffic"]'
    copies = [arg for op, arg in runtime.instructions if op == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "the runtime image takes only the built venv"


def test_gstreamer_only_in_the_camera_stage():
    _, stages = parse_dockerfile(IMAGES / "Dockerfile")
    for stage in stages:
        uses = any(GSTREAMER.search(arg) for op, arg in stage.instructions if op == "RUN")
        assert uses == (stage.name == "camera"), stage.name
    _, cuda = parse_dockerfile(IMAGES / "Dockerfile.cuda")
    assert not any(GSTREAMER.search(arg) for s in cuda for op, arg in s.instructions if op == "RUN")


def test_camera_stage_has_what_the_simulated_camera_needs():
    """The packages deploy/rtsp/install-deps.sh installs for the script, minus debugging tools."""
    _, stages = parse_dockerfile(IMAGES / "Dockerfile")
    camera = next(s for s in stages if s.name == "camera")
    installed = " ".join(arg for op, arg in camera.instructions if op == "RUN")
    deps = (REPO_ROOT / "deploy/rtsp/install-deps.sh").read_text()
    wanted = re.findall(r"^\s+((?:python3-gi|gir1\.2-\S+|gstreamer1\.0-plugins-\S+))", deps, re.M)
    assert wanted, "could not read the package list of deploy/rtsp/install-deps.sh"
    for pkg in wanted:
        assert pkg in installed, f"camera stage lacks {pkg}"
    assert camera.last("CMD").startswith('["/usr/bin/python3", "deploy/rtsp/simulated_camera.py"')


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist(path):
    _, stages = parse_dockerfile(path)
    for stage in stages:
        for op, arg in stage.instructions:
            if op not in ("COPY", "ADD") or arg.startswith("--from"):
                continue
            *sources, _dest = arg.split()
            for src in sources:
                assert (REPO_ROOT / src).exists(), f"{path.name} {stage.name}: COPY {src} does not exist"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_keeps_the_context_small(path):
    ignore = Path(f"{path}.dockerignore")
    assert ignore.is_file(), f"BuildKit reads {ignore.name} next to the Dockerfile"
    rules = [r.strip() for r in ignore.read_text().splitlines() if r.strip() and not r.startswith("#")]
    for must in (".git", ".venv", "tests", "**/*.mp4"):
        assert must in rules, f"{ignore.name} should exclude {must}"
    # The camera target copies deploy/rtsp/: it must survive the filter.
    if "COPY deploy/rtsp/" in path.read_text():
        assert rules.index("!deploy/rtsp") > rules.index("deploy")


def test_cuda_image_reaches_the_gpu():
    text = (IMAGES / "Dockerfile.cuda").read_text()
    assert "NVIDIA_VISIBLE_DEVICES=all" in text and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text
    assert "TRAFFIC_WORKER_DEVICE=cuda:0" in text


def test_cpu_image_uses_cpu_torch_of_the_locked_version():
    text = (IMAGES / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text
    assert "grep -E '^(torch|torchvision)==' requirements/lock.txt" in text
    lock = (REPO_ROOT / "requirements/lock.txt").read_text()
    assert re.search(r"^torch==", lock, re.M) and re.search(r"^torchvision==", lock, re.M)


def test_install_script_is_valid_shell():
    script = REPO_ROOT / "deploy/tools/install.sh"
    assert script.stat().st_mode & 0o111, "install.sh must be executable"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
