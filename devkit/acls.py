"""The services' Kafka ACLs, read from the Strimzi KafkaUser manifests and applied to a local broker.

``deploy/k8s/components/strimzi/kafkauser.yaml`` is the one place that says what each principal
may do; the tests and ``traffic demo --secure`` apply exactly those ACLs to the local SASL_SSL
broker (:class:`devkit.broker.LocalBroker` with ``users``), so what runs in Kubernetes is what was
tested. Resource names can be renamed on the way (a test run uses its own topic names)::

    users = kafka_users()                                # {"traffic-worker": [AclRule, ...], ...}
    apply_acls(admin_settings, rename(users, {"traffic.frames": "run-1.frames", ...}))
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from pydantic import SecretStr

from traffic import clients
from traffic.errors import BrokerError
from traffic.settings import KafkaSettings

STRIMZI_USERS = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "components" / "strimzi" / "kafkauser.yaml"


@dataclass(frozen=True)
class AclRule:
    """One allow rule of a KafkaUser: resource type (topic, group, cluster, transactionalId), name, pattern, operations."""

    resource_type: str
    name: str
    pattern: str
    operations: tuple[str, ...]


def kafka_users(path: Path = STRIMZI_USERS) -> dict[str, list[AclRule]]:
    """User name -> its allow rules, from the KafkaUser documents of ``path``."""
    users: dict[str, list[AclRule]] = {}
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "KafkaUser":
            continue
        rules = []
        for acl in ((doc.get("spec") or {}).get("authorization") or {}).get("acls") or []:
            if acl.get("type", "allow") != "allow" or acl.get("host", "*") != "*":
                raise BrokerError(f"{path}: only allow rules for every host are supported here ({doc['metadata']['name']})")
            res = acl["resource"]
            rules.append(AclRule(res["type"], res.get("name", "kafka-cluster"), res.get("patternType", "literal"), tuple(acl["operations"])))
        users[doc["metadata"]["name"]] = rules
    return users


def rename(users: dict[str, list[AclRule]], names: dict[str, str]) -> dict[str, list[AclRule]]:
    """Rules with resource names replaced: exact names, and the start of prefix rules (longest match first)."""
    order = sorted(names, key=len, reverse=True)

    def new_name(rule: AclRule) -> str:
        if rule.name in names:
            return names[rule.name]
        if rule.pattern == "prefix":
            for old in order:
                if rule.name.startswith(old):
                    return names[old] + rule.name[len(old) :]
        return rule.name

    return {user: [replace(r, name=new_name(r)) for r in rules] for user, rules in users.items()}


def apply_acls(admin: KafkaSettings, users: dict[str, list[AclRule]]) -> int:
    """Create the rules as ACLs for principals ``User:<name>``; returns how many. BrokerError on a refusal."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    types = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "cluster": ResourceType.CLUSTER,
             "transactionalId": ResourceType.TRANSACTIONAL_ID}  # fmt: skip
    patterns = {"literal": ACLResourcePatternType.LITERAL, "prefix": ACLResourcePatternType.PREFIXED}
    ops = {op.name.replace("_", "").lower(): op for op in ACLOperation}
    acls = [
        ACL(f"User:{user}", "*", ops[op.lower()], ACLPermissionType.ALLOW,
            ResourcePattern(types[rule.resource_type], rule.name, patterns[rule.pattern]))
        for user, rules in users.items() for rule in rules for op in rule.operations
    ]  # fmt: skip
    client = clients.admin(admin, client_id="traffic-acls")
    try:
        result = client.create_acls(acls)
    finally:
        client.close()
    if result["failed"]:
        raise BrokerError(f"the broker refused {len(result['failed'])} ACLs: {result['failed'][:3]}")
    return len(result["succeeded"])


SERVICE_USERS = {"ingest": "traffic-ingest", "worker": "traffic-worker", "aggregator": "traffic-aggregator", "keda": "traffic-keda"}
"""Which KafkaUser each role runs as (kafkauser.yaml)."""


def create_scram_users(admin: KafkaSettings, users: dict[str, str]) -> None:
    """Create or update SCRAM-SHA-512 users (name -> password) through the admin API."""
    from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

    client = clients.admin(admin, client_id="traffic-acls")
    try:
        errors = client.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(name, ScramMechanism.SCRAM_SHA_512, password) for name, password in users.items()]
        )
    finally:
        client.close()
    failed = {name: error for name, error in errors.items() if error}
    if failed:
        raise BrokerError(f"the broker refused SCRAM users: {failed}")


def provision(admin: KafkaSettings, names: dict[str, str], roles: tuple[str, ...] = ("ingest", "worker", "aggregator", "keda")) -> dict[str, KafkaSettings]:
    """Give each role its own SCRAM user (random password) with the KafkaUser ACLs, renamed by ``names``.

    ``admin`` must be a super user (or hold Alter on the cluster) of a SASL broker. Returns role ->
    the role's KafkaSettings (same servers, protocol and CA as ``admin``).
    """
    import secrets

    if not admin.security_protocol.startswith("SASL"):
        raise BrokerError(f"least-privilege principals need a SASL broker; the connection is {admin.security_protocol}")
    users = kafka_users()
    passwords = {SERVICE_USERS[role]: secrets.token_hex(16) for role in roles}
    create_scram_users(admin, passwords)
    apply_acls(admin, rename({u: users[u] for u in passwords}, names))
    return {
        role: admin.model_copy(update={"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": SERVICE_USERS[role],
                                       "sasl_password": SecretStr(passwords[SERVICE_USERS[role]])})
        for role in roles
    }  # fmt: skip
