"""The README's live and loop demos, run as written: every shell line of the sections "Live scoring and monitoring" and
"The loop", in bash, in a folder laid out like a checkout after `make run`, against a local broker in a home of its own whose
registry already holds a champion trained on another table (a broker used before). Background jobs (`... &`) are tracked and
stopped with SIGTERM; a command that runs until stopped (consume, monitor, dashboard) gets Ctrl-C once it has shown what it is
for. Any exit code but 0 fails, and so does an outcome the README does not promise. If the README changes, this test runs the
new lines."""
import json, os, re, shutil, signal, subprocess, time, urllib.request
from pathlib import Path
import numpy as np, pandas as pd
import pytest
from sales_prediction_kafka.broker import LocalBroker
from sales_prediction_kafka.config import KafkaSettings, cache_home
from sales_prediction_kafka.models import SalesModel, save_model
from sales_prediction_kafka.registry import model_record, promote, publish, read_registry
from helpers import ROOT, read_all

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
SECTIONS = ("## Live scoring and monitoring", "## The loop", "## Forecast first, truth later")
UNTIL_STOPPED = ("consume", "monitor", "dashboard")  # the README's foreground commands that run until Ctrl-C


def shell_blocks(readme:str, heading:str) -> list[str]:
    "The ```sh blocks of the README section that starts with `heading`."
    section = readme.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def commands(block:str) -> list[tuple[str, bool]]:
    "The block's commands in order, comments dropped: (command, runs in the background)."
    out = []
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        parts = [p.strip() for p in re.split(r"(?<!&)&(?!&)", line)]
        out += [(p, i < len(parts) - 1) for i, p in enumerate(parts) if p]
    return out


class Shell:
    "Runs README lines in `cwd` with `env`: each in bash, its output in a log of its own; background jobs kept to stop later."
    def __init__(self, cwd:Path, env:dict):
        self.cwd, self.env, self.jobs, self.done, self.n = cwd, env, [], [], 0

    def start(self, cmd:str) -> tuple[subprocess.Popen, Path]:
        self.n += 1
        log = self.cwd/"logs"/f"{self.n:02d}.log"
        out = open(log.with_suffix(".out"), "wb")
        p = subprocess.Popen(["bash", "-c", cmd], cwd=self.cwd, env=self.env, stdout=out, stderr=open(log, "wb"),
                             start_new_session=True)
        return p, log

    def run(self, cmd:str, background:bool, ready=None, timeout:float=300) -> dict:
        "Run one command; a foreground one to its end, or (if `ready` is given) until `ready(stdout)` holds, then Ctrl-C."
        if m := re.fullmatch(r"(\w+)=(\S+)", cmd): self.env[m[1]] = m[2]; return {}
        p, log = self.start(cmd)
        job = {"cmd": cmd, "proc": p, "log": log}
        if background: self.jobs.append(job); return job
        deadline = time.monotonic() + timeout
        while p.poll() is None and not (ready and ready(self.stdout(job))):
            assert time.monotonic() < deadline, f"{cmd!r} did not finish in {timeout} s; its log:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        if p.poll() is None: os.killpg(p.pid, signal.SIGINT)  # Ctrl-C, as the reader would
        self.finish(job)
        return job

    @staticmethod
    def stdout(job:dict) -> str: return job["log"].with_suffix(".out").read_text(errors="replace")

    def finish(self, job:dict, timeout:float=60):
        "Wait for `job`; fail unless it exited 0."
        try: rc = job["proc"].wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(job["proc"].pid, signal.SIGKILL); job["proc"].wait(); rc = "killed after not stopping"
        job["rc"] = rc
        self.done.append(job)
        assert rc == 0, f"{job['cmd']!r} exited {rc}; its log:\n{job['log'].read_text()[-3000:]}"

    def stop_jobs(self):
        "SIGTERM every background job (as `kill %1 %2 ...`), then wait for each; fail unless each exited 0."
        jobs, self.jobs = self.jobs, []
        for j in jobs:
            if j["proc"].poll() is None: os.killpg(j["proc"].pid, signal.SIGTERM)
        for j in jobs: self.finish(j)

    def kill_all(self):
        "Teardown: nothing this test started may outlive it."
        for j in self.jobs + self.done:
            if j["proc"].poll() is None: os.killpg(j["proc"].pid, signal.SIGKILL); j["proc"].wait()


def url_answers(out:str) -> bool:
    "The dashboard printed its URL and the page loads (200)."
    if not (m := re.search(r"dashboard at (http://\S+)", out)): return False
    with urllib.request.urlopen(m[1], timeout=10) as r: return r.status == 200


ALERT_TEXT = {"input_drift": "input drift in ", "drift": " vs limit ", "model_decision": ": model "}  # how the page words each kind


