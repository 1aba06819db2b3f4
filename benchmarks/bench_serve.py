"""Load test of `saekit serve` from a second process, on localhost, bounded in count and time.

Starts `saekit serve SAE...` on a free 127.0.0.1 port (or uses --url), waits for the index,
then runs --clients threads that each loop over a mix of page loads (the HTML shell and its
static files, the status, a feature search, a random feature page, an inspector request) and,
every --steer-every iterations, one steering request followed to its end over the SSE stream.
It stops after --requests page loads or --seconds, whichever comes first, prints p50/p95 per
kind and exits 1 if any request failed. --screenshots DIR saves a picture of each page.

    flock /tmp/bench.lock python benchmarks/bench_serve.py SAE --tokens 20k --clients 8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

STATIC = ["/", "/static/style.css", "/static/util.js", "/static/pages.js", "/static/steer.js",
          "/static/app.js"]  # fmt: skip


def fetch(url: str, body: dict | None = None, timeout: float = 300) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        if r.status >= 400:
            raise RuntimeError(f"{url}: HTTP {r.status}")
        return r.read()


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "saekit", "serve", *args.sae, "--port", str(port),
           "--tokens", args.tokens, *(["--model", args.model] if args.model else []),
           *sum((["--autointerp", a] for a in args.autointerp), [])]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if json.loads(fetch(url + "/api/status", timeout=5))["ready"]:
                break
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    print(f"server ready after {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return proc, url


class Load:
    """Shared counters of the client threads."""

    def __init__(self, url: str, sae: str, d_sae: int, args: argparse.Namespace) -> None:
        self.url, self.sae, self.d_sae, self.args = url, sae, d_sae, args
        self.lock = threading.Lock()
        self.times: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.pages = 0
        self.deadline = time.perf_counter() + args.seconds

    def timed(self, kind: str, fn) -> None:
        start = time.perf_counter()
        try:
            fn()
        except Exception as err:  # recorded, reported, and the run fails
            with self.lock:
                self.errors.append(f"{kind}: {err}")
            return
        with self.lock:
            self.times.setdefault(kind, []).append(time.perf_counter() - start)

    def page_load(self, rng: random.Random) -> None:
        u, s = self.url, self.sae

        def load():
            for path in STATIC:
                fetch(u + path)
            fetch(u + "/api/status")
            fetch(f"{u}/api/saes/{s}/features?sort=density&desc=true&limit=200")

        self.timed("page: index (shell + static + status + 200 rows)", load)
        feature = rng.randrange(self.d_sae)
        self.timed("page: feature", lambda: fetch(f"{u}/api/saes/{s}/features/{feature}"))
        text = "The quick brown fox jumps over the lazy dog. " * rng.randint(1, 3)
        self.timed("inspect (model)", lambda: fetch(u + "/api/inspect", {"sae": s, "text": text}))

    def steer(self, rng: random.Random) -> None:
        body = {"sae": self.sae, "prompt": "The weather today is",
                "features": [{"feature": rng.randrange(self.d_sae), "strength": 8.0}],
                "max_new_tokens": self.args.new_tokens}  # fmt: skip

        def run():
            job = json.loads(fetch(self.url + "/api/steer", body))["job"]
            with urllib.request.urlopen(f"{self.url}/api/jobs/{job}/events", timeout=600) as r:
                for line in r:
                    if line.startswith(b"data: "):
                        event = json.loads(line[6:])
                        if event["type"] == "error":
                            raise RuntimeError(event["error"])
                        if event["type"] == "done":
                            return
            raise RuntimeError("the event stream ended without a result")

        self.timed("steer (2 completions, streamed)", run)

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        i = 0
        while time.perf_counter() < self.deadline:
            with self.lock:
                if self.pages >= self.args.requests:
                    return
                self.pages += 1
            self.page_load(rng)
            i += 1
            if i % self.args.steer_every == 0:
                self.steer(rng)


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def screenshots(url: str, out: Path, sae: str, feature: int, token: str) -> None:
    """One picture per page (Playwright driving Debian's chromium); the graph page only when
    the server has transcoders for every layer."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(f"{url}/#/features?token={urllib.parse.quote(token)}")
        page.wait_for_selector("#result-count", timeout=120_000)
        page.screenshot(path=str(out / "serve-features.png"))
        page.goto(f"{url}/#/feature/{sae}/{feature}")
        page.wait_for_selector("#feature-title", timeout=60_000)
        page.locator("#top .tok.cur").first.hover()
        page.screenshot(path=str(out / "serve-feature.png"))
        page.goto(f"{url}/#/inspect?text=" + urllib.parse.quote("def add(a, b):\n    return a + b"))
        page.wait_for_selector("#inspect-top tr", timeout=120_000)
        page.screenshot(path=str(out / "serve-inspect.png"))
        page.goto(f"{url}/#/steer?feature={feature}&strength=12")
        page.click("#steer-go")
        page.wait_for_function("document.getElementById('steer-progress').textContent === 'done'",
                               timeout=300_000)  # fmt: skip
        page.screenshot(path=str(out / "serve-steer.png"))
        if json.loads(fetch(url + "/api/status"))["graph"]["available"]:
            page.goto(f"{url}/#/graph?prompt=" + urllib.parse.quote("The cat sat on the"))
            page.frame_locator("iframe.graph").locator("#detail-title").wait_for(timeout=300_000)
            page.screenshot(path=str(out / "serve-graph.png"))
        browser.close()
    print(f"screenshots in {out}", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sae", nargs="*", help="SAE folders to serve (or --url)")
    p.add_argument("--url", help="an already running server")
    p.add_argument("--model", help="passed to saekit serve")
    p.add_argument("--tokens", default="20k", help="saekit serve --tokens (default 20k)")
    p.add_argument("--autointerp", action="append", default=[], help="saekit serve --autointerp")
    p.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    p.add_argument("--requests", type=int, default=160, help="page-load rounds in all")
    p.add_argument("--seconds", type=float, default=300, help="stop starting rounds after this")
    p.add_argument("--steer-every", type=int, default=5, help="one steering request per N rounds")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens per steered completion")
    p.add_argument("--screenshots", type=Path, help="save serve-*.png pictures here afterwards")
    p.add_argument("--feature", type=int, default=0, help="feature shown in the screenshots")
    p.add_argument("--token", default=" def", help="token searched in the screenshot")
    args = p.parse_args()
    if not args.url and not args.sae:
        p.error("give SAE folders or --url")
    proc, url = (None, args.url) if args.url else start_server(args)
    try:
        status = json.loads(fetch(url + "/api/status"))
        sae = status["saes"][0]
        load = Load(url, sae["name"], sae["indexed"], args)
        threads = [threading.Thread(target=load.client, args=(i,)) for i in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        print(f"{args.clients} clients, {load.pages} rounds in {wall:.1f} s, "
              f"{len(load.errors)} errors; model {status['model']}, SAE {sae['name']} "
              f"({sae['d_sae']} features); load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        print("| request | n | p50 (s) | p95 (s) |\n|---|---|---|---|")
        for kind, values in load.times.items():
            print(
                f"| {kind} | {len(values)} | {percentile(values, 50):.3f} | {percentile(values, 95):.3f} |"
            )
        for line in load.errors[:10]:
            print("error:", line)
        if args.screenshots:
            screenshots(url, args.screenshots, sae["name"], args.feature, args.token)
        return 1 if load.errors else 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
