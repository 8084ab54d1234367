"""Policy checks on rendered workloads: what a schema cannot say.

Every pod that the manifests create must meet the Kubernetes Pod Security
"restricted" profile, run with a read-only root filesystem, declare requests
and limits, use a pinned image, and (for long-running workloads) have liveness
and readiness probes; every workload carries the app.kubernetes.io labels.

``check_object(obj)`` returns the violations of one rendered object; an empty
list means it passes. The tests run it on every rendered overlay and on
deliberately bad manifests, so each rule is seen to fail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterator

REQUIRED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
)

# Kinds whose pods run until stopped: they need liveness and readiness probes.
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
POD_TEMPLATE_KINDS = LONG_RUNNING_KINDS | {"Job", "CronJob", "Pod"}

_QUANTITY = re.compile(r"^(?P<num>[+-]?(\d+(\.\d*)?|\.\d+))(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_SUFFIX = {
    None: Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}


def parse_quantity(value: Any) -> Decimal | None:
    """Kubernetes resource quantity ("500m", "1Gi", 2) -> Decimal, or None if malformed."""
    m = _QUANTITY.match(str(value).strip())
    if not m:
        return None
    suffix = m.group("suffix")
    if suffix and suffix[0] in "eE" and len(suffix) > 1:
        return Decimal(m.group("num")) * Decimal(10) ** int(suffix[1:])
    return Decimal(m.group("num")) * _SUFFIX[suffix]


@dataclass(frozen=True)
class Violation:
    rule: str
    obj: str
    container: str
    message: str

    def __str__(self) -> str:
        where = f"{self.obj} container {self.container}" if self.container else self.obj
        return f"[{self.rule}] {where}: {self.message}"


def pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template (metadata + spec) of a workload, or None for other kinds."""
    kind = obj.get("kind")
    if kind not in POD_TEMPLATE_KINDS:
        return None
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return {"metadata": obj.get("metadata") or {}, "spec": spec}
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return spec.get("template") or {}


def _containers(pod_spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod_spec.get(field) or []:
            yield field, c


def check_object(obj: dict[str, Any]) -> list[Violation]:
    """All policy violations of one rendered object (none for non-workloads)."""
    template = pod_template(obj)
    if template is None:
        return []
    kind = obj["kind"]
    name = f"{kind}/{(obj.get('metadata') or {}).get('name')}"
    out: list[Violation] = []

    def fail(rule: str, message: str, container: str = "") -> None:
        out.append(Violation(rule, name, container, message))

    for where, labels in (("metadata", (obj.get("metadata") or {}).get("labels") or {}),
                          ("pod template", (template.get("metadata") or {}).get("labels") or {})):
        missing = [label for label in REQUIRED_LABELS if not labels.get(label)]
        if missing:
            fail("labels", f"{where} lacks {', '.join(missing)}")

    pod = template.get("spec") or {}
    pod_sc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            fail("host-namespaces", f"{flag} is true")
    for vol in pod.get("volumes") or []:
        if "hostPath" in vol:
            fail("host-path", f"volume {vol.get('name')} is a hostPath")

    for field, c in _containers(pod):
        cname = c.get("name", "?")
        sc = c.get("securityContext") or {}

        def effective(key: str) -> Any:
            return sc[key] if key in sc else pod_sc.get(key)

        # --- identity
        run_as_user = effective("runAsUser")
        if effective("runAsNonRoot") is not True:
            fail("non-root", "runAsNonRoot is not true (pod or container securityContext)", cname)
        if run_as_user == 0:
            fail("non-root", "runAsUser is 0 (root)", cname)
        if effective("runAsGroup") == 0:
            fail("non-root", "runAsGroup is 0 (root group)", cname)
        seccomp = (effective("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail("seccomp", f"seccompProfile.type is {seccomp!r}, not RuntimeDefault", cname)
        # --- privileges
        if sc.get("privileged"):
            fail("privileged", "privileged is true", cname)
        if sc.get("allowPrivilegeEscalation") is not False:
            fail("privilege-escalation", "allowPrivilegeEscalation is not false", cname)
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            fail("capabilities", "capabilities.drop does not contain ALL", cname)
        added = [cap for cap in caps.get("add") or [] if cap != "NET_BIND_SERVICE"]
        if added:
            fail("capabilities", f"adds capabilities {added}", cname)
        # --- filesystem
        if sc.get("readOnlyRootFilesystem") is not True:
            fail("read-only-root", "readOnlyRootFilesystem is not true", cname)
        elif field != "ephemeralContainers":
            mounts = {m.get("mountPath") for m in c.get("volumeMounts") or [] if not m.get("readOnly")}
            if "/tmp" not in mounts:
                fail("read-only-root", "read-only root filesystem without a writable volume at /tmp", cname)
        # --- resources
        if field != "ephemeralContainers":
            resources = c.get("resources") or {}
            for section in ("requests", "limits"):
                values = resources.get(section) or {}
                for res in ("cpu", "memory"):
                    if res not in values:
                        fail(section, f"no {section}.{res}", cname)
                for res, value in values.items():
                    if parse_quantity(value) is None:
                        fail(section, f"{section}.{res} {value!r} is not a quantity", cname)
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            for res in set(requests) & set(limits):
                req, lim = parse_quantity(requests[res]), parse_quantity(limits[res])
                if req is not None and lim is not None and req > lim:
                    fail("limits", f"requests.{res} {requests[res]} exceeds limits.{res} {limits[res]}", cname)
        # --- image
        image = str(c.get("image") or "")
        last = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in last or last.endswith(":latest")):
            fail("image-tag", f"image {image!r} is not pinned to a version tag or digest", cname)
        # --- probes
        if kind in LONG_RUNNING_KINDS and field == "containers":
            for probe in ("livenessProbe", "readinessProbe"):
                if not c.get(probe):
                    fail("probes", f"no {probe}", cname)
    return out


def check_objects(objs: list[dict[str, Any]]) -> list[Violation]:
    return [v for obj in objs for v in check_object(obj)]
