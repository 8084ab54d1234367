"""Builds, pinned, the local Kubernetes control plane the tests start, and finds it again.

What it builds, each from the Go module proxy with the local Go (``GOTOOLCHAIN=local``,
``CGO_ENABLED=0``), into ``${XDG_CACHE_HOME:-~/.cache}/traffic-pipeline/k8s`` (or
``TRAFFIC_K8S_DIR``), outside the repository so that a fresh clone and CI reuse it:

  bin/etcd                       go.etcd.io/etcd/server/v3
  bin/kube-apiserver             k8s.io/kubernetes cmd/kube-apiserver
  bin/kube-controller-manager    k8s.io/kubernetes cmd/kube-controller-manager
  bin/keda, bin/keda-adapter     github.com/kedacore/keda/v2 cmd/operator, cmd/adapter
  bin/helm                       helm.sh/helm/v3 cmd/helm
  crds/keda/*.yaml               the CRDs of the KEDA module that was built
  src/<component>/go.mod         the scratch module each was built from

Each component is built from a scratch module that requires the upstream module at its
pinned version. A requiring module ignores the upstream's ``replace`` lines, so they are
carried over here: Kubernetes' ``./staging/src/k8s.io/X`` paths become ``k8s.io/X`` at the
published staging version; KEDA's module-to-module replaces are copied as they are.

Idempotent: a component whose stamp (a JSON of everything that went into it) matches and
whose binaries exist is only checked. ``nice`` keeps a cold build (about 10 minutes of two
cores, about 6 GB of Go build cache) from starving the rest of the machine.

    python deploy/tools/k8s_stack.py build [--only etcd,kubernetes,keda,helm]
    python deploy/tools/k8s_stack.py status
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tools_cache import cache_dir, read_env_file  # deploy/tools/ is this script's folder

REPO_ROOT = Path(__file__).resolve().parents[2]
PINS_FILE = REPO_ROOT / "deploy" / "tools" / "k8s-stack.env"
TOOLS_PINS_FILE = REPO_ROOT / "deploy" / "tools" / "versions.env"
BUILD_HINT = "run `python deploy/tools/k8s_stack.py build` (deploy/local/setup.sh does)"
# Bumped when the recipe below changes in a way the pins do not show.
RECIPE = 1


def pins() -> dict[str, str]:
    """The control plane's pins plus KEDA's (shared with the CRDs tests/deploy validates)."""
    values = read_env_file(PINS_FILE)
    tools = read_env_file(TOOLS_PINS_FILE)
    values["KEDA_MODULE"] = tools["KEDA_MODULE"]
    values["KEDA_VERSION"] = tools["KEDA_VERSION"]
    return values


def default_cache_dir() -> Path:
    return cache_dir("TRAFFIC_K8S_DIR", "k8s")


class BuildError(RuntimeError):
    """A step of the build failed; the message says which and why."""


def _log(message: str) -> None:
    print(f"[k8s-stack] {message}", file=sys.stderr, flush=True)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOFLAGS", "-buildvcs=false")
    return env


def _go(args: list[str], cwd: Path, *, nice: bool = False, capture: bool = False) -> str:
    cmd = (["nice", "-n", "10"] if nice and shutil.which("nice") else []) + ["go", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=_go_env(), text=True,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        detail = (proc.stderr or "")[-4000:] if capture else "(see the output above)"
        raise BuildError(f"`go {' '.join(args)}` in {cwd} failed with {proc.returncode}: {detail}")
    return proc.stdout or ""


def _module_info(module: str, version: str, cwd: Path) -> dict:
    """`go list -m -json` of an upstream module: fetches only its .info and .mod."""
    return json.loads(_go(["list", "-m", "-json", f"{module}@{version}"], cwd, capture=True))


def _upstream_replaces(gomod: Path, cwd: Path) -> list[dict]:
    """The Replace entries of a go.mod, as `go mod edit -json` parses them."""
    data = json.loads(_go(["mod", "edit", "-json", str(gomod)], cwd, capture=True))
    return data.get("Replace") or []


@dataclass(frozen=True)
class Component:
    """One upstream module and the binaries built from it."""

    name: str
    module: str
    version: str
    binaries: dict[str, str]  # binary name -> package path
    ldflags: list[str] = field(default_factory=list)
    # Maps the upstream go.mod's replace entries to the lines of the scratch module.
    replaces: Callable[[list[dict]], list[str]] = lambda _: []
    # Extra ldflags computed from the resolved scratch module (e.g. its client-go version).
    late_ldflags: Callable[[Path], list[str]] = lambda _: []
    # Files copied out of the module after the build: (glob inside the module, cache subdir).
    copies: tuple[tuple[str, str], ...] = ()


def _kubernetes_replaces(staging_version: str) -> Callable[[list[dict]], list[str]]:
    def mapping(entries: list[dict]) -> list[str]:
        lines = []
        for entry in entries:
            old, new = entry["Old"]["Path"], entry["New"]["Path"]
            if not new.startswith("./staging/src/"):
                raise BuildError(f"k8s.io/kubernetes replaces {old} with {new}: not a staging module, "
                                 "update deploy/tools/k8s_stack.py")
            lines.append(f"{old} => {old} {staging_version}")
        if not lines:
            raise BuildError("k8s.io/kubernetes' go.mod has no staging replaces: recipe out of date")
        return lines
    return mapping


def _copy_module_replaces(entries: list[dict]) -> list[str]:
    """Module-to-module replaces are copied; local-path ones cannot apply outside the repo."""
    lines = []
    for entry in entries:
        new = entry["New"]
        if not new.get("Version"):
            continue
        old = entry["Old"]
        left = old["Path"] + (f" {old['Version']}" if old.get("Version") else "")
        lines.append(f"{left} => {new['Path']} {new['Version']}")
    return lines


def _helm_k8s_ldflags(scratch: Path) -> list[str]:
    """Helm's Makefile sets the Kubernetes version lint and templates assume from client-go."""
    info = json.loads(_go(["list", "-m", "-json", "k8s.io/client-go"], scratch, capture=True))
    major, minor = info["Version"].lstrip("v").split(".")[:2]
    k8s_major, k8s_minor = str(int(major) + 1), minor
    return [f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor={k8s_major}",
            f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={k8s_minor}",
            f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={k8s_major}",
            f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={k8s_minor}"]


def components(p: dict[str, str] | None = None) -> dict[str, Component]:
    p = p or pins()
    kube = p["KUBERNETES_VERSION"]
    kube_major, kube_minor = kube.lstrip("v").split(".")[:2]
    kv = "k8s.io/component-base/version"
    return {
        "etcd": Component(
            name="etcd", module=p["ETCD_MODULE"], version=p["ETCD_VERSION"],
            binaries={"etcd": p["ETCD_MODULE"]}),
        "helm": Component(
            name="helm", module=p["HELM_MODULE"], version=p["HELM_VERSION"],
            binaries={"helm": f"{p['HELM_MODULE']}/cmd/helm"},
            ldflags=[f"-X helm.sh/helm/v3/internal/version.version={p['HELM_VERSION']}",
                     "-X helm.sh/helm/v3/internal/version.metadata=",
                     "-X helm.sh/helm/v3/internal/version.gitTreeState=clean"],
            replaces=_copy_module_replaces, late_ldflags=_helm_k8s_ldflags),
        "kubernetes": Component(
            name="kubernetes", module=p["KUBERNETES_MODULE"], version=kube,
            binaries={"kube-apiserver": f"{p['KUBERNETES_MODULE']}/cmd/kube-apiserver",
                      "kube-controller-manager": f"{p['KUBERNETES_MODULE']}/cmd/kube-controller-manager"},
            ldflags=[f"-X {kv}.gitVersion={kube}", f"-X {kv}.gitMajor={kube_major}",
                     f"-X {kv}.gitMinor={kube_minor}", f"-X {kv}.gitTreeState=clean",
                     f"-X {kv}.buildDate=1970-01-01T00:00:00Z"],
            replaces=_kubernetes_replaces(p["KUBERNETES_STAGING_VERSION"])),
        "keda": Component(
            name="keda", module=p["KEDA_MODULE"], version=p["KEDA_VERSION"],
            binaries={"keda": f"{p['KEDA_MODULE']}/cmd/operator",
                      "keda-adapter": f"{p['KEDA_MODULE']}/cmd/adapter"},
            ldflags=[f"-X {p['KEDA_MODULE']}/version.Version={p['KEDA_VERSION']}"],
            replaces=_copy_module_replaces,
            copies=(("config/crd/bases/*.yaml", "crds/keda"),)),
    }


def _go_version() -> str:
    return subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True,
                          env=_go_env(), check=True).stdout.strip()


