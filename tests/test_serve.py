"The scoring service on a real broker: worker processes in a group, SIGKILL and restart, dead letters, replay."

import json, logging, signal, threading, time
from collections import Counter
import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.serializer import DefaultSerializer
from kafka.structs import OffsetAndMetadata
from sales_prediction_kafka.data import generate_sales
from sales_prediction_kafka.models import load_model
from sales_prediction_kafka.replay import replay, replay_command, table_events
from sales_prediction_kafka.serve import REASONS, event_schema, example_events
from sales_prediction_kafka.clients import producer
from sales_prediction_kafka.clients import ensure_topic
from helpers import (
    feed,
    metrics,
    open_worker,
    read_all,
    scored,
    serve_until_idle,
    start_worker,
    topics,
    wait_for,
    wait_for_predictions,
)

pytestmark = pytest.mark.kafka
N_EVENTS = 10_000


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly-once", "at-least-once"])
def test_workers_survive_sigkill(kafka_broker, broker_settings, model_dir, tmp_path, exactly_once):
    "3 workers on 6 partitions score 10,000 events; one is SIGKILLed mid-stream and restarted."
    t0, settings, t = time.monotonic(), broker_settings, topics("kill")
    ensure_topic(settings, t["events"], partitions=6)
    df = generate_sales(N_EVENTS, seed=11, missing=0.0)
    workers = {
        w: start_worker(tmp_path, model_dir, settings, t, w, exactly_once)
        for w in ("w0", "w1", "w2")
    }
    try:
        wait_for(
            lambda: all(len(metrics(tmp_path, w).get("partitions", [])) == 2 for w in workers),
            90,
            "the group to share the partitions",
        )
        feeder = feed(
            table_events(df), settings, t["events"], 2500.0
        )  # 4 s of events at 2,500/s: the kill below lands mid-stream
        wait_for(lambda: scored(tmp_path, "w1") > 0, 60, "w1 to score its first batch")
        workers["w1"].send_signal(signal.SIGKILL)
        workers["w1"].wait()
        killed_after = scored(tmp_path, "w1")
        (
            tmp_path / "w1.json"
        ).unlink()  # the restarted w1 writes it anew once it runs (and handles SIGTERM)
        # same id: fences its predecessor
        workers["w1"] = start_worker(tmp_path, model_dir, settings, t, "w1", exactly_once)
        feeder.join()
        wait_for_predictions(settings, t["predictions"], N_EVENTS, 120)
        # w0 and w2 may finish first
        wait_for(lambda: (tmp_path / "w1.json").exists(), 120, "the restarted w1 to run")
    finally:
        for p in workers.values():
            p.send_signal(signal.SIGTERM)
        codes = {w: p.wait(timeout=60) for w, p in workers.items()}
    test_eq = lambda a, b: (a == b) or pytest.fail(f"{a!r} != {b!r}")
    # SIGTERM: the batch in flight finished, committed, group left
    test_eq(codes, {"w0": 0, "w1": 0, "w2": 0})
    c = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=t["group"], enable_auto_commit=False
    )
    tps = [TopicPartition(t["events"], p) for p in range(6)]
    # every last commit landed (asynchronous ones too)
    test_eq({tp: c.committed(tp) for tp in tps}, c.end_offsets(tps))
    c.close()
    summaries = [
        json.loads(p.stdout.read().decode().strip().splitlines()[-1]) for p in workers.values()
    ]
    # last line = last metrics
    test_eq(
        {s["worker"]: s["scored"] for s in summaries}, {w: scored(tmp_path, w) for w in workers}
    )
    recs = read_all(settings, t["predictions"], "read_committed")
    counts = Counter(json.loads(r.value)["prediction_index"] for r in recs)
    assert set(counts) == set(range(N_EVENTS)), "every event is scored"
    dupes = sum(c - 1 for c in counts.values())
    if exactly_once:
        assert dupes == 0, f"{dupes} duplicate predictions in exactly-once mode"
    expected = load_model(model_dir).predict_records(list(table_events(df)))
    for r in recs:
        v = json.loads(r.value)
        assert abs(v["predicted_sales"] - expected[v["prediction_index"]]) <= 1e-6 * abs(
            expected[v["prediction_index"]]
        )
        assert abs(v["error"] - (v["actual_sales"] - v["predicted_sales"])) <= 1e-6 * max(
            1.0, abs(v["error"])
        )
    print(
        f"\n{'exactly' if exactly_once else 'at-least'}-once: {len(recs)} predictions for {N_EVENTS} events, "
        f"{dupes} duplicates, w1 killed after scoring {killed_after}, {time.monotonic() - t0:.1f} s"
    )


