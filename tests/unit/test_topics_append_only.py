"""No topic of the bus is compacted, the trust topics neither, and the seals topic is created.

Compaction keeps only the last record per key, so whoever may write a compacted topic (every
organization on the shared ones, and the operator) could erase a revocation, an accreditation
or a mandate version by writing another record, or a null one, under its key.
"""

from __future__ import annotations

import shlex

import pytest
import yaml

from bus.topics import KEEP_FOREVER, Topics, standard_topics
from nodes.demo.manifests import REPO

ORGS = ["un", "osce", "eu", "nato", "csto", "sco"]


@pytest.mark.parametrize("prefix", ["obus.", "test.x."])
def test_no_standard_topic_is_compacted_each_says_so_itself(prefix: str) -> None:
    specs = standard_topics(Topics(prefix), ORGS, partitions=3)
    assert len({s.name for s in specs}) == len(specs)
    for spec in specs:
        configs = dict(spec.configs)
        assert len(configs) == len(spec.configs), spec.name  # no key given twice
        # explicit, not the broker's default (log.cleanup.policy may be compact)
        assert configs["cleanup.policy"] == "delete", spec.name
        assert set(KEEP_FOREVER) <= set(spec.configs), spec.name
        assert not any("compact" in v for v in configs.values()), spec.name


def test_trust_topics_and_the_seals_topic_have_one_partition() -> None:
    topics = Topics("p.")
    specs = {s.name: s for s in standard_topics(topics, ORGS, partitions=3)}
    assert topics.seals == "p.seals"
    for name in (topics.registry, topics.mandate, topics.seals, topics.statements):
        assert specs[name].partitions == 1, name
        assert dict(specs[name].configs)["cleanup.policy"] == "delete", name
    # the seals topic exists also when no organization is given (the shared topics only)
    assert topics.seals in {s.name for s in standard_topics(topics, [])}


def test_compose_init_sets_the_configs_of_topics_that_already_existed() -> None:
    """``kafka-topics.sh --create --if-not-exists`` leaves an existing topic as it is; the init
    job then sets every standard config on it (``--add-config`` is incremental), so a registry
    created compacted by an older release becomes append-only."""
    (doc,) = yaml.safe_load_all((REPO / "deploy/compose/docker-compose.yml").read_text())
    script = doc["services"]["init"]["entrypoint"][-1]
    lines = [shlex.split(line) for line in script.splitlines() if line.startswith("kafka-")]
    altered: dict[str, set[str]] = {}
    created: list[str] = []
    for argv in lines:
        if argv[0] == "kafka-topics.sh":
            created.append(argv[argv.index("--topic") + 1])
        if argv[0] == "kafka-configs.sh":
            assert created, "configs are set after the topics are created"
            assert argv[argv.index("--entity-type") + 1] == "topics"
            name = argv[argv.index("--entity-name") + 1]
            altered[name] = set(argv[argv.index("--add-config") + 1].split(","))
    specs = standard_topics(Topics(), ORGS, partitions=3)
    assert set(altered) == {s.name for s in specs} == set(created)
    for spec in specs:
        assert altered[spec.name] == {f"{k}={v}" for k, v in spec.configs}
        assert "cleanup.policy=delete" in altered[spec.name]
