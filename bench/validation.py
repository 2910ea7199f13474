"""Validation: jsonschema (the source of truth) against the quick checks run first, side by side in one run: the scoring
worker's on good events and on bad ones (which always go to jsonschema for their reason), and the stream's on prediction
records (`check_records`, which every batch of `stream_predictions` goes through)."""

from __future__ import annotations
import json
from pathlib import Path
from .common import log, interleaved_rates, table, write_result, load

NAME = "validation"


def run(quick: bool = False, out: Path | None = None, **_) -> dict:
    "Time each way of validating a batch of 500 events; write validation.json; return its results."
    from sales_prediction_kafka.data import generate_sales
    from sales_prediction_kafka.models import SalesModel
    from sales_prediction_kafka.replay import table_events
    import jsonschema
    from sales_prediction_kafka.serve import (
        EventValidator,
        event_rejection,
        event_schema,
        example_events,
        parse_event,
    )
    from sales_prediction_kafka.message import PREDICTION_SCHEMA, check_records, prediction_records

    load_before, n = load(), 500
    model = SalesModel("linear").fit(generate_sales(400, seed=1).dropna())
    v = EventValidator(event_schema(model))
    good = [
        json.dumps(e).encode()
        for e in table_events(generate_sales(n, seed=2, missing=0.1).drop(columns="Sales"))
    ]
    bad = [x for k, x in example_events(v.schema).items() if k not in ("good", "oversized")] * (
        n // 8
    )
    parsed = [parse_event(b) for b in good]
    records = prediction_records(
        range(n), [float(i) for i in range(n)], [i + 0.25 for i in range(n)]
    )
    predictions = jsonschema.Draft202012Validator(PREDICTION_SCHEMA)
    assert all(
        v.quick_ok(e) == (event_rejection(e, v.schema, v.jsonschema) is None) for e in parsed
    ), "quick check disagrees"
    sides = {
        "json.loads only": lambda: [json.loads(b) for b in good],
        "jsonschema iter_errors (parsed)": lambda: [
            next(v.jsonschema.iter_errors(e), None) for e in parsed
        ],
        "jsonschema is_valid (parsed)": lambda: [v.jsonschema.is_valid(e) for e in parsed],
        "quick check (parsed)": lambda: [v.quick_ok(e) for e in parsed],
        "EventValidator, good events (bytes)": lambda: [v(b) for b in good],
        "EventValidator, bad events (bytes)": lambda: [v(b) for b in bad],
        "prediction records: check_records": lambda: check_records(records),
        "prediction records: jsonschema is_valid": lambda: [
            predictions.is_valid(r) for r in records
        ],
    }
    rates = interleaved_rates(sides, n, 0.05 if quick else 0.3)
    rows = [
        {"side": k, "events_per_s": r["rows_per_s"], "us_per_event": 1e6 / r["rows_per_s"]}
        for k, r in rates.items()
    ]
    g = {k: r["rows_per_s"] for k, r in rates.items()}
    ratios = {
        "quick/jsonschema is_valid": g["quick check (parsed)"] / g["jsonschema is_valid (parsed)"],
        "EventValidator good/bad": g["EventValidator, good events (bytes)"]
        / g["EventValidator, bad events (bytes)"],
        "check_records/jsonschema (prediction records)": g["prediction records: check_records"]
        / g["prediction records: jsonschema is_valid"],
    }
    result = {
        "quick": quick,
        "events": n,
        "rows": rows,
        "ratios": ratios,
        "load_before": load_before,
        "load_after": load(),
        "notes": [
            "bad events: one of each rejection reason a message can earn (not oversized), repeated",
            "rates are per event over a 500-event batch, sides timed in interleaved rounds",
        ],
    }
    path = write_result(NAME, result, out)
    print("\n## Event validation (one 500-event batch; per event)\n")
    print(table(rows))
    print()
    print(table([ratios]))
    log.info("validation -> %s", path)
    return result