def test_dead_letters_and_replay(broker_settings, model_dir, tmp_path):
    "Each kind of bad event goes to the dead-letter topic with its reason; the good ones around it are scored."
    settings, t = broker_settings, topics("dlq")
    df = generate_sales(40, seed=2, missing=0.0)
    csv = tmp_path / "events.csv"
    df.to_csv(csv, index=False)
    t0 = time.monotonic()
    r = CliRunner().invoke(
        replay_command,
        [
            str(csv),
            "--bootstrap-servers",
            settings.bootstrap_servers,
            "--topic",
            t["events"],
            "--rate",
            "100",
            "--first-id",
            "5000",
            "--limit",
            "20",
        ],
    )
    assert r.exit_code == 0, r.output
    assert time.monotonic() - t0 >= 0.19, "20 events at 100/s take at least 0.19 s"
    bad = {
        k: v
        for k, v in example_events(event_schema(load_model(model_dir)), event_id=9999).items()
        if k != "good"
    }
    # a prediction failure and a key are not in a message
    assert set(bad) == set(REASONS) - {"prediction_failed", "wrong_key"}
    p = producer(settings, value_serializer=DefaultSerializer())
    for kind, value in bad.items():
        p.send(t["events"], key=kind, value=value, headers=[("kind", kind.encode())])
    p.flush()
    p.close()
    # good events after the bad ones
    replay(table_events(df.tail(20), first_id=5020), settings, t["events"], progress=False)
    r = serve_until_idle(settings, t, "--model", str(model_dir), "--max-records", "7")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert (summary["scored"], summary["dead_lettered"]) == (40, len(bad)), summary
    preds = read_all(settings, t["predictions"], "read_uncommitted")
    assert sorted(json.loads(m.value)["prediction_index"] for m in preds) == list(range(5000, 5040))
    dead = read_all(settings, t["dlq"], "read_uncommitted")
    got = {dict(m.headers)["kind"].decode(): m for m in dead}
    assert set(got) == set(bad)
    for kind, m in got.items():
        h = {k: v.decode() for k, v in m.headers}
        assert h["dlq.reason"] == kind and h["dlq.detail"] and h["dlq.topic"] == t["events"], h
        assert m.value == bad[kind], f"{kind}: the original bytes are kept"
    absent = (
        set(json.loads(bad["wrong_type"])) - set(json.loads(bad["missing_field"]))
    ).pop()  # no fill value: required
    assert {
        k: dict(got[k].headers).get("dlq.field", b"").decode()
        for k in ("missing_field", "unknown_category")
    } == {"missing_field": absent, "unknown_category": "Seasonality"}