def page_problems(chromium:str, url:str, kinds:set) -> list[str]:
    "Open the live page in headless Chromium: its page errors, empty panels and alert kinds in `kinds` it does not list."
    from playwright.sync_api import sync_playwright
    from helpers import CHROMIUM_ARGS
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page, errors = browser.new_page(viewport={"width": 1280, "height": 1500}), []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url); page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            texts = lambda: page.locator("#alerts li").all_inner_texts()
            deadline = time.monotonic() + 30  # the page draws the state it was sent on connecting; give it time to arrive
            while not all(any(ALERT_TEXT[k] in t for t in texts()) for k in kinds) and time.monotonic() < deadline: time.sleep(0.5)
            panels = {"rolling figures": "#figures tbody tr", "partitions": "#partitions tbody tr", "model versions": "#models tbody tr",
                      "latest messages": "#records tbody tr", "alerts": "#alerts li"}
            return ([f"page error: {e}" for e in errors] + [f"empty panel: {n}" for n, sel in panels.items() if page.locator(sel).count() == 0]
                    + (["empty chart: predicted vs actual"] if page.evaluate("document.getElementById('pva').data?.[0]?.x?.length ?? 0") == 0 else [])
                    + (["no model version in the header"] if page.locator("#version").inner_text() == "-" else [])
                    + [f"the {k} alert is not listed" for k in sorted(kinds) if not any(ALERT_TEXT[k] in t for t in texts())])
        finally: browser.close()


def alien_champion(settings:KafkaSettings, tmp:Path) -> str:
    "Publish and promote a model trained on another table (CompPrice, Income -> y): the champion of a broker used before."
    rng = np.random.default_rng(0)
    other = pd.DataFrame({"CompPrice": rng.normal(size=200), "Income": rng.normal(size=200)}).assign(y=lambda d: 3 * d.CompPrice + d.Income)
    rec = publish(settings, model_record(save_model(SalesModel("linear", target="y").fit(other), tmp/"alien"), "another-table"))
    promote(settings, rec["version"], "left from an earlier project")
    return rec["version"]


@pytest.fixture
def checkout(tmp_path):
    "A folder laid out as the README assumes after `make run`: .venv, the package's sample CSV, one run in outputs/runs."
    work = tmp_path/"checkout"
    (work/"logs").mkdir(parents=True)
    (work/".venv").symlink_to(ROOT/".venv")
    (work/"sales_prediction_kafka"/"data").mkdir(parents=True)
    (work/"sales_prediction_kafka"/"data"/"sales_sample.csv").symlink_to(ROOT/"sales_prediction_kafka"/"data"/"sales_sample.csv")
    shutil.copytree(ROOT/"outputs"/"example", work/"outputs"/"runs"/"20260101-000000-exampl")
    home = tmp_path/"home"  # SALES_KAFKA_HOME: the broker's data here, the jars from the usual cache
    jars = cache_home()/"kafka-4.3.1"/"jars"
    (home/"kafka-4.3.1").mkdir(parents=True)
    (home/"kafka-4.3.1"/"jars").symlink_to(jars)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")} | {"SALES_KAFKA_HOME": str(home)}
    return work, home, env


