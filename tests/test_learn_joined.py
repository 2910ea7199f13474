"""Learning on the truth, on a real broker (issue 22, item 4): events replayed without their sales, each actual later on an
actuals topic (`replay --actuals-lag`); `sales-kafka learn` trains its challenger on the events joined with their actuals and
judges it against the champion only on joined events that neither model trained on."""

import json, sys
import numpy as np
import pandas as pd
import pytest
from sales_prediction_kafka.data import generate_sales
from sales_prediction_kafka.registry import read_registry, record_model
from sales_prediction_kafka.replay import replay, table_events
from helpers import ROOT, params, topics

sys.path.insert(0, str(ROOT))
from bench.loop import champion_before_shift, start_learner, wait_for

pytestmark = pytest.mark.kafka


@pytest.mark.slow
def test_learn_trains_and_judges_on_joined_events(broker_settings, tmp_path):
    "Training rows carry the actuals from the actuals topic; the judge counts the 200 joined events after the window, not the 300 events."
    s, t = broker_settings, topics("truth")
    actuals, alerts, reg = f"act-{t['group']}", f"alerts-{t['group']}", f"models-{t['group']}"
    rows = generate_sales(1400, seed=41, missing=0.0)
    champion = champion_before_shift(s, reg).record
    # the window to train on: 1000 events whose actuals follow 100 events later, then 100 whose actuals have not come
    sent = replay(
        table_events(rows.head(1000)),
        s,
        t["events"],
        partitions=4,
        actuals_lag=100,
        actuals_topic=actuals,
        progress=False,
    )
    assert (sent.total, sent.actuals.total) == (1000, 1000)
    replay(
        table_events(rows.iloc[1000:1100].drop(columns="Sales"), first_id=1000),
        s,
        t["events"],
        progress=False,
    )
    learn = start_learner(
        tmp_path,
        s,
        t["events"],
        alerts,
        reg,
        "--actuals-topic",
        actuals,
        "--every-seconds",
        "1",
        "--window",
        "600",
        "--holdout",
        "300",
        "--wait",
        "20",
        "--max-retrains",
        "1",
        *params(candidates="linear", cv_folds=3),
    )
    try:
        wait_for(
            lambda: list((tmp_path / "runs").glob("*/training_events.csv")),
            120,
            "the retrain to read its window",
            {"learn": learn},
        )
        # after the window: 200 events whose actuals come 50 events later, and 100 whose actuals never come
        replay(
            table_events(rows.iloc[1100:1300], first_id=1100),
            s,
            t["events"],
            actuals_lag=50,
            actuals_topic=actuals,
            progress=False,
        )
        replay(
            table_events(rows.iloc[1300:].drop(columns="Sales"), first_id=1300),
            s,
            t["events"],
            progress=False,
        )
        assert learn.wait(timeout=240) == 0, (tmp_path / "learn.log").read_text()[-3000:]
    finally:
        if learn.poll() is None:
            learn.kill()
            learn.wait()
    state = read_registry(s, reg)
    [d] = state.decisions
    run = tmp_path / "runs" / d["run"]
    src = json.loads((run / "params.json").read_text())["data"]["source"]
    assert (src["topic"], src["events"], src["unlabelled"]) == (t["events"], 600, 100), src
    assert (src["actuals"]["topic"], src["actuals"]["joined"], src["actuals"]["bad"]) == (
        actuals,
        600,
        0,
    ), src["actuals"]
    table = pd.read_csv(run / "training_events.csv")
    assert len(table) == 600 and table["Sales"].notna().all()
    truth = set(zip(rows["Marketing_Spend"].head(1000), rows["Sales"].head(1000)))
    assert set(zip(table["Marketing_Spend"], table["Sales"])) <= truth, (
        "each training row carries its own event's actual"
    )
    assert json.loads((run / "metrics.json").read_text())["data"]["rows"] == 600
    assert d["champion"] == champion["version"] and d["decision"] in ("promoted", "rejected"), d
    # 300 events came after the window; 200 have their truth
    assert (d["events"], d["judged_joined"]) == (200, 200), d
    assert all(a >= src["ends"][p] for p, (a, b) in d["judged_on"].items()), (
        d["judged_on"],
        src["ends"],
    )
    # the joined events after the window, with their actuals
    judged = list(table_events(rows.iloc[1100:1300], first_id=1100))
    y = np.array([e["Sales"] for e in judged])
    mae = round(
        float(
            np.mean(
                np.abs(
                    y - record_model(state.versions[champion["version"]]).predict_records(judged)
                )
            )
        ),
        4,
    )
    assert d["champion_mae"] == mae, (d["champion_mae"], mae)
    print(
        f"\ntrained on {src['events']} joined events ({len(table)} rows, {src['unlabelled']} unlabelled in the window); "
        f"judged on {d['events']} joined of 300 events after it: challenger MAE {d['challenger_mae']:,.2f} vs champion "
        f"{d['champion_mae']:,.2f}, {d['decision']}"
    )
