"""deploy/compose and deploy/k8s: generated from the code, valid, and carrying the one ACL model.

No container engine runs here, so the manifests are checked, not run:
* they are exactly what ``python -m nodes.demo.manifests`` generates (from bus/acl.py and
  bus/kafka/client.py), so they cannot drift from the model the secure local cluster enforces
  (tests/integration/test_broker_acls.py applies the same ``acl_model``);
* the compose file validates against the compose-spec JSON schema (vendored by the
  check-jsonschema package); the Deployments and PVCs against the Kubernetes schemas of the
  kubernetes-validate package;
* the Strimzi resources against structural schemas written here from the Strimzi CRDs (no
  package ships those CRDs; they cover the fields we use, with the CRDs' enums);
* the ACLs read back from the compose init script (kafka-acls.sh lines) and from the
  KafkaUser resources equal :func:`bus.acl.acl_model`, rule for rule.
"""

from __future__ import annotations

import json
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from bus.acl import ADMIN, AclRule, Operation, Pattern, Resource, acl_model, principal
from bus.topics import Topics, standard_topics
from nodes.demo import manifests

REPO = Path(__file__).resolve().parents[2]
ORGS = ("un", "osce", "eu", "nato", "csto", "sco")
MODEL = set(acl_model(Topics(), ORGS))


def _load(rel: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / rel).read_text()) if d is not None]


def test_checked_in_manifests_are_exactly_the_generated_ones() -> None:
    assert manifests.ORGS == ORGS
    assert manifests.main(["--check"]) == 0, "run: python -m nodes.demo.manifests"


# -- compose ------------------------------------------------------------------------------

COMPOSE = "deploy/compose/docker-compose.yml"


def test_compose_validates_against_the_compose_spec_schema() -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    (doc,) = _load(COMPOSE)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(doc), key=str)
    assert errors == [], [e.message for e in errors[:5]]


def _init_lines() -> list[list[str]]:
    (doc,) = _load(COMPOSE)
    script = doc["services"]["init"]["entrypoint"][-1]
    return [shlex.split(line) for line in script.splitlines() if line.startswith("kafka-")]


