"docker-compose.yml: Kafka in KRaft mode from the official image, and Kafdrop on the internal listener."

import base64
from pathlib import Path
import yaml

COMPOSE = yaml.safe_load(
    (Path(__file__).resolve().parent.parent / "docker-compose.yml").read_text()
)
SERVICES = COMPOSE["services"]


def env(name):
    return {k: str(v) for k, v in SERVICES[name]["environment"].items()}


def listeners(value):
    "{name: (host, port)} from a Kafka listeners string."
    out = {}
    for item in value.split(","):
        name, addr = item.split("://")
        host, port = addr.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


def test_services():
    assert set(SERVICES) == {"kafka", "kafdrop"}
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["kafdrop"]["image"].startswith("obsidiandynamics/kafdrop")
    assert "zookeeper" not in str(COMPOSE).lower()


def test_kraft_single_node():
    e = env("kafka")
    assert e["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node, voter = e["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert node == e["KAFKA_NODE_ID"] == "1"
    assert voter == f"kafka:{listeners(e['KAFKA_LISTENERS'])['CONTROLLER'][1]}"
    assert len(base64.urlsafe_b64decode(e["CLUSTER_ID"] + "==")) == 16  # a Kafka Uuid
    for k in [
        "OFFSETS_TOPIC_REPLICATION_FACTOR",
        "TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "TRANSACTION_STATE_LOG_MIN_ISR",
    ]:
        assert e[f"KAFKA_{k}"] == "1"
    assert e["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_listeners_for_containers_and_host():
    e = env("kafka")
    lis, adv = listeners(e["KAFKA_LISTENERS"]), listeners(e["KAFKA_ADVERTISED_LISTENERS"])
    proto = dict(p.split(":") for p in e["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(lis) == set(proto) == {"PLAINTEXT", "CONTROLLER", "EXTERNAL"}
    assert e["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER" and "CONTROLLER" not in adv
    assert e["KAFKA_INTER_BROKER_LISTENER_NAME"] == "PLAINTEXT"
    assert adv["PLAINTEXT"] == ("kafka", lis["PLAINTEXT"][1])  # containers
    assert adv["EXTERNAL"] == ("localhost", lis["EXTERNAL"][1])  # the host
    assert f"{adv['EXTERNAL'][1]}:{lis['EXTERNAL'][1]}" in SERVICES["kafka"]["ports"]
    assert all(h == "0.0.0.0" for h, _ in lis.values())


def test_kafdrop_uses_internal_listener():
    e, k = env("kafdrop"), env("kafka")
    assert e["KAFKA_BROKERCONNECT"] == f"kafka:{listeners(k['KAFKA_LISTENERS'])['PLAINTEXT'][1]}"
    assert "9000:9000" in SERVICES["kafdrop"]["ports"]
    assert SERVICES["kafdrop"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_data_on_a_volume():
    mount = SERVICES["kafka"]["volumes"][0].split(":")
    assert mount[0] in COMPOSE["volumes"] and mount[1] == env("kafka")["KAFKA_LOG_DIRS"]