def _stamp_of(comp: Component, replace_lines: list[str]) -> dict:
    return {"recipe": RECIPE, "module": comp.module, "version": comp.version,
            "binaries": comp.binaries, "ldflags": comp.ldflags, "replaces": replace_lines,
            "go": _go_version()}


def _stamp_path(cache: Path, name: str) -> Path:
    return cache / "stamps" / f"{name}.json"


def is_built(cache: Path, comp: Component) -> bool:
    stamp = _stamp_path(cache, comp.name)
    if not stamp.is_file():
        return False
    recorded = json.loads(stamp.read_text())
    wanted = {"recipe": RECIPE, "module": comp.module, "version": comp.version,
              "binaries": comp.binaries, "ldflags": comp.ldflags}
    if any(recorded.get(k) != v for k, v in wanted.items()):
        return False
    return all(os.access(cache / "bin" / b, os.X_OK) for b in comp.binaries)


def _exec_name(pkg: str) -> str:
    """The file name `go build -o DIR/` gives a command: its last path element, or the one before
    a major-version suffix (go.etcd.io/etcd/server/v3 -> server)."""
    parts = pkg.split("/")
    if len(parts) > 1 and re.fullmatch(r"v[0-9]+", parts[-1]):
        return parts[-2]
    return parts[-1]


