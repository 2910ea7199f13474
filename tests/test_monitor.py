"The monitor against a real broker: rolling figures equal the offline ones, one alert per drift, lag, and the CLI."

import subprocess, sys, time, uuid
import numpy as np
import pytest
from sales_prediction_kafka.config import ALERTS_TOPIC
from sales_prediction_kafka.monitor import DriftDetector, RollingMetrics, error_stats, monitor
from sales_prediction_kafka.message import as_record, prediction_records
from sales_prediction_kafka.stream import messages, stream_predictions

pytestmark = [pytest.mark.timeout(300), pytest.mark.kafka]


def drifting(n=500, start=200, stop=280, shift=40.0, seed=0) -> list[dict]:
    "Prediction messages with errors ~ N(0, 12) (MAE near 9.6), and `shift` added to the actuals in [start, stop)."
    rng = np.random.default_rng(seed)
    predicted = rng.normal(1000, 200, n)
    actual = (
        predicted
        + rng.normal(0, 12, n)
        + np.where((np.arange(n) >= start) & (np.arange(n) < stop), shift, 0)
    )
    return prediction_records(range(n), actual.round(2), predicted.round(2))


def assert_same(got: dict, want: dict):
    "Figures equal up to float rounding."
    assert got["n"] == want["n"]
    # throughput is None when all records share one timestamp
    for k in ("mae", "rmse", "bias", "mape_pct", "throughput"):
        assert got[k] == (
            pytest.approx(want[k], rel=1e-9, abs=1e-9) if want[k] is not None else None
        ), k
    assert got["within"] == pytest.approx(want["within"], rel=1e-9)


def alerts_for(settings, topic: str) -> list[dict]:
    "The alerts in sales_alerts about `topic`."
    return [
        m["value"]
        for m in messages(settings, ALERTS_TOPIC, idle_timeout=5)
        if m["value"].get("topic") == topic
    ]


@pytest.fixture(scope="module")
def drift_topic(broker_settings):
    "A one-partition topic holding 500 predictions with a drift at 200-279, sent in three bursts 1.2 s apart."
    topic, recs = f"monitor_drift_{uuid.uuid4().hex[:8]}", drifting()
    for lo, hi in ((0, 200), (200, 350), (350, 500)):
        stream_predictions(recs[lo:hi], broker_settings, topic=topic, partitions=1, progress=False)
        time.sleep(1.2)
    return topic


def test_rolling_figures_equal_offline_and_alert_fires_once(broker_settings, drift_topic):
    updates = []
    got = monitor(
        broker_settings,
        drift_topic,
        RollingMetrics(window=50, seconds=1.0),
        DriftDetector(10.0, 1.5, 1.0, 50),
        callback=updates.append,
        every=0.05,
        from_beginning=True,
        max_records=500,
    )
    arrived = [r for u in updates for r in u.records]
    assert [r.offset for r in arrived] == list(range(500))
    assert [r.prediction_index for r in arrived] == list(range(500))
    ts = [r.timestamp for r in arrived]
    assert ts == sorted(ts)
    assert_same(got.last.error_stats(), error_stats(arrived[-50:]))
    assert_same(
        got.recent.error_stats(), error_stats([r for r in arrived if r.timestamp > ts[-1] - 1.0])
    )
    # the first burst is more than 1 s older than the last record
    assert 0 < got.recent.error_stats()["n"] <= 300
    # after every record
    for i, (mae, rmse, bias) in enumerate(x for u in updates for x in u.rolling):
        want = error_stats(arrived[max(0, i - 49) : i + 1])
        assert (mae, rmse, bias) == pytest.approx(
            (want["mae"], want["rmse"], want["bias"]), rel=1e-9, abs=1e-9
        )
    final = updates[-1]
    assert (
        final.done
        and final.snapshot["partitions"] == {"0": {"offset": 499, "lag": 0}}
        and final.snapshot["lag"] == 0
    )
    raised = [a for u in updates for a in u.alerts]
    assert len(raised) == 1 and 200 <= raised[0]["offset"] < 230, raised
    written = alerts_for(broker_settings, drift_topic)
    assert len(written) == 1 and written[0] == raised[0]
    assert written[0]["last"]["mae"] > 15.0 and written[0]["mae_above"] == 15.0


def test_lag_is_end_offset_minus_position(broker_settings, drift_topic):
    updates = []
    monitor(
        broker_settings, drift_topic, callback=updates.append, from_beginning=True, max_records=120
    )
    assert updates[-1].snapshot["partitions"] == {"0": {"offset": 119, "lag": 380}}


def test_partitions_and_arrival_order(broker_settings):
    topic, recs = f"monitor_parts_{uuid.uuid4().hex[:8]}", drifting(300, 0, 0)
    summary = stream_predictions(recs, broker_settings, topic=topic, partitions=3, progress=False)
    updates = []
    got = monitor(
        broker_settings,
        topic,
        RollingMetrics(window=40),
        callback=updates.append,
        from_beginning=True,
        max_records=300,
    )
    arrived = [r for u in updates for r in u.records]
    assert sorted((r.partition, r.offset) for r in arrived) == sorted(
        (p, o) for p, (a, b) in summary.offsets.items() for o in range(a, b + 1)
    )
    assert_same(got.last.error_stats(), error_stats(arrived[-40:]))
    assert {int(p): v["offset"] for p, v in updates[-1].snapshot["partitions"].items()} == {
        p: b for p, (a, b) in summary.offsets.items()
    }


def test_monitor_command_prints_the_offline_figures(broker_settings, drift_topic):
    code = "from sales_prediction_kafka.monitor import monitor_command; monitor_command()"
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--bootstrap-servers",
            broker_settings.bootstrap_servers,
            "--topic",
            drift_topic,
            "--window",
            "50",
            "--seconds",
            "1",
            "--baseline",
            "10",
            "--from-beginning",
            "--max-records",
            "500",
            "--alerts-topic",
            f"{drift_topic}_alerts",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    want = error_stats(
        [as_record(m) for m in list(messages(broker_settings, drift_topic, idle_timeout=5))[-50:]]
    )
    line = res.stdout.strip().splitlines()[-1]
    assert line.startswith(
        f"seen 500 | last 50: MAE {want['mae']:.2f} RMSE {want['rmse']:.2f} bias {want['bias']:+.2f}"
    ), line
    assert "| lag 0" in line and "ALERT mae" in res.stdout
    assert "drift alert (mae)" in res.stderr
