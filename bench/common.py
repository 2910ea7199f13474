"Shared helpers of the benchmarks: machine facts, a broker for the run, timing, JSON results and tables."

from __future__ import annotations
import json, logging, math, os, platform, re, subprocess, sys, tempfile, time, uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("bench")
RESULTS = Path(__file__).parent / "results"  # where `write_result` puts <name>.json by default


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    "User + system CPU seconds of process `pid` so far, all its threads (librdkafka's and kafka-python's included), or of its thread `thread` alone."
    stat = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    "The CPU model name from /proc/cpuinfo."
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else "unknown"


def java_version() -> str:
    "The first line of `java -version`, or 'absent'."
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    return (
        (out.stderr or out.stdout).splitlines()[0].strip()
        if (out.stderr or out.stdout)
        else "unknown"
    )


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:
        return None


def machine_info() -> dict:
    "Cores, CPU, memory, load and the versions that decide the numbers."
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    versions = {m: _version(m) for m in ("numpy", "pandas", "kafka", "tensorflow", "keras")}
    versions["kafka-python"] = versions.pop("kafka")
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "memory_gib": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "java": java_version(),
        **{k: v for k, v in versions.items()},
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(name: str, data: dict, out: Path | None = None) -> Path:
    "Write `data` with machine info and the time to <out>/<name>.json."
    out = Path(out or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **data,
    }
    path = out / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1, default=float))
    return path


def targets_line(targets: dict, path: Path) -> str:
    "The printed verdict of a benchmark's targets ('met' or 'MISSED' each) and where its results went."
    return (
        "targets: "
        + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items())
        + f"   -> {path}"
    )


def fmt(v) -> str:
    "A table cell: numbers with thousands separators and sensible precision."
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        a = abs(v)
        return (
            f"{v:,.0f}"
            if a >= 1000
            else f"{v:.1f}"
            if a >= 10
            else f"{v:.2f}"
            if a >= 0.1
            else f"{v:.2g}"
        )
    return str(v)


def table(rows: list[dict], cols: list[str] | None = None) -> str:
    "A markdown table of `rows` (dicts) in column order `cols`."
    cols = cols or (list(rows[0]) if rows else [])
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    w = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
    line = lambda xs: (
        "| "
        + " | ".join(x.rjust(n) if i else x.ljust(n) for i, (x, n) in enumerate(zip(xs, w)))
        + " |"
    )
    return "\n".join(
        [line(cols), "|" + "|".join("-" * (n + 2) for n in w) + "|", *map(line, cells)]
    )


def tag(prefix: str) -> str:
    "A fresh name, so runs never read each other's records."
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def serve_topics(t: dict) -> list[str]:
    "The options that name a `serve` worker's events, predictions and dead-letter topics from `t`."
    return [
        *("--events-topic", t["events"], "--predictions-topic", t["predictions"]),
        *("--dead-letter-topic", t["dlq"]),
    ]


@contextmanager
def kafka(bootstrap_servers: str | None = None):
    "KafkaSettings for the given cluster, else for a fresh LocalBroker in a temporary home (stopped afterwards)."
    from sales_prediction_kafka.config import KafkaSettings

    if bootstrap_servers:
        yield KafkaSettings(bootstrap_servers=bootstrap_servers)
        return
    from sales_prediction_kafka.broker import LocalBroker

    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as home:
        broker = LocalBroker(home).start(timeout=120)
        try:
            yield KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        finally:
            broker.stop()


def interleaved_rates(
    sides: dict, rows: int, min_time: float = 0.3, min_rounds: int = 7, max_rounds: int = 200
) -> dict:
    "Time every callable of `sides` in rounds (each side once per round, ~20 ms of calls) so load bursts hit all sides alike; rows/s of each side's median call."
    reps = {}
    for name, f in sides.items():
        t0 = time.perf_counter()
        f()
        # warm-up + calibration
        reps[name] = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-7)))
    times, t_end, r = {k: [] for k in sides}, time.perf_counter() + min_time * len(sides), 0
    while r < min_rounds or (time.perf_counter() < t_end and r < max_rounds):
        order = list(sides)[r % len(sides) :] + list(sides)[: r % len(sides)]
        for name in order:
            f, k = sides[name], reps[name]
            t0 = time.perf_counter()
            for _ in range(k):
                f()
            times[name].append((time.perf_counter() - t0) / k)
        r += 1
    out = {}
    for name, ts in times.items():
        ts.sort()
        med = ts[len(ts) // 2]
        out[name] = {
            "rounds": len(ts),
            "calls_per_round": reps[name],
            "median_s": med,
            "best_s": ts[0],
            "rows_per_s": rows / med,
        }
    return out


def loglog_slope(x: list, y: list) -> float:
    "The least-squares slope of log(y) against log(x)."
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def run_worker(module: str, *args, timeout: float = 3600) -> dict:
    "Run `python -m bench.<module> args...` in a fresh process (so its peak memory is its own); its last JSON line."
    res = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).parent.parent,
    )
    if res.returncode:
        raise RuntimeError(
            f"{module} {' '.join(map(str, args))} failed ({res.returncode}):\n{res.stderr[-3000:]}"
        )
    return json.loads(res.stdout.strip().splitlines()[-1])


def load() -> list[float]:
    "The 1, 5 and 15 minute load averages."
    return [round(x, 2) for x in os.getloadavg()]