def build_component(cache: Path, comp: Component) -> float:
    """Builds one component from a scratch module; returns the seconds it took."""
    started = time.monotonic()
    scratch = cache / "src" / comp.name
    scratch.mkdir(parents=True, exist_ok=True)
    go_version = _go_version().removeprefix("go")
    info = _module_info(comp.module, comp.version, scratch if (scratch / "go.mod").exists() else cache)
    replace_lines = comp.replaces(_upstream_replaces(Path(info["GoMod"]), cache))
    imports = "\n".join(f'\t_ "{pkg}"' for pkg in comp.binaries.values())
    gomod = [f"module local.traffic-pipeline/k8s-stack/{comp.name}", "",
             f"go {go_version}", "", f"require {comp.module} {comp.version}", ""]
    if replace_lines:
        gomod += ["replace (", *[f"\t{line}" for line in replace_lines], ")", ""]
    (scratch / "go.mod").write_text("\n".join(gomod))
    (scratch / "go.sum").unlink(missing_ok=True)
    # tools.go: the usual way to make a module depend on commands (main packages).
    (scratch / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
    _log(f"{comp.name} {comp.version}: resolving modules (go mod tidy)")
    _go(["mod", "tidy"], scratch)
    ldflags = ["-s", "-w", *comp.ldflags, *comp.late_ldflags(scratch)]
    tmp_bin = scratch / "bin"
    shutil.rmtree(tmp_bin, ignore_errors=True)
    tmp_bin.mkdir()
    _log(f"{comp.name} {comp.version}: go build {' '.join(comp.binaries)} (nice; minutes on 2 cores)")
    # One invocation for all of a component's commands: their shared packages compile once and
    # one binary links while the other's packages still compile. `-o DIR/` names each binary
    # after its package's last path element.
    _go(["build", "-trimpath", "-ldflags", " ".join(ldflags), "-o", str(tmp_bin) + "/", *comp.binaries.values()],
        scratch, nice=True)
    (cache / "bin").mkdir(parents=True, exist_ok=True)
    for binary, pkg in comp.binaries.items():
        os.replace(tmp_bin / _exec_name(pkg), cache / "bin" / binary)
    if comp.copies:
        mod_dir = Path(json.loads(_go(["list", "-m", "-json", comp.module], scratch, capture=True))["Dir"])
        for pattern, dest in comp.copies:
            target = cache / dest
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            found = sorted(mod_dir.glob(pattern))
            if not found:
                raise BuildError(f"{comp.module}@{comp.version} has no {pattern}")
            for path in found:
                shutil.copyfile(path, target / path.name)
    stamp = _stamp_path(cache, comp.name)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(_stamp_of(comp, replace_lines), indent=2) + "\n")
    return time.monotonic() - started


def build(cache: Path | None = None, only: list[str] | None = None) -> None:
    cache = cache or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if not shutil.which("go"):
        raise BuildError("`go` is not on PATH (these machines have go1.26.8)")
    comps = components()
    unknown = set(only or []) - set(comps)
    if unknown:
        raise BuildError(f"unknown components {sorted(unknown)}; known: {sorted(comps)}")
    for name, comp in comps.items():
        if only and name not in only:
            continue
        if is_built(cache, comp):
            _log(f"{name} {comp.version}: already built")
            continue
        seconds = build_component(cache, comp)
        sizes = ", ".join(f"{b} {(cache / 'bin' / b).stat().st_size / 2**20:.0f} MiB" for b in comp.binaries)
        _log(f"{name} {comp.version}: built in {seconds:.0f} s ({sizes})")
    _log(f"done: {cache}/bin")


@dataclass(frozen=True)
class Stack:
    """Paths of a built control plane."""

    root: Path
    pins: dict[str, str]

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    @property
    def keda_crds(self) -> list[Path]:
        return sorted((self.root / "crds" / "keda").glob("*.yaml"))


def locate(cache: Path | None = None, need: list[str] | None = None) -> tuple[Stack | None, str]:
    """Returns (stack, "") when the components in `need` (default: all) are built at the pins."""
    cache = cache or default_cache_dir()
    p = pins()
    comps = components(p)
    missing = [n for n in (need or list(comps)) if not is_built(cache, comps[n])]
    if missing:
        return None, (f"Kubernetes stack components {', '.join(missing)} are not built at the pinned "
                      f"versions in {cache} ({BUILD_HINT})")
    return Stack(root=cache, pins=p), ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build what is missing (idempotent)")
    b.add_argument("--only", default="", help="comma-separated components (etcd,kubernetes,keda,helm)")
    sub.add_parser("status", help="say what is built")
    args = parser.parse_args(argv)
    cache = default_cache_dir()
    if args.command == "build":
        try:
            build(cache, [x for x in args.only.split(",") if x] or None)
        except BuildError as exc:
            _log(f"ERROR: {exc}")
            return 1
        return 0
    for name, comp in components().items():
        state = "built" if is_built(cache, comp) else "missing"
        print(f"{name:12} {comp.version:10} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
