"The live demo after a run on another table: serve and monitor take the newest run whose model fits the events, or refuse clearly."

import json, shutil, uuid
import pytest
from sales_prediction_kafka.data import SAMPLE_CSV, load_table
from sales_prediction_kafka.models import SalesModel, save_model
from sales_prediction_kafka.replay import replay, table_events
from sales_prediction_kafka.serve import ServeError, find_model
from sales_prediction_kafka.monitor import baseline_run
import click

pytestmark = [pytest.mark.kafka]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dir):
    "An older run on the sample's schema, and a newer one trained on another table (columns a, b -> y)."
    import numpy as np, pandas as pd

    base = tmp_path_factory.mktemp("runs")
    old, new = base / "20261101-000000-aaaaaa", base / "20261102-000000-bbbbbb"
    shutil.copytree(model_dir, old / "model")
    rng = np.random.default_rng(0)
    other = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    other["y"] = other.a * 3 + other.b
    save_model(SalesModel("linear", target="y").fit(other), new / "model")
    for run, data, mae in ((old, "sales_sample.csv", 5000.0), (new, "other.csv", 1.37)):
        (run / "params.json").write_text(json.dumps({"data": {"path": f"../{data}"}}))
        (run / "metrics.json").write_text(json.dumps({"test": {"mae": mae}}))
    return base


def test_newest_matching_run_is_chosen(runs, broker_settings, caplog):
    topic = f"ev-{uuid.uuid4().hex[:6]}"
    replay(table_events(load_table(SAMPLE_CSV).head(20)), broker_settings, topic, progress=False)
    caplog.set_level("INFO")
    assert (
        find_model(None, runs, broker_settings, topic) == runs / "20261101-000000-aaaaaa" / "model"
    )
    assert (
        "run 20261101-000000-aaaaaa (data sales_sample.csv): the newest whose model fits the events"
        in caplog.text
    )
    assert baseline_run(broker_settings, topic, runs) == str(runs / "20261101-000000-aaaaaa"), (
        "the monitor's baseline agrees"
    )


def unfit_events(settings) -> str:
    "A new topic holding one event that no run's model can score; its name."
    topic = f"ev-{uuid.uuid4().hex[:6]}"
    replay([{"event_id": 1, "schema_version": 1, "colour": "red"}], settings, topic, progress=False)
    return topic


def test_no_matching_run_is_refused_clearly(runs, broker_settings):
    topic = unfit_events(broker_settings)
    with pytest.raises(
        ServeError,
        match=r"none of the 2 runs .* has a model for these events: they carry colour, event_id, "
        r"schema_version; the newest run \(20261102-000000-bbbbbb, data other.csv\) needs a, b",
    ):
        find_model(None, runs, broker_settings, topic)
    with pytest.raises(click.UsageError, match="or give --baseline"):
        baseline_run(broker_settings, topic, runs)


def test_no_events_yet_takes_the_newest(runs, broker_settings):
    assert (
        find_model(None, runs, broker_settings, f"none-{uuid.uuid4().hex[:6]}")
        == runs / "20261102-000000-bbbbbb" / "model"
    )


def test_dashboard_opens_when_no_run_fits_the_events(runs, broker_settings, tmp_path):
    "Events that fit no run folder: `dashboard` still starts, its cluster pages open, and the live page has no baseline (issue 22)."
    import signal, urllib.request
    from helpers import start_dashboard

    topic = unfit_events(broker_settings)
    shutil.copytree(runs, tmp_path / "outputs" / "runs")  # the default --runs of a user's checkout
    proc, url = start_dashboard(
        broker_settings.bootstrap_servers,
        *("--events-topic", topic, "--topic", f"pred-{topic}", "--alerts-topic", f"alerts-{topic}"),
        flags=("-q",),
        cwd=tmp_path,
    )
    try:
        assert (
            json.loads(urllib.request.urlopen(url + "state", timeout=10).read())["limits"] is None
        )
        page = urllib.request.urlopen(url + "topics", timeout=10)
        assert page.status == 200 and b"<html" in page.read()[:500].lower()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert "no baseline MAE for the live page" in proc.stderr.read()
