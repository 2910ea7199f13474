"""Serving start: a `sales-kafka serve` worker on the sample run's best net, timed from process start to ready (the worker
logs that it owns its partitions) with its RSS then, loading the net from model.npz (numpy, no TensorFlow) and, side by
side, from the same folder without model.npz (the Keras path every folder took before); every worker's predictions are
compared with the Keras-loaded model's."""

from __future__ import annotations
import json, queue, shutil, signal, subprocess, sys, tempfile, threading, time
from pathlib import Path
from .common import log, kafka, serve_topics, tag, table, write_result, load, targets_line

NAME = "serving_start"
SALES_KAFKA = str(Path(sys.executable).parent / "sales-kafka")
READY = "now owns partitions"  # what the worker logs once it has joined its group and holds its partitions
LOADED = "loaded net model"  # what it logs once the model is loaded
SIDES = {  # side -> (model folder, python code run before the command, or None)
    "numpy (model.npz)": ("npz", None),
    "keras (no model.npz)": ("keras", None),
    # diagnostic: the numpy side with jsonschema's optional IRI checker absent (jsonschema imports it, 1 s; serve imports
    # jsonschema on first use only, so this side should equal the numpy side)
    "numpy, without rfc3987_syntax": ("npz", "import sys; sys.modules['rfc3987_syntax'] = None"),
}
RSS_TARGET_MB, READY_TARGET_S = 200, 2.0
IMPORTS = (
    "sales_prediction_kafka.serve",
    "jsonschema",
    "rfc3987_syntax",
    "pandas",
    "numpy",
    "kafka",
    "click",
    "sales_prediction_kafka.models",
    "sales_prediction_kafka.registry",
    "sales_prediction_kafka.stream",
)


def import_seconds() -> dict:
    "Cumulative import seconds of `IMPORTS` when a fresh interpreter imports the serve module (`python -X importtime`)."
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import sales_prediction_kafka.serve"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    out = {}
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line[len("import time:") :].split("|")
            if name.strip() in IMPORTS and name.strip() not in out:
                out[name.strip()] = int(cumulative) / 1e6
    return out


def sample_net(home: Path, epochs: int, seed: int = 42) -> tuple:
    "The sample run's best net (all features, outliers kept) fitted on its training split and saved twice: with model.npz and without; the test split."
    from sales_prediction_kafka.data import SAMPLE_CSV, TARGET, load_table
    from sales_prediction_kafka.models import NET_NPZ, make_model, save_model, split

    raw = load_table(SAMPLE_CSV, TARGET)
    train, test = split(raw[raw[TARGET].notna()], 0.2, seed)
    npz = save_model(
        make_model("net", outliers="keep", seed=seed, epochs=epochs).fit(train), home / "npz"
    )
    keras = Path(shutil.copytree(npz, home / "keras"))
    (keras / NET_NPZ).unlink()
    return {"npz": npz, "keras": keras}, test


def rss_mb(pid: int) -> dict:
    "VmRSS and VmHWM (peak) of process `pid`, in MB."
    status = dict(
        l.split(":", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in l
    )
    return {k: int(status[f"Vm{k}"].split()[0]) / 1024 for k in ("RSS", "HWM")}


def start_worker(folder: Path, prelude: str | None, servers: str, t: dict, log_file: Path) -> dict:
    "Start a worker; seconds from start to model loaded and to ready, its RSS at ready, and the process."
    cmd = (
        [sys.executable, "-c", f"{prelude}; from sales_prediction_kafka.cli import main; main()"]
        if prelude
        else [SALES_KAFKA]
    )
    args = [
        "serve",
        "--model",
        str(folder),
        "--bootstrap-servers",
        servers,
        *serve_topics(t),
        "--group-id",
        t["group"],
        "--models-topic",
        t["models"],
        "--max-records",
        "500",
    ]
    lines, err = queue.Queue(), open(log_file, "a")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )

    def pump():
        for line in proc.stderr:
            lines.put((time.monotonic(), line))
            err.write(line)

    threading.Thread(target=pump, daemon=True).start()
    seen, deadline = {}, t0 + 120
    while READY not in seen:
        try:
            at, line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            raise RuntimeError(f"worker on {folder} not ready within 120 s; see {log_file}")
        for key in (LOADED, READY):
            if key in line and key not in seen:
                seen[key] = at - t0
    return {
        "loaded_s": seen.get(LOADED),
        "ready_s": seen[READY],
        **{f"{k.lower()}_mb": v for k, v in rss_mb(proc.pid).items()},
        "proc": proc,
        "imports_tensorflow": None,
    }


def stop(proc: subprocess.Popen):
    "SIGTERM a worker and wait for it."
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def predictions(settings, topic: str, n: int, timeout: float = 60) -> dict:
    "prediction_index -> predicted_sales of the first `n` records of `topic`."
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        out, deadline = {}, time.monotonic() + timeout
        while len(out) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(out)} of {n} predictions on {topic} in {timeout} s")
            for recs in c.poll(timeout_ms=500).values():
                for r in recs:
                    v = json.loads(r.value)
                    out[v["prediction_index"]] = v["predicted_sales"]
        return out
    finally:
        c.close()


