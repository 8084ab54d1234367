"""Offline schema validation of rendered Kubernetes manifests.

Two kinds of schema, both installed by deploy/tools/install.sh:

* Built-in kinds (Deployment, Service, NetworkPolicy, ...): the Kubernetes
  OpenAPI definitions as strict JSON Schema (unknown fields are errors), one
  file per kind and API version, as shipped in the kubernetes-validate wheel.
* Custom resources (KEDA, Prometheus Operator, Strimzi): the
  ``openAPIV3Schema`` of each CRD, turned into JSON Schema the way the API
  server reads it, plus strictness the API server does not have: an unknown
  field is an error here (the API server would silently prune it, so a typo in
  a ScaledObject would just vanish), and ``metadata`` is checked against
  Kubernetes' ObjectMeta.

CEL rules (``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml
from referencing import Registry, Resource

K8S_DEFS_URI = "https://kubernetes.io/api/_definitions.json"
OBJECT_META_REF = f"{K8S_DEFS_URI}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def _schema_file_name(api_version: str, kind: str) -> str:
    """kubernetes-validate's file naming: apps/v1 Deployment -> deployment-apps-v1.json,
    networking.k8s.io/v1 NetworkPolicy -> networkpolicy-networking-v1.json, v1 Service -> service-v1.json."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    return f"{kind.lower()}-{group_version}.json"


def object_name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('name')}"


def _errors(validator: jsonschema.protocols.Validator, obj: dict[str, Any]) -> list[str]:
    messages = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        messages.append(f"{object_name(obj)}: {where}: {err.message[:400]}")
    return messages


class KubernetesSchemas:
    """Strict JSON schemas of one Kubernetes version's built-in kinds."""

    def __init__(self, schema_dir: Path):
        self.schema_dir = schema_dir
        if not (schema_dir / "_definitions.json").is_file():
            raise FileNotFoundError(f"no Kubernetes schemas in {schema_dir}")
        definitions = json.loads((schema_dir / "_definitions.json").read_text())
        self.registry: Registry = Resource.from_contents(definitions) @ Registry()
        self._validators: dict[str, jsonschema.protocols.Validator | None] = {}

    def validator_for(self, api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
        name = _schema_file_name(api_version, kind)
        if name not in self._validators:
            path = self.schema_dir / name
            if path.is_file():
                schema = json.loads(path.read_text())
                self._validators[name] = jsonschema.Draft202012Validator(schema, registry=self.registry)
            else:
                self._validators[name] = None
        return self._validators[name]


def _strict_crd_schema(node: Any) -> Any:
    """Turns a CRD's structural OpenAPI v3 schema into JSON Schema, recursively.

    * an object with ``properties`` and no ``additionalProperties`` rejects
      unknown fields, unless it says ``x-kubernetes-preserve-unknown-fields``;
    * ``nullable: true`` admits null;
    * ``x-kubernetes-int-or-string: true`` without a type admits integer or string.
    """
    if isinstance(node, list):
        return [_strict_crd_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict_crd_schema(v) for k, v in node.items()}
    if out.get("x-kubernetes-int-or-string") and "type" not in out and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@dataclass(frozen=True)
class CrdVersion:
    group: str
    version: str
    kind: str
    schema: dict[str, Any]


class _CrdLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML loader that reads a bare ``=`` (an enum value in some CRDs) as
    the string "=", not as YAML 1.1's obscure "value" tag."""


_CrdLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def load_crds(paths: Iterable[Path]) -> list[CrdVersion]:
    """Reads every served version of every CRD in the given YAML files."""
    found = []
    for path in paths:
        for doc in yaml.load_all(path.read_text(), Loader=_CrdLoader):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for v in spec["versions"]:
                if not v.get("served", True):
                    continue
                found.append(CrdVersion(spec["group"], v["name"], spec["names"]["kind"],
                                        v["schema"]["openAPIV3Schema"]))
    return found


class CrdSchemas:
    """JSON schemas for custom resources, from CRD files."""

    def __init__(self, crds: Iterable[CrdVersion], kubernetes: KubernetesSchemas):
        self._validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
        for crd in crds:
            schema = _strict_crd_schema(copy.deepcopy(crd.schema))
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"type": "string", "enum": [f"{crd.group}/{crd.version}"]}
            props["kind"] = {"type": "string", "enum": [crd.kind]}
            props["metadata"] = {"$ref": OBJECT_META_REF}
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            schema["additionalProperties"] = False
            schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
            self._validators[(f"{crd.group}/{crd.version}", crd.kind)] = jsonschema.Draft202012Validator(
                schema, registry=kubernetes.registry)

    def validator_for(self, api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
        return self._validators.get((api_version, kind))

    @property
    def kinds(self) -> set[tuple[str, str]]:
        return set(self._validators)


def validate_object(obj: dict[str, Any], kubernetes: KubernetesSchemas,
                    crds: CrdSchemas | None = None) -> tuple[str, list[str]]:
    """Validates one object. Returns (which schema was used, error messages);
    the schema is "" when none is known for the object's apiVersion and kind."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    validator = kubernetes.validator_for(api_version, kind)
    if validator is not None:
        return f"kubernetes:{_schema_file_name(api_version, kind)}", _errors(validator, obj)
    if crds is not None:
        validator = crds.validator_for(api_version, kind)
        if validator is not None:
            return f"crd:{api_version}/{kind}", _errors(validator, obj)
    return "", []