def test_sample_gaps_are_imputed_not_dead_lettered(broker_settings, model_dir, tmp_path):
    "The sample replayed twice (1,000 events): the gaps the batch cleaning imputed are filled and scored, each named in a header."
    from sales_prediction_kafka.data import SAMPLE_CSV, load_table

    settings, t, model = broker_settings, topics("impute"), load_model(model_dir)
    assert model.fill_values, "the model keeps the fill values of its training rows"
    r = CliRunner().invoke(
        replay_command,
        [
            str(SAMPLE_CSV),
            "--bootstrap-servers",
            settings.bootstrap_servers,
            "--topic",
            t["events"],
            "--repeat",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    r = serve_until_idle(settings, t, "--model", str(model_dir))
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    df = load_table(SAMPLE_CSV)
    assert (summary["scored"], summary["dead_lettered"]) == (2 * len(df), 0), summary
    gaps = {
        i: {f for f in model.features if f in df and df[f].isna().iloc[i % len(df)]}
        for i in range(2 * len(df))
    }
    assert sum(bool(g) for g in gaps.values()) > 100, "the sample has gaps to fill"
    preds = read_all(settings, t["predictions"], "read_uncommitted")
    got = {
        json.loads(m.value)["prediction_index"]: dict(m.headers).get("imputed", b"").decode()
        for m in preds
    }
    assert {i: set(filter(None, h.split(","))) for i, h in got.items()} == gaps


def test_unstable_group_offsets_are_asked_for_again_until_stable_or_stopped(
    kafka_broker, broker_settings, model_dir, caplog
):
    """Another producer's open transaction holds the group's offset unstable: the worker warns and asks again, gets the
    offset once that transaction commits, and when told to stop while it waits, it stops asking."""
    settings, t = broker_settings, topics("unstable")
    ensure_topic(settings, t["events"], partitions=1)
    tp = TopicPartition(t["events"], 0)
    w = open_worker(model_dir, settings, t, transaction_timeout_ms=2000)
    holder = KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, transactional_id=f"{t['group']}-holder"
    )

    def hold(offset: int):
        holder.begin_transaction()
        holder.send_offsets_to_transaction({tp: OffsetAndMetadata(offset)}, t["group"])

    try:
        holder.init_transactions()
        hold(42)
        threading.Timer(3, holder.commit_transaction).start()
        with caplog.at_level(logging.WARNING, "sales_prediction_kafka.serve"):
            t0 = time.monotonic()
            got, waited = w._committed_offset(tp), time.monotonic() - t0
        assert got == 42 and waited >= 2, (got, waited)
        assert f"offset of {t['events']}-0 is still unstable after 1 s" in caplog.text
        hold(43)
        threading.Timer(3, w.stopping.set).start()
        assert w._committed_offset(tp) is None, "told to stop while waiting, it stops asking"
        holder.abort_transaction()
    finally:
        w.close()
        holder.close()


def test_a_dated_model_scores_weeks_it_never_saw_and_a_lag_model_needs_events_keyed_by_series(
    broker_settings, tmp_path
):
    "Events carry the date: weeks three years after every training week are scored from their calendar. A lag model is served,"
    "but events keyed by event id are wrong_key dead letters (their series' history may be on another partition), and a lag model "
    "without a time axis is refused."
    import numpy as np, pandas as pd
    from sales_prediction_kafka.models import SalesModel, make_model, save_model
    from sales_prediction_kafka.timeseries import TimeAxis, generate_panel

    settings, t = broker_settings, topics("dated")
    axis, panel = TimeAxis("Date", "W", ["Dept"]), generate_panel(seed=5)
    model = SalesModel("trees", features=["Dept", "Price"], time=axis.to_dict()).fit(panel)
    later = panel.tail(40).assign(
        Date=(pd.to_datetime(panel.tail(40)["Date"]) + pd.DateOffset(weeks=156)).dt.strftime(
            "%Y-%m-%d"
        )
    )
    assert later["Date"].min() > panel["Date"].max()
    replay(
        table_events(later[["Date", "Dept", "Price"]]),
        settings,
        t["events"],
        1000.0,
        progress=False,
    )
    serve = lambda folder, group: serve_until_idle(
        settings,
        t | {"group": group},
        "--model",
        str(folder),
        "--no-follow",
        "--history-topic",
        f"hist-{t['group']}",
    )
    r = serve(save_model(model, tmp_path / "dated"), t["group"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert (summary["scored"], summary["dead_lettered"]) == (40, 0), summary
    got = {
        json.loads(m.value)["prediction_index"]: json.loads(m.value)["predicted_sales"]
        for m in read_all(settings, t["predictions"], "read_uncommitted")
    }
    np.testing.assert_allclose([got[i] for i in range(40)], model.predict(later), rtol=1e-9)
    lagged = SalesModel("linear", time=axis.to_dict()).fit(axis.derive(panel, "Sales"))
    r = serve(save_model(lagged, tmp_path / "lagged"), t["group"] + "-lag")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["dead_lettered"] == 40, r.output
    assert {
        dict(m.headers)["dlq.reason"] for m in read_all(settings, t["dlq"], "read_uncommitted")
    } == {b"wrong_key"}
    r = serve(
        save_model(make_model("naive").fit(axis.derive(panel, "Sales")), tmp_path / "naive"),
        t["group"] + "-naive",
    )
    assert r.exit_code != 0 and "has no time axis to find them by" in r.output, r.output


def test_a_champion_that_fits_no_event_is_refused_at_start_and_at_a_swap(
    broker_settings, model_dir, tmp_path, caplog
):
    "A registry champion trained on another table: `serve` refuses it naming both sides, scores with a run that fits, and a running worker keeps its model when it is promoted."
    import numpy as np, pandas as pd, shutil
    from sales_prediction_kafka.models import SalesModel, save_model
    from sales_prediction_kafka.registry import ChampionFollower, model_record, promote, publish
    from sales_prediction_kafka.serve import ScoringWorker, serve

    settings, t = broker_settings, topics("misfit")
    reg = f"models-{t['group']}"
    rng = np.random.default_rng(0)
    other = pd.DataFrame(
        {"CompPrice": rng.normal(size=200), "Income": rng.normal(size=200)}
    ).assign(y=lambda d: d.CompPrice * 3 + d.Income)
    alien = SalesModel("linear", target="y").fit(other)
    replay(
        table_events(generate_sales(20, seed=3, missing=0.0)), settings, t["events"], progress=False
    )
    own = publish(settings, model_record(model_dir), reg)
    promote(
        settings,
        publish(settings, model_record(save_model(alien, tmp_path / "alien")), reg)["version"],
        topic=reg,
    )
    r = serve_until_idle(settings, t, "--models-topic", reg, "--runs", str(tmp_path / "no-runs"))
    assert r.exit_code == 1, r.output
    assert (
        f"the champion {alien.version} does not fit the events: model 'linear' ({alien.version}) reads CompPrice, Income, but 20 "
        "of the 20 newest events lack more than 50% of them; the events carry Credit_Score, Customer_Churn, Defaulted"
    ) in r.output, r.output
    assert "no run with a model" in r.output, r.output
    # a run that fits: scored with it instead
    shutil.copytree(model_dir, tmp_path / "runs" / "20261201-000000-aaaaaa" / "model")
    caplog.set_level(logging.INFO)
    got = serve(
        None,
        settings,
        tmp_path / "runs",
        idle_exit=2,
        models_topic=reg,
        group_id=t["group"],
        events_topic=t["events"],
        predictions_topic=t["predictions"],
        dead_letter_topic=t["dlq"],
    )
    assert (got["scored"], got["dead_lettered"], got["model_version"]) == (20, 0, own["version"]), (
        got
    )
    assert (
        f"refusing the champion {alien.version} of {reg}: model 'linear' ({alien.version}) reads CompPrice, Income"
        in caplog.text
    )
    promote(settings, own["version"], topic=reg)
    follower = ChampionFollower(settings, reg).start(in_use=own["version"])
    with ScoringWorker(
        load_model(model_dir),
        settings,
        group_id=t["group"] + "-swap",
        events_topic=t["events"],
        follower=follower,
        predictions_topic=t["predictions"],
        dead_letter_topic=t["dlq"],
    ) as w:
        wait_for(lambda: w.process(w.poll()).get("scored", 0) > 0, 60, "a first batch")
        promote(settings, alien.version, "by mistake", reg)
        wait_for(
            lambda: follower.current == alien.version,
            30,
            "the follower to load the promoted champion",
        )
        assert w.swap() is False and w.model.version == own["version"]
    follower.stop()
    assert (
        f"keeps model {own['version']}, refusing the champion: model 'linear' ({alien.version}) reads CompPrice, Income, but"
        in caplog.text
    )
    recs = read_all(settings, t["predictions"], "read_uncommitted")
    assert len(recs) == 40 and {dict(r.headers)["model_version"].decode() for r in recs} == {
        own["version"]
    }, "never scored by the alien"