@pytest.mark.browser
def test_readme_live_and_loop_sections_run_as_written(checkout, chromium):
    work, home, env = checkout
    readme = (ROOT/"README.md").read_text()
    live, loop, late = (shell_blocks(readme, h) for h in SECTIONS)
    assert live and loop and late, "the README lost its live, loop or late-actuals section"
    broker = LocalBroker(home/"broker").start(timeout=120)  # what `broker start` in the loop section then finds running
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    sh = Shell(work, env)
    try:
        alien = alien_champion(settings, work)
        sent = []
        def ready(cmd:str):
            "When a command that runs until stopped has shown what it is for."
            name = cmd.split()[1]
            if name == "consume": return lambda out: len(out.splitlines()) >= sent[-1]
            if name == "monitor": t0 = time.monotonic(); return lambda out: time.monotonic() - t0 > 5
            if name == "dashboard": return url_answers
            raise AssertionError(f"the README runs {cmd!r} in the foreground: when has it shown what it is for?")
        for block in live:
            for cmd, bg in commands(block):
                job = sh.run(cmd, bg, ready(cmd) if not bg and cmd.split()[1:2] and cmd.split()[1] in UNTIL_STOPPED else None)
                if cmd.split()[1:2] == ["replay"]: sent.append(int(re.search(r"^(\d+) records to", sh.stdout(job), re.M)[1]))
        consumed = next(sh.stdout(j) for j in sh.done if j["cmd"].split()[1] == "consume").splitlines()
        assert len({json.loads(l)["value"]["prediction_index"] for l in consumed}) == sent[0], "consume shows every prediction"
        live_jobs = list(sh.jobs)
        sh.stop_jobs()
        live_preds = read_all(settings, "sales_predictions", "read_committed")
        assert len({json.loads(r.value)["prediction_index"] for r in live_preds}) == sent[0], "every sample event is predicted"
        for j in live_jobs:  # each worker refused the alien champion and scored with the run that fits
            assert f"refusing the champion {alien} of sales_models: model 'linear' ({alien}) reads CompPrice, Income" in j["log"].read_text()
        live_end = {}  # partition -> its last live prediction's offset: the loop's come after
        for r in live_preds: live_end[r.partition] = max(live_end.get(r.partition, -1), r.offset)

        for block in loop:
            for cmd, bg in commands(block): sh.run(cmd, bg)
        listed = sh.stdout(sh.done[-1])  # `models list`, the section's last line
        reg = read_registry(settings)
        total = len(pd.read_csv(work/"outputs"/"shift.csv"))
        deadline = time.monotonic() + 180
        while True:  # the workers may still be scoring the end of the stream: every event, a prediction or a dead letter
            preds = [r for r in read_all(settings, "sales_predictions", "read_committed") if r.offset > live_end.get(r.partition, -1)]
            dead = [json.loads(m.value) | {"why": dict(m.headers)["dlq.reason"].decode()} for m in read_all(settings, "sales_events.dlq")]
            if len({json.loads(r.value)["prediction_index"] for r in preds}) + len(dead) >= total: break
            assert time.monotonic() < deadline, f"{len(preds)} predictions and {len(dead)} dead letters of {total} events"
            time.sleep(2)
        alerts = [json.loads(m.value) for m in read_all(settings, "sales_alerts")]
        dash = next(j for j in sh.jobs if j["cmd"].split()[1] == "dashboard")  # the loop's page, still running
        kinds = {a["alert"] for a in alerts}
        problems = page_problems(chromium, re.search(r"dashboard at (http://\S+)", sh.stdout(dash))[1], kinds)
        sh.stop_jobs()

        for block in late:  # forecasts first, their actuals 100 events later, joined on Kafka
            for cmd, bg in commands(block):
                sh.run(cmd, bg, ready(cmd) if not bg and cmd.split()[1:2] == ["monitor"] else None)
        late_logs = [j["log"].read_text() + sh.stdout(j) for j in sh.done[-2:]]  # monitor, then dlq list
        for j in list(sh.jobs): sh.jobs.remove(j); sh.finish(j, timeout=300)  # serve and join end after 30 s idle
        first_id = int(re.search(r"--first-id (\d+)", late[0])[1])
        ours = lambda recs: [r for r in recs if int(r.key) >= first_id]
        forecast = {int(r.key) for r in ours(read_all(settings, "sales_predictions", "read_committed"))}
        joined = ours(read_all(settings, "sales_joined", "read_uncommitted"))
    finally:
        sh.kill_all()
        broker.stop()

    # what the loop section promises that does not hang on how fast this machine trains (tests/test_loop.py's shift scenario
    # checks the verdict, the swap and the error after it with the learner's timing under control)
    logs = {j["cmd"]: j["log"].read_text() for j in sh.done}
    shift_after = int(re.search(r"--shift-after (\d+)", loop[0])[1])
    first = reg.versions[next(v for v in reg.versions if reg.versions[v]["run"] != "another-table")]
    assert re.search(rf"^[* ] {first['version']} .* run {first['run']}", listed, re.M), f"models list shows the first champion:\n{listed}"
    assert problems == [], f"the dashboard during the loop (alerts of kinds {sorted(kinds)}): {problems}"
    sample = pd.read_csv(ROOT/"sales_prediction_kafka"/"data"/"sales_sample.csv")
    assert len(forecast) > 0.9 * len(sample), f"{len(forecast)} of {len(sample)} late-actual events forecast"
    assert sorted(int(r.key) for r in joined) == sorted(forecast), "each forecast joined with its actual, once"
    for r in joined:
        v = json.loads(r.value)
        assert v["actual_sales"] == sample["Sales"][v["prediction_index"] - first_id] and dict(r.headers)["actual"] == b"joined"
    assert "label delay p50" in late_logs[0] and "no dead letters on sales_join.dlq" in late_logs[1], late_logs
    drifts = [a for a in alerts if a["alert"] == "input_drift"]
    assert drifts and drifts[0]["reasons"][0] == "Marketing_Spend" and drifts[0]["features"]["Marketing_Spend"] > 0.25, alerts
    learnt = next(t for c, t in logs.items() if c.split()[1] == "learn")
    assert "retraining (drift: " in learnt, f"the learner retrains on a drift alert: {learnt[-3000:]}"
    rows = [json.loads(r.value) | {"v": dict(r.headers)["model_version"].decode()} for r in preds]
    assert {d["why"] for d in dead} <= {"too_imputed"}, dead  # the generated table has gaps: an event lacking most features
    assert sorted({r["prediction_index"] for r in rows} | {d["event_id"] for d in dead}) == list(range(total)), "every loop event scored"
    assert alien not in {r["v"] for r in rows} | {dict(r.headers)["model_version"].decode() for r in live_preds}, "never the alien"
    for w in ("w0", "w1"): assert any(f"--worker-id {w}" in c and "scored" in t for c, t in logs.items()), f"{w} scored"
    mae = lambda rs: float(np.mean([abs(r["error"]) for r in rs]))
    print(f"\nloop: MAE {mae([r for r in rows if r['prediction_index'] < shift_after]):,.0f} before the shift, "
          f"{mae([r for r in rows if r['prediction_index'] >= shift_after]):,.0f} after; {len(reg.decisions)} decision(s)\n{listed}")
    for c, t in logs.items(): assert t.count("received SIGTERM") <= 1 and "Traceback" not in t, (c, t[-3000:])
