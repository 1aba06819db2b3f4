"""`saekit serve` end to end: a real server (the CLI in a subprocess, on a free localhost port)
over a tiny random Llama, a random SAE and random transcoders for every layer; the JSON API
checked against values computed here independently, then the pages in headless Chromium
(Playwright driving Debian's /usr/bin/chromium; skipped where it is absent, failed under
SAEKIT_CI=1)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import saekit
from circuits_helpers import random_transcoders
from conftest import missing_peer
from saekit.saes import SAE

HOOK = "blocks.1.hook_resid_post"
TOKENS = 1000
EXPLAINED = {3: "commas in lists", 5: "the word the"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: dict | str | None = None, timeout: float = 60) -> tuple[int, dict]:
    """(status, JSON body) of a GET, or of a POST when ``body`` is given."""
    data = None if body is None else (body if isinstance(body, str) else json.dumps(body)).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tiny_lm, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    meta = {"model_name": str(tiny_model_dir), "context_size": 32, "prepend_bos": True,
            "dataset_path": "builtin:python-docs"}  # fmt: skip
    torch.manual_seed(0)
    sae = SAE.create("relu", d_in=64, d_sae=32, metadata={**meta, "hook_name": HOOK})
    sae.save(root / "sae")
    tcs = []
    for i, tc in enumerate(random_transcoders(tiny_lm, d_sae=16)):
        for key, value in meta.items():
            setattr(tc.cfg.metadata, key, value)
        tc.save(root / f"tc{i}")
        tcs.append(str(root / f"tc{i}"))
    (root / "interp").mkdir()
    lines = [{"feature": f, "explanation": text, "scores": {"detection": {"balanced_accuracy": 0.75}}}
             for f, text in EXPLAINED.items()]  # fmt: skip
    (root / "interp" / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {
        "root": root,
        "sae": str(root / "sae"),
        "transcoders": tcs,
        "model": str(tiny_model_dir),
    }


@pytest.fixture(scope="module")
def server(folders):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(saekit.__file__).parents[1])}
    cmd = [sys.executable, "-m", "saekit", "serve", folders["sae"], *folders["transcoders"],
           "--port", str(port), "--tokens", str(TOKENS), "--max-prompt-tokens", "64",
           "--max-new-tokens", "16", "--autointerp", str(folders["root"] / "interp")]  # fmt: skip
    log = folders["root"] / "server.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if call(url + "/api/status", timeout=5)[1]["ready"]:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the server did not finish indexing in 240 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def local(folders, tiny_lm):
    """The same SAE loaded here, to compute the expected answers independently."""
    from saekit import load_sae

    return load_sae(folders["sae"])


def test_a_taken_port_is_a_one_line_error(folders, capsys):
    from saekit.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", folders["sae"], "--port", str(port)]) == 2
    assert capsys.readouterr().err == (
        f"saekit serve: error: --port {port} is in use on 127.0.0.1; pick another with --port\n"
    )
    assert main(["serve", folders["sae"], "--tokens", "0"]) == 2
    assert "--tokens must be positive" in capsys.readouterr().err


def test_startup_line_says_localhost_and_how_to_expose(server, folders):
    lines = (folders["root"] / "server.log").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("saekit serve: "))
    assert lines[at].startswith(f"saekit serve: {server}/ (5 SAE(s)")
    assert "only this machine can connect" in lines[at + 1] and "--host 0.0.0.0" in lines[at + 1]


def test_status_lists_the_saes_and_enables_graphs(server):
    status = call(server + "/api/status")[1]
    names = [s["name"] for s in status["saes"]]
    assert names == ["sae", "tc0", "tc1", "tc2", "tc3"]
    assert status["saes"][0]["explained"] == 2 and status["graph"]["available"]
    assert status["saes"][0]["tokens"] >= TOKENS


def test_search_by_token_ranks_like_the_logit_lens(server, local, tiny_lm):
    tid = tiny_lm.tokenizer(" the", add_special_tokens=False)["input_ids"]
    assert len(tid) == 1
    scores_F = local.W_dec.detach().double() @ tiny_lm.unembed_matrix().detach().double()[:, tid[0]]
    expected = scores_F.argsort(descending=True)[:5].tolist()
    status, found = call(server + "/api/saes/sae/features?token=%20the&limit=5")
    assert status == 200 and [r["feature"] for r in found["rows"]] == expected
    assert found["rows"][0]["token_score"] == pytest.approx(float(scores_F[expected[0]]), rel=1e-5)
    # explanation text and density bounds
    rows = call(server + "/api/saes/sae/features?q=COMMAS")[1]["rows"]
    assert [(r["feature"], r["explanation"], r["score"]) for r in rows] == [
        (3, "commas in lists", 0.75)
    ]
    dens = call(server + "/api/saes/sae/features?sort=density&desc=true&limit=500")[1]["rows"]
    values = [r["density"] for r in dens]
    assert values == sorted(values, reverse=True) and len(values) == 32
    lo = values[10]
    bounded = call(server + f"/api/saes/sae/features?min_density={lo}&limit=500")[1]["rows"]
    assert {r["feature"] for r in bounded} == {r["feature"] for r in dens if r["density"] >= lo}


def test_feature_page_numbers_match_a_hand_count(server, local, tiny_lm):
    from saekit.data.provenance import Provenance, token_batches

    detail = call(server + "/api/saes/sae/features/3")[1]
    prov = Provenance.from_sae(local)[0]
    fires, kept, peak = 0, 0, 0.0
    for ids_BT, keep_BT in token_batches(prov, tiny_lm.tokenizer, 32):  # the CLI's forward_rows
        x = tiny_lm.run_to_hooks(ids_BT, [HOOK])[HOOK]
        acts = local.encode(x)[..., 3].detach().double() * keep_BT
        fires, kept, peak = (
            fires + int((acts > 0).sum()),
            kept + int(keep_BT.sum()),
            max(peak, float(acts.max())),
        )
        if kept >= TOKENS:
            break
    assert (detail["fire_count"], detail["n_tokens"]) == (fires, kept)
    assert detail["density"] == pytest.approx(fires / kept)
    assert detail["max_activation"] == pytest.approx(peak, rel=1e-5)
    assert detail["top"][0]["value"] == pytest.approx(peak, rel=1e-5)
    assert sum(detail["histogram"]["counts"]) == fires
    assert detail["explanation"] == "commas in lists" and detail["quantiles"]
    ex = detail["top"][0]
    assert ex["acts"][ex["centre"]] == pytest.approx(ex["value"])


def test_inspector_matches_the_sae_encoding(server, local, tiny_lm):
    text = "The cat sat on the mat, and the dog"
    status, r = call(server + "/api/inspect", {"sae": "sae", "text": text, "k": 3})
    assert status == 200
    ids = [tiny_lm.bos_token_id, *tiny_lm.tokenizer(text, add_special_tokens=False)["input_ids"]]
    acts_TF = local.encode(tiny_lm.run_to_hooks(torch.tensor([ids]), [HOOK])[HOOK])[0].detach()
    assert len(r["tokens"]) == len(ids) and r["features"][0] == []  # BOS: left out
    for t in range(1, len(ids)):
        expected = acts_TF[t].topk(3).indices.tolist()
        assert [s["feature"] for s in r["features"][t]] == expected
        assert r["features"][t][0]["activation"] == pytest.approx(float(acts_TF[t].max()), rel=1e-5)


def steer_result(server: str, body: dict) -> tuple[dict, list[dict]]:
    status, job = call(server + "/api/steer", body)
    assert status == 202, job
    events = []
    with urllib.request.urlopen(f"{server}/api/jobs/{job['job']}/events", timeout=120) as stream:
        for line in stream:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["type"] in ("done", "error"):
                    break
    return events[-1], events


def test_steering_matches_compare_and_streams(server, local, tiny_lm):
    from saekit.steering import Intervention
    from saekit.steering.compare import compare

    body = {"sae": "sae", "prompt": "The cat sat on", "features": [{"feature": 3, "strength": 40}],
            "max_new_tokens": 6}  # fmt: skip
    last, events = steer_result(server, body)
    assert last["type"] == "done", last
    [expected] = compare(tiny_lm, "The cat sat on", [Intervention(local, {3: 40.0})], 6, k=8)
    result = last["result"]
    assert (result["default"], result["steered"]) == (expected.default, expected.steered)
    assert result["default"] != result["steered"]
    assert result["kl"] == pytest.approx(expected.kl, rel=1e-4)
    finals = {e["which"]: e["text"] for e in events if e["type"] == "final"}
    assert finals == {"default": expected.default, "steered": expected.steered}
    for which, final in finals.items():  # streamed pieces lead up to the final text
        pieces = "".join(e["text"] for e in events if e["type"] == "token" and e["which"] == which)
        assert final.startswith(pieces)
    assert any(e["type"] == "token" for e in events)


def test_concurrent_requests_do_not_mix(server, local, tiny_lm):
    from saekit.steering import Intervention
    from saekit.steering.compare import compare

    strengths = [0.0, 25.0, -25.0, 60.0]
    results: dict[float, dict] = {}

    def one(s: float) -> None:
        body = {"sae": "sae", "prompt": "Hello there", "features": [{"feature": 7, "strength": s}],
                "max_new_tokens": 5}  # fmt: skip
        results[s] = steer_result(server, body)[0]["result"]

    threads = [threading.Thread(target=one, args=(s,)) for s in strengths]
    for t in threads:
        t.start()
    inspected = call(server + "/api/inspect", {"sae": "sae", "text": "Hello there", "k": 2})[1]
    for t in threads:
        t.join(120)
    for s in strengths:
        [expected] = compare(tiny_lm, "Hello there", [Intervention(local, {7: s})], 5, k=8)
        assert results[s]["steered"] == expected.steered, s
    assert results[0.0]["steered"] == results[0.0]["default"]  # add 0 changes nothing
    ids = [
        tiny_lm.bos_token_id,
        *tiny_lm.tokenizer("Hello there", add_special_tokens=False)["input_ids"],
    ]
    acts_TF = local.encode(tiny_lm.run_to_hooks(torch.tensor([ids]), [HOOK])[HOOK])[0].detach()
    assert [s["feature"] for s in inspected["features"][-1]] == acts_TF[-1].topk(2).indices.tolist()


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/api/saes/nope/features", None, 404, "unknown SAE 'nope': this server has sae, tc0"),
        ("/api/saes/sae/features/99", None, 404, "feature 99 is out of range: SAE sae has [0, 32)"),
        ("/api/saes/sae/features?sort=size", None, 400, "sort='size' is not one of feature"),
        ("/api/saes/sae/features?token=hello%20world", None, 400, "token='hello world' is"),
        ("/api/jobs/999", None, 404, "unknown job '999'"),
        ("/api/steer", {"sae": "sae", "prompt": "x", "features": [{"feature": 32}]}, 400,
         "feature 32 is out of range: the SAE has d_sae=32"),
        ("/api/steer", {"sae": "sae", "prompt": "x", "features": [{"feature": 1, "strength": 1e9}]},
         400, "strength 1e+09 of feature 1 is outside [-1000, 1000]"),
        ("/api/steer", '{"sae": "sae", "prompt": "x", "features": [{"feature": 1, "strength": NaN}]}',
         422, "features.0.strength: Input should be a finite number"),
        ("/api/steer", {"sae": "sae", "prompt": "x", "features": [{"feature": 1}], "mode": "boost"},
         400, "mode='boost' is not one of add, clamp, ablate, scale"),
        ("/api/steer", {"sae": "sae", "prompt": "word " * 200, "features": [{"feature": 1}]}, 400,
         "prompt is * tokens; this server allows at most 64"),
        ("/api/steer", {"sae": "sae", "prompt": "x", "features": [{"feature": 1}],
                        "max_new_tokens": 17}, 400, "max_new_tokens 17 is above this server's limit 16"),
        ("/api/inspect", {"sae": "sae", "text": "  "}, 400, "text is empty"),
        ("/api/inspect", "{not json", 422, "the request body is not valid JSON"),
        ("/api/graph", {"prompt": "a " * 30}, 400, "prompt is * tokens; this server allows at most 24"),
    ],
)  # fmt: skip
def test_bad_requests_get_clear_4xx(server, path, body, status, message):
    got, answer = call(server + path, body)
    assert got == status and set(answer) == {"error"}
    head, *rest = message.split("*")  # '*': any text (token counts differ by tokenizer)
    assert answer["error"].startswith(head) and all(part in answer["error"] for part in rest)
    assert "\n" not in answer["error"]
    assert "Traceback" not in answer["error"]


def test_other_host_names_are_refused(server):
    # a page on another site cannot reach this localhost server through its own DNS name
    req = urllib.request.Request(server + "/api/status", headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400
    assert call(server.replace("127.0.0.1", "localhost") + "/api/status")[0] == 200


def test_graph_job_serves_the_viewer(server, folders, tiny_lm):
    from saekit.circuits.run import load_replacement, trace_prompt

    status, job = call(server + "/api/graph", {"prompt": "The cat sat"})
    assert status == 202
    state = call(f"{server}/api/jobs/{job['job']}?wait=120")[1]
    assert state["status"] == "done"
    with urllib.request.urlopen(f"{server}/api/jobs/{job['job']}/viewer", timeout=30) as r:
        page = r.read().decode()
    data = json.loads(page.split('id="graph-data">', 1)[1].split("</script>", 1)[0])
    assert data["metadata"]["prompt"] == "The cat sat" and data["nodes"]
    # the same graph as `saekit attribute` computes here
    mine = trace_prompt(load_replacement(folders["transcoders"], tiny_lm), "The cat sat",
                        check_features=0, max_feature_nodes=400).json  # fmt: skip
    assert [n["node_id"] for n in data["nodes"]] == [n["node_id"] for n in mine["nodes"]]
    assert len(data["links"]) == len(mine["links"])
    weights = {(x["source"], x["target"]): x["weight"] for x in mine["links"]}
    for link in data["links"]:
        assert link["weight"] == pytest.approx(
            weights[link["source"], link["target"]], rel=1e-4, abs=1e-6
        )


# ---------------------------------------------------------------- the pages, in Chromium

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    if CHROMIUM is None:
        missing_peer("chromium is not installed", "apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        missing_peer(f"playwright does not import: {err}", "pip install 'saekit[dev]'")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        context.on("request", lambda r: requests.append(r.url))
        pg = context.new_page()
        pg.requests = requests
        yield pg
        browser.close()


def test_pages_in_headless_chromium(server, page, local, tiny_lm, tmp_path):
    tid = tiny_lm.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    best = int((local.W_dec.detach() @ tiny_lm.unembed_matrix().detach()[:, tid]).argmax())
    # feature index: a click on a header sorts by it, a second click reverses
    page.goto(server + "/#/features")
    for desc in (False, True):
        page.evaluate("document.getElementById('results').dataset.old = '1'")
        page.click("#results th:has-text('density')")
        page.wait_for_selector("#results:not([data-old]) #result-count")  # the new table
        assert f"desc={int(desc)}" in page.url
        cells = page.locator("#results tbody tr td:nth-child(2)").all_inner_texts()
        assert len(cells) == 32 and sorted(map(float, cells), reverse=desc) == list(
            map(float, cells)
        )
    # search by boosted token
    page.goto(server + "/#/features")
    page.fill("#token", " the")
    page.click("#search-go")
    page.wait_for_selector("#result-count")
    first = page.locator("#results tbody tr").first.locator("td").first.inner_text()
    assert int(first) == best
    page.screenshot(path=str(tmp_path / "features.png"))
    # feature page: examples with per-token activations on hover
    page.locator("#results tbody tr").first.locator("a").click()
    page.wait_for_selector("#feature-title")
    assert page.inner_text("#feature-title") == f"Feature {best}"
    assert page.locator("#top .ex").count() >= 5 and page.locator("svg.hist rect").count() >= 2
    page.locator("#top .tok.cur").first.hover()
    assert "activation" in page.inner_text("#hoverbox")
    # inspector: top features of a text
    page.goto(server + "/#/inspect")
    page.fill("#inspect-text", "The cat sat on the mat")
    page.click("#inspect-go")
    page.wait_for_selector("#inspect-top tr")
    assert page.locator("#inspect-top tr").count() >= 3
    assert page.locator("#token-features tr").count() >= 1
    # steering: two completions side by side
    page.goto(server + "/#/steer?feature=3&strength=40")
    page.fill("#steer-prompt", "The cat sat on")
    page.fill("#max-new", "6")
    page.click("#steer-go")
    page.wait_for_function("document.getElementById('steer-progress').textContent === 'done'")
    default, steered = page.inner_text("#default"), page.inner_text("#steered")
    assert default and steered and default != steered
    # attribution graph viewer inside the page
    page.goto(server + "/#/graph")
    page.fill("#graph-prompt", "The cat sat")
    page.click("#graph-go")
    frame = page.frame_locator("iframe.graph")
    frame.locator("#detail-title").wait_for(timeout=120_000)
    assert frame.locator(".node").count() > 5
    # nothing but this server was asked for anything
    assert all(u.startswith(server) for u in page.requests), [
        u for u in page.requests if not u.startswith(server)
    ]


def test_worker_runs_jobs_one_at_a_time_in_order():
    from saekit.serve.worker import Busy, Worker

    worker = Worker(max_queue=2)
    gate, order, running = threading.Event(), [], []

    def job(name):
        def run(j):
            running.append(name)
            assert len(running) == 1  # never two at once
            if name == "first":
                gate.wait(10)
            j.report(0.5, f"{name} half way")
            order.append(name)
            running.remove(name)
            if name == "bad":
                raise ValueError("strength of feature 3 is nan:\n  strengths must be finite")
            if name == "bug":
                raise RuntimeError("secret detail")
            return name

        return run

    first = worker.submit("t", job("first"))
    while first.status != "running":
        time.sleep(0.01)
    bad, bug = worker.submit("t", job("bad")), worker.submit("t", job("bug"))
    with pytest.raises(Busy):
        worker.submit("t", job("late"))
    gate.set()
    assert bug.wait(10)
    last = worker.run("t", job("last"), timeout=10)
    assert order == ["first", "bad", "bug", "last"] and last.result == "last"
    assert (bad.status, bad.error_status, bad.error) == (
        "error",
        400,
        "strength of feature 3 is nan: strengths must be finite",
    )
    assert (bug.error_status, bug.error) == (500, "internal error: RuntimeError")
    assert [e["type"] for e in first.events] == ["progress", "done"]
    assert first.events[0]["message"] == "first half way" and first.progress == 0.5
    worker.stop()