def _flag(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


def test_compose_acl_lines_are_the_model() -> None:
    rules = set()
    for argv in _init_lines():
        if argv[0] != "kafka-acls.sh":
            continue
        assert argv[argv.index("--bootstrap-server") + 1] == "$BOOTSTRAP"
        assert "--add" in argv and _flag(argv, "--allow-host") == ["*"]
        kind = Resource.TOPIC if "--topic" in argv else Resource.GROUP
        (name,) = _flag(argv, "--topic") or _flag(argv, "--group")
        (pattern,) = _flag(argv, "--resource-pattern-type")
        (op,) = _flag(argv, "--operation")
        (who,) = _flag(argv, "--allow-principal")
        rules.add(AclRule(who, kind, Pattern(pattern), name, Operation(op)))
    assert rules == MODEL


def test_compose_topics_brokers_and_nodes() -> None:
    specs = {s.name: s for s in standard_topics(Topics(), ORGS, partitions=3)}
    created = {}
    for argv in _init_lines():
        if argv[0] == "kafka-topics.sh":
            (name,) = _flag(argv, "--topic")
            created[name] = argv
            assert _flag(argv, "--replication-factor") == ["3"]
            assert "min.insync.replicas=2" in _flag(argv, "--config")
            assert _flag(argv, "--partitions") == [str(specs[name].partitions)]
            assert {f"{k}={v}" for k, v in specs[name].configs} <= set(_flag(argv, "--config"))
    assert set(created) == set(specs)
    (doc,) = _load(COMPOSE)
    services = doc["services"]
    brokers = [s for n, s in services.items() if re.fullmatch(r"kafka-\d", n)]
    assert len(brokers) == 3
    for b in brokers:
        env = b["environment"]
        assert env["SCRAM_USERS"].split(",") == [ADMIN, *ORGS]
        assert "min.insync.replicas=2" in env["BROKER_SETTINGS"].splitlines()
        assert "default.replication.factor=3" in env["BROKER_SETTINGS"].splitlines()
    start = (REPO / "deploy/compose/broker-start.sh").read_text()
    for needle in (
        "listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:SASL_SSL",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users=User:admin",
        "allow.everyone.if.no.acl.found=false",
        "--add-scram",
    ):
        assert needle in start
    for org in ORGS:
        node = services[f"node-{org}"]
        env = node["environment"]
        assert env["OBUS_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["OBUS_SASL_USERNAME"] == org
        assert env["OBUS_SASL_PASSWORD_FILE"] == f"/run/secrets/{org}_password"
        assert f"{org}_password" in node["secrets"]
        assert not [
            s for s in node["secrets"] if s.endswith("_password") and s != f"{org}_password"
        ]


# -- Kubernetes / Strimzi -----------------------------------------------------------------

_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
_CLUSTER_LABEL = {
    "type": "object",
    "required": ["labels"],
    "properties": {
        "labels": {"type": "object", "required": ["strimzi.io/cluster"]},
        "name": {"type": "string"},
    },
}
# Written from the Strimzi v1beta2 CRDs (040-Crd-kafka, 043-Crd-kafkatopic, 044-Crd-kafkauser,
# 04A-Crd-kafkanodepool): the fields these manifests use, with the CRDs' types and enums.
STRIMZI: dict[str, dict[str, Any]] = {
    "KafkaNodePool": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _CLUSTER_LABEL,
            "spec": {
                "type": "object",
                "required": ["replicas", "roles", "storage"],
                "additionalProperties": False,
                "properties": {
                    "replicas": {"type": "integer", "minimum": 0},
                    "roles": {"type": "array", "items": {"enum": ["controller", "broker"]}},
                    "storage": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"enum": ["ephemeral", "persistent-claim", "jbod"]},
                            "volumes": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["id", "type"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "id": {"type": "integer", "minimum": 0},
                                        "type": {"enum": ["ephemeral", "persistent-claim"]},
                                        "size": {"type": "string"},
                                        "deleteClaim": {"type": "boolean"},
                                        "kraftMetadata": {"enum": ["shared"]},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "Kafka": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["kafka"],
                "properties": {
                    "kafka": {
                        "type": "object",
                        "required": ["listeners"],
                        "properties": {
                            "version": {"type": "string"},
                            "listeners": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["name", "port", "type", "tls"],
                                    "properties": {
                                        "name": {"type": "string", "pattern": "^[a-z0-9]{1,11}$"},
                                        "port": {"type": "integer", "minimum": 9092},
                                        "type": {
                                            "enum": [
                                                "internal",
                                                "route",
                                                "loadbalancer",
                                                "nodeport",
                                                "ingress",
                                                "cluster-ip",
                                            ]
                                        },
                                        "tls": {"type": "boolean"},
                                        "authentication": {
                                            "type": "object",
                                            "required": ["type"],
                                            "properties": {
                                                "type": {
                                                    "enum": [
                                                        "tls",
                                                        "scram-sha-512",
                                                        "oauth",
                                                        "custom",
                                                    ]
                                                }
                                            },
                                        },
                                    },
                                },
                            },
                            "authorization": {
                                "type": "object",
                                "required": ["type"],
                                "properties": {
                                    "type": {"enum": ["simple", "opa", "keycloak", "custom"]},
                                    "superUsers": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                            "config": {"type": "object"},
                        },
                    },
                    "entityOperator": {"type": "object"},
                },
            },
        },
    },
    "KafkaTopic": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _CLUSTER_LABEL,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "topicName": {"type": "string"},
                    "partitions": {"type": "integer", "minimum": 1},
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                    "config": {"type": "object"},
                },
            },
        },
    },
    "KafkaUser": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _CLUSTER_LABEL,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "authentication": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"enum": ["tls", "tls-external", "scram-sha-512"]}},
                    },
                    "authorization": {
                        "type": "object",
                        "required": ["type", "acls"],
                        "properties": {
                            "type": {"enum": ["simple"]},
                            "acls": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["resource", "operations"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "type": {"enum": ["allow", "deny"]},
                                        "host": {"type": "string"},
                                        "resource": {
                                            "type": "object",
                                            "required": ["type"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "type": {
                                                    "enum": [
                                                        "topic",
                                                        "group",
                                                        "cluster",
                                                        "transactionalId",
                                                    ]
                                                },
                                                "name": {"type": "string"},
                                                "patternType": {"enum": ["literal", "prefix"]},
                                            },
                                        },
                                        "operations": {
                                            "type": "array",
                                            "minItems": 1,
                                            "items": {
                                                "enum": [
                                                    "Read",
                                                    "Write",
                                                    "Create",
                                                    "Delete",
                                                    "Alter",
                                                    "Describe",
                                                    "ClusterAction",
                                                    "AlterConfigs",
                                                    "DescribeConfigs",
                                                    "IdempotentWrite",
                                                    "All",
                                                ]
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
K8S_FILES = ["deploy/k8s/kafka.yaml", "deploy/k8s/topics.yaml", "deploy/k8s/users.yaml",
             "deploy/k8s/nodes.yaml"]  # fmt: skip


@pytest.mark.parametrize("rel", K8S_FILES)
def test_k8s_resources_validate(rel: str) -> None:
    for doc in _load(rel):
        if doc["apiVersion"].startswith("kafka.strimzi.io/"):
            assert doc["apiVersion"] == "kafka.strimzi.io/v1beta2"
            jsonschema.validate(doc, STRIMZI[doc["kind"]])
        else:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_strimzi_cluster_is_kraft_with_three_dual_role_nodes() -> None:
    pool, kafka = _load("deploy/k8s/kafka.yaml")
    assert pool["spec"]["replicas"] == 3 and set(pool["spec"]["roles"]) == {"controller", "broker"}
    assert kafka["metadata"]["annotations"] == {
        "strimzi.io/node-pools": "enabled", "strimzi.io/kraft": "enabled"
    }  # fmt: skip
    spec = kafka["spec"]["kafka"]
    assert spec["config"]["min.insync.replicas"] == 2
    assert spec["config"]["default.replication.factor"] == 3
    assert spec["config"]["unclean.leader.election.enable"] is False
    assert [(lst["tls"], lst["authentication"]["type"]) for lst in spec["listeners"]] == [
        (True, "scram-sha-512")
    ]
    assert spec["authorization"] == {"type": "simple", "superUsers": [ADMIN]}


def test_strimzi_topics_are_the_standard_topics_replicated() -> None:
    specs = {s.name: s for s in standard_topics(Topics(), ORGS, partitions=3)}
    docs = _load("deploy/k8s/topics.yaml")
    assert {d["spec"]["topicName"] for d in docs} == set(specs)
    for d in docs:
        s = specs[d["spec"]["topicName"]]
        assert d["spec"]["partitions"] == s.partitions and d["spec"]["replicas"] == 3
        assert d["spec"]["config"] == {"min.insync.replicas": 2, **dict(s.configs)}


def test_strimzi_user_acls_are_the_model() -> None:
    rules = set()
    users = {d["metadata"]["name"]: d for d in _load("deploy/k8s/users.yaml")}
    assert set(users) == {ADMIN, *ORGS}
    assert "authorization" not in users[ADMIN]["spec"]  # the super user
    for org in ORGS:
        spec = users[org]["spec"]
        assert spec["authentication"] == {"type": "scram-sha-512"}
        for acl in spec["authorization"]["acls"]:
            assert acl["type"] == "allow" and acl["host"] == "*"
            res = acl["resource"]
            pattern = Pattern.PREFIXED if res["patternType"] == "prefix" else Pattern.LITERAL
            rules |= {
                AclRule(principal(org), Resource(res["type"]), pattern, res["name"], Operation(op))
                for op in acl["operations"]
            }
    assert rules == MODEL


def test_k8s_nodes_log_in_as_their_own_organization() -> None:
    deployments = [d for d in _load("deploy/k8s/nodes.yaml") if d["kind"] == "Deployment"]
    assert len(deployments) == len(ORGS)
    for d in deployments:
        org = d["metadata"]["labels"]["obus/org"]
        (container,) = d["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["OBUS_SASL_USERNAME"]["value"] == org
        assert env["OBUS_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == org
        assert env["OBUS_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
        assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"]["type"] == "Recreate"