def run(
    quick: bool = False,
    bootstrap_servers: str | None = None,
    out: Path | None = None,
    rounds: int | None = None,
    **_,
) -> dict:
    "Run the serving-start benchmark; write serving_start.json; return its results."
    from sales_prediction_kafka.models import load_model
    from sales_prediction_kafka.replay import replay, table_events

    rounds = rounds or (1 if quick else 3)
    load_before = load()
    with (
        tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp,
        kafka(bootstrap_servers) as settings,
    ):
        tmp = Path(tmp)
        folders, test = sample_net(tmp, 3 if quick else 50)
        events = list(table_events(test))
        # the Keras-loaded net
        reference = load_model(folders["keras"], weights="keras").predict_records(events)
        expected = {e["event_id"]: float(p) for e, p in zip(events, reference)}
        rows, diffs, imports = [], {}, []
        for r in range(rounds):  # interleaved: every side once per round, the order rotating
            order = list(SIDES)[r % len(SIDES) :] + list(SIDES)[: r % len(SIDES)]
            imports.append(import_seconds())
            for side in order:
                folder, prelude = SIDES[side]
                t = {
                    k: tag(f"bench-start-{k}")
                    for k in ("events", "predictions", "dlq", "group", "models")
                }
                w = start_worker(
                    folders[folder], prelude, settings.bootstrap_servers, t, tmp / "workers.log"
                )
                try:
                    tf = subprocess.run(
                        ["grep", "-c", "tensorflow", f"/proc/{w['proc'].pid}/maps"],
                        capture_output=True,
                        text=True,
                    )
                    w["imports_tensorflow"] = int(tf.stdout.strip() or 0) > 0
                    if r == 0:  # the predictions of each side, once
                        replay(events, settings, t["events"], progress=False)
                        got = predictions(settings, t["predictions"], len(events))
                        diffs[side] = max(abs(got[i] - p) for i, p in expected.items())
                finally:
                    stop(w.pop("proc"))
                rows.append({"side": side, "round": r + 1, **w})
                log.info(
                    "serving start %s round %d: ready %.2f s, RSS %.0f MB",
                    side,
                    r + 1,
                    w["ready_s"],
                    w["rss_mb"],
                )
    med = lambda side, k: sorted(x[k] for x in rows if x["side"] == side)[
        len([x for x in rows if x["side"] == side]) // 2
    ]
    summary = [
        {
            "side": s,
            "ready_s": med(s, "ready_s"),
            "loaded_s": med(s, "loaded_s"),
            "rss_mb": med(s, "rss_mb"),
            "peak_rss_mb": med(s, "hwm_mb"),
            "tensorflow_mapped": all(x["imports_tensorflow"] for x in rows if x["side"] == s),
            "max_abs_diff_vs_keras": diffs[s],
        }
        for s in SIDES
    ]
    import_s = {k: sorted(i.get(k, 0.0) for i in imports)[len(imports) // 2] for k in IMPORTS}
    by = {x["side"]: x for x in summary}
    new, old = by["numpy (model.npz)"], by["keras (no model.npz)"]
    ratios = {
        "ready numpy/keras": new["ready_s"] / old["ready_s"],
        "rss numpy/keras": new["rss_mb"] / old["rss_mb"],
    }
    targets = {
        f"ready <= {READY_TARGET_S} s": new["ready_s"] <= READY_TARGET_S,
        f"RSS <= {RSS_TARGET_MB} MB": new["rss_mb"] <= RSS_TARGET_MB,
        "no TensorFlow in the numpy worker": not new["tensorflow_mapped"],
        "predictions equal the Keras model's to 1e-6": all(d <= 1e-6 for d in diffs.values()),
    }
    result = {
        "quick": quick,
        "rounds": rounds,
        "events_checked": len(events),
        "rows": rows,
        "summary": summary,
        "ratios": ratios,
        "import_s": import_s,
        "targets": targets,
        "notes": [
            "each worker: `sales-kafka serve --model <folder>` (the CLI's INFO logs, following a fresh, empty registry topic)",
            "ready_s: process start to the log line 'now owns partitions'; loaded_s: to 'loaded net model'",
            "rss_mb: VmRSS at ready; peak_rss_mb: VmHWM then; medians over the rounds, sides interleaved",
            "max_abs_diff_vs_keras: dollars, each worker's predictions of the test split's events against "
            "load_model(weights='keras').predict_records in this process",
            "import_s: median cumulative seconds of each import when a fresh interpreter imports serve (-X importtime)",
            "'numpy, without rfc3987_syntax' is a diagnostic: jsonschema (imported by serve) imports that optional "
            "IRI checker, which builds a grammar at import",
        ],
        "load_before": load_before,
        "load_after": load(),
    }
    path = write_result(NAME, result, out)
    print(
        f"\n## Serving start (a serve worker on the sample's net: start to ready, RSS at ready; medians of {rounds} interleaved rounds)\n"
    )
    print(table(summary))
    print("\n" + ", ".join(f"{k}: {v:.2f}" for k, v in ratios.items()))
    print(
        "importing serve (s, cumulative): "
        + ", ".join(
            f"{k.removeprefix('sales_prediction_kafka.')} {v:.2f}" for k, v in import_s.items()
        )
    )
    print(targets_line(targets, path))
    return result
