"Shared fixtures: one real local Kafka broker for the whole test run."
import pytest
from sales_prediction_kafka.broker import LocalBroker
from sales_prediction_kafka.config import KafkaSettings

@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    "A real single-node Kafka (KRaft) in a temporary home on free loopback ports; stopped after the run."
    broker = LocalBroker(tmp_path_factory.mktemp("kafka")).start(timeout=120)
    yield broker
    broker.stop()

@pytest.fixture(scope="session")
def broker_settings(kafka_broker) -> KafkaSettings:
    "KafkaSettings that point at `kafka_broker`."
    return KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
