"""Toxiproxy (Shopify's TCP fault proxy) for the network-fault tests: find or install the server, run it on a free loopback
port, and drive its HTTP API (proxies, and the toxics that make their links slow, reset, silent or narrow).

A proxy forwards one listen port to one upstream; toxics act on one direction of every connection through it:
`downstream` is what the server sends back (Toxiproxy's default), `upstream` what the client sends. The toxics used here
(attributes as in Toxiproxy 2.12's toxics/*.go): latency {latency, jitter} ms; reset_peer {timeout} ms, then a TCP RST;
timeout {timeout} ms: data is dropped and the connection closed after it, or never with 0 (a half-open connection) --
removing it closes the connections it held; bandwidth {rate} KB/s; limit_data {bytes}."""

import json, os, subprocess, time, urllib.error, urllib.request
from contextlib import contextmanager
from pathlib import Path
from sales_prediction_kafka.broker import free_port
from sales_prediction_kafka.config import cache_home

VERSION = "2.12.0"
INSTALL = Path(__file__).resolve().parent.parent / "tools" / "install_toxiproxy.sh"


def server_path() -> Path:
    "Where tools/install_toxiproxy.sh puts the server (`TOXIPROXY_SERVER` overrides it)."
    return Path(
        os.environ.get("TOXIPROXY_SERVER")
        or cache_home() / f"toxiproxy-{VERSION}" / "toxiproxy-server"
    )


def ensure_server() -> Path:
    "The server binary, installed by tools/install_toxiproxy.sh if missing (no Go: a failure that says so, never a skip)."
    path = server_path()
    if not os.access(path, os.X_OK):
        r = subprocess.run(["sh", str(INSTALL)], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0 and os.access(path, os.X_OK), (
            f"Toxiproxy {VERSION} could not be installed:\n{r.stderr[-3000:]}"
        )
    return path


class Toxiproxy:
    "A Toxiproxy server on a free loopback port, started and stopped by the tests; logs to `log`."

    def __init__(self, log: Path):
        self.port, self.log, self.proc = free_port(), Path(log), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> "Toxiproxy":
        "Start the server and wait until its API answers."
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(ensure_server()), "-host", "127.0.0.1", "-port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("GET", "/version")
                return self
            except OSError:
                assert self.proc.poll() is None, (
                    f"toxiproxy-server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
                assert time.monotonic() < deadline, (
                    f"Toxiproxy's API did not answer at {self.url} within {timeout:.0f} s"
                )
                time.sleep(0.1)

    def stop(self):
        "Stop the server (SIGTERM, then SIGKILL after 10 s)."
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def call(self, method: str, path: str, body: dict | None = None):
        "One API request; the decoded JSON answer (None for an empty one). An API error raises, naming the answer."
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(
                f"Toxiproxy {method} {path}: {e.code} {e.read()[:500]!r}"
            ) from None
        return json.loads(text) if text.strip() else None

    def proxy(self, name: str, upstream: str) -> "Proxy":
        "A new proxy from a free loopback port to `upstream` (host:port)."
        got = self.call(
            "POST",
            "/proxies",
            {"name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": True},
        )
        return Proxy(self, name, int(got["listen"].rsplit(":", 1)[1]), upstream)

    def reset(self):
        "Every proxy enabled, every toxic removed."
        self.call("POST", "/reset")


class Proxy:
    "One Toxiproxy proxy: clients connect to `port`, it connects to `upstream`."

    def __init__(self, server: Toxiproxy, name: str, port: int, upstream: str):
        self.server, self.name, self.port, self.upstream = server, name, port, upstream

    def __repr__(self):
        return f"Proxy({self.name}: 127.0.0.1:{self.port} -> {self.upstream})"

    def add(
        self,
        type: str,
        stream: str = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
        **attributes,
    ) -> str:
        "Add a toxic (e.g. `add('latency', latency=100, jitter=50)`); its name."
        name = name or f"{type}_{stream}"
        self.server.call(
            "POST",
            f"/proxies/{self.name}/toxics",
            {
                "name": name,
                "type": type,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        return name

    def remove(self, name: str):
        "Remove the toxic `name`."
        self.server.call("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def toxics(self) -> list[dict]:
        "The active toxics."
        return self.server.call("GET", f"/proxies/{self.name}/toxics")

    def clear(self):
        "Remove every toxic."
        for t in self.toxics():
            self.remove(t["name"])

    @contextmanager
    def toxic(self, type: str, stream: str = "downstream", **attributes):
        "A toxic for the duration of the block."
        name = self.add(type, stream, **attributes)
        try:
            yield name
        finally:
            self.remove(name)
