"""Per-series state in the scoring workers (issue 22, item 5): a lag model trained by the pipeline, served live by two
exactly-once workers from each series' history on Kafka, one SIGKILLed mid-stream and restarted (a rebalance). Every
live prediction equals the pipeline's batch prediction for the same row to 1e-9, and no event is lost or scored twice."""

import json, os, signal, subprocess
from collections import Counter
import numpy as np
import pandas as pd
import pytest
from helpers import (
    SALES_KAFKA,
    metrics,
    params,
    read_all,
    run_offline,
    start_worker,
    topics,
    wait_for,
    wait_for_predictions,
)
from sales_prediction_kafka.data import load_table
from sales_prediction_kafka.models import load_model
from sales_prediction_kafka.timeseries import generate_panel

# actuals 3 events behind: a week's actual comes before the next week's event
SERIES, WEEKS, LAG, RATE = (4, 120, 3, 40)
# The replay compresses 10 weeks into a second, so the 6 s failover leaves a backlog of ~60 weeks: the history records keep every
# week (--history-periods WEEKS) so that the backlog still finds its lags (chapter 08e, "How many rows to keep").


def start(tmp, run, settings, t: dict, worker: str) -> subprocess.Popen:
    "An exactly-once `serve` worker of the lag model, reading and writing the series' history on `t`'s history topic."
    history = ("--no-follow", "--history-topic", t["history"], "--transaction-timeout", "10")
    return start_worker(tmp, run, settings, t, worker, True, *history, partitions=3, max_records=50)


@pytest.mark.kafka
@pytest.mark.slow
def test_live_lag_predictions_equal_batch_across_sigkill_and_rebalance(tmp_path, broker_settings):
    # in time order
    panel = (
        generate_panel(SERIES, WEEKS, seed=7)
        .sort_values("Date", kind="stable")
        .reset_index(drop=True)
    )
    csv = tmp_path / "panel.csv"
    panel.to_csv(csv, index=False)
    run = run_offline(
        tmp_path / "runs",
        "--data",
        str(csv),
        "--series",
        "Dept",
        *params(candidates="linear", cv_folds=3),
    )
    model = load_model(run / "model")
    assert model.needs_history and {"Sales_lag_1", "Sales_lag_52", "Sales_mean_3"} <= set(
        model.features
    ), model.features
    table = load_table(csv, "Sales")
    # event id i is row i
    batch = dict(zip(range(len(table)), model.predict(model.axis.derive(table, "Sales"))))
    # the pipeline's own predictions of its test rows, by CSV line
    frame = pd.read_csv(run / "test_predictions.csv")
    line = {r: i for i, r in enumerate(table.index)}
    np.testing.assert_allclose(
        [batch[line[r]] for r in frame["row"]], frame["predicted"], rtol=0, atol=1e-9
    )

    t = topics("state") | {
        "history": f"hist-{os.getpid()}-{run.name}",
        "actuals": f"act-{os.getpid()}-{run.name}",
    }
    w1, w2 = (
        start(tmp_path, run, broker_settings, t, "w1"),
        start(tmp_path, run, broker_settings, t, "w2"),
    )
    procs = [w1, w2]
    try:
        wait_for(
            lambda: (
                metrics(tmp_path, "w1").get("partitions")
                and metrics(tmp_path, "w2").get("partitions")
            ),
            60,
            "both workers to own partitions",
        )
        replay = subprocess.Popen(
            [
                SALES_KAFKA,
                "replay",
                str(csv),
                "--bootstrap-servers",
                broker_settings.bootstrap_servers,
                "--topic",
                t["events"],
                "--partitions",
                "3",
                "--rate",
                str(RATE),
                "--actuals-lag",
                str(LAG),
                "--actuals-topic",
                t["actuals"],
                "--series",
                "Dept",
                "--history-topic",
                t["history"],
                "--history-periods",
                str(WEEKS),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(replay)
        wait_for(
            lambda: metrics(tmp_path, "w1").get("scored", 0) >= 40, 60, "w1 to score 40 events"
        )
        lost = metrics(tmp_path, "w1")["partitions"]
        w1.send_signal(signal.SIGKILL)
        w1.wait()
        wait_for(
            lambda: metrics(tmp_path, "w2").get("partitions") == [0, 1, 2],
            60,
            "w2 to take over w1's partitions",
        )
        (tmp_path / "w1.json").unlink()
        w1 = start(tmp_path, run, broker_settings, t, "w1")
        procs.append(w1)  # the same worker id: fences its dead transaction
        wait_for(
            lambda: metrics(tmp_path, "w1").get("partitions"),
            60,
            "the restarted w1 to own partitions (a rebalance)",
        )
        out, err = replay.communicate(timeout=60)
        assert replay.returncode == 0, err[-2000:]
        wait_for_predictions(broker_settings, t["predictions"], len(table))
        # to the end now: a duplicate written after the last id would be here
        preds = read_all(broker_settings, t["predictions"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    live = {
        m["prediction_index"]: m["predicted_sales"]
        for m in map(lambda r: json.loads(r.value), preds)
    }
    counts = Counter(json.loads(r.value)["prediction_index"] for r in preds)
    assert sorted(counts) == list(range(len(table))), "every event scored"
    assert max(counts.values()) == 1, (
        f"scored twice: {[i for i, n in counts.items() if n > 1][:10]}"
    )
    assert not read_all(broker_settings, t["dlq"]), "no dead letters"
    worst = max(abs(live[i] - batch[i]) for i in live)
    print(
        f"\nseries state: {len(live)} rows, largest |live - batch| {worst:.3g}; w2 restores {metrics(tmp_path, 'w2')['history']['restores']}, "
        f"restarted w1 {metrics(tmp_path, 'w1')['history']['restores']}"
    )
    heads = {json.loads(r.value)["prediction_index"]: dict(r.headers) for r in preds}
    off = sorted(i for i in live if abs(live[i] - batch[i]) > 1e-9)
    assert worst <= 1e-9, (
        f"live and batch differ by up to {worst} in {len(off)} rows: {[(i, heads[i]) for i in off[:12]]}"
    )
    assert any(
        set(lost) <= set(r["partitions"]) for r in metrics(tmp_path, "w2")["history"]["restores"]
    ), "w2 restored what it took over"
    assert metrics(tmp_path, "w1")["history"]["restores"], (
        "the restarted w1 restored its partitions before scoring"
    )
