"""Shared fixtures (one real local Kafka broker for the whole run, a quick model, Chromium) and the rules of the tiers.

Tiers (markers registered in pytest.ini): `kafka` needs a broker (the session fixture starts one, or the test starts its own),
`browser` drives Chromium, `lab` starts JupyterLab or the project kernel, `slow` takes more than ~15 s on its own.
`make test-fast` runs the tests with none of them; `make test` runs everything. Plain helpers are in helpers.py."""

import os, subprocess
import pytest
from helpers import CHROMIUM, ROOT
from sales_prediction_kafka.broker import LocalBroker
from sales_prediction_kafka.config import KafkaSettings


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    "A real single-node Kafka (KRaft) in a temporary home on free loopback ports; stopped after the run. It fails, never skips."
    broker = LocalBroker(tmp_path_factory.mktemp("kafka")).start(timeout=120)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def broker_settings(kafka_broker) -> KafkaSettings:
    "KafkaSettings that point at `kafka_broker`."
    return KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    "A quick linear SalesModel trained on generated data, saved to a temporary folder."
    from sales_prediction_kafka.data import generate_sales
    from sales_prediction_kafka.models import SalesModel, save_model

    return save_model(
        SalesModel("linear").fit(generate_sales(400, seed=5).dropna()),
        tmp_path_factory.mktemp("model"),
    )


@pytest.fixture(scope="session")
def chromium() -> str:
    "Debian's Chromium, installed by tools/install_browser.sh if missing (a failed install fails the test)."
    if not os.access(CHROMIUM, os.X_OK):
        subprocess.run(["sh", str(ROOT / "tools" / "install_browser.sh")], check=True, timeout=600)
    return CHROMIUM


def pytest_collection_modifyitems(items):
    "A test that uses the session broker is a `kafka` test even if its author forgot the marker: the fast tier never starts one."
    for item in items:
        if (
            "kafka_broker" in getattr(item, "fixturenames", ())
            and item.get_closest_marker("kafka") is None
        ):
            item.add_marker(pytest.mark.kafka)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    "Nothing here skips: a missing broker, browser or tool is a failure, so a green run means every test ran."
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"{item.nodeid} was skipped ({rep.longrepr}); tests here fail instead of skipping: run its tier's make target"
