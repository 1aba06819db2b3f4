"""Open a generated dashboard in headless Chromium: rendered content, and no network use.

Needs Debian's chromium (`apt-get install -y chromium`); skipped where it is absent.
Network check: Chromium writes a netlog (--log-net-log) of every request its network service
starts. Requests made for a page carry the page's origin (``file://``) in their network
isolation key, while Chromium's own background requests (update checks, ...) carry none; the
canary test proves a page's http(s) reference does show up there.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
FEATURES = [0, 1, 2, 3, 4, 9]


def render(page: Path, tmp: Path) -> tuple[str, list[str]]:
    """The DOM of ``page`` after load, and the URLs of network requests the page made."""
    netlog = tmp / f"{page.stem}.netlog.json"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND", f"--log-net-log={netlog}",
        "--virtual-time-budget=3000", "--dump-dom", page.resolve().as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start_job
        and "url" in e.get("params", {})
        and "file://" in e["params"].get("network_isolation_key", "")
    ]
    return dom, urls


class Elements(HTMLParser):
    """Collects (tag, attrs) of every start tag."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.items: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.items.append((tag, {k: v or "" for k, v in attrs}))

    def having(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.items
            if t == tag and (cls is None or cls in a.get("class", "").split())
        ]


@pytest.fixture(scope="module")
def dashboard(tiny_lm, tmp_path_factory) -> Path:
    from saekit.analysis import build_dashboard
    from saekit.data import TokenWindows, iter_documents, iter_token_batches
    from saekit.saes import SAE

    torch.manual_seed(0)
    sae = SAE.create("relu", d_in=64, d_sae=12, metadata={"hook_name": "blocks.1.hook_resid_post"})
    windows = TokenWindows(iter_documents("builtin:python-docs"), tiny_lm.tokenizer, 32)
    out = tmp_path_factory.mktemp("dashboard")
    build_dashboard(sae, tiny_lm, iter_token_batches(windows, 8), FEATURES, out, max_tokens=600)
    return out


def test_canary_request_is_detected(tmp_path):
    page = tmp_path / "canary.html"
    page.write_text('<!DOCTYPE html><img src="http://canary.invalid/x.png"><p>hi</p>')
    dom, urls = render(page, tmp_path)
    assert "<p>hi</p>" in dom
    assert urls == ["http://canary.invalid/x.png"]


def test_index_lists_every_feature_offline(dashboard, tmp_path):
    dom, urls = render(dashboard / "index.html", tmp_path)
    assert urls == []
    links = [a["href"] for a in Elements(dom).having("a")]
    assert links == [f"feature_{f}.html" for f in FEATURES]
    assert all((dashboard / link).exists() for link in links)


def test_feature_page_shows_shaded_examples_and_histogram_offline(dashboard, tmp_path):
    dom, urls = render(dashboard / "feature_3.html", tmp_path)
    assert urls == []
    el = Elements(dom)
    assert len(el.having("div", "ex")) >= 5  # top examples + quantile samples
    tokens = el.having("span", "tok")
    assert len(tokens) > 50
    assert all(
        "activation" in t["title"] and "background:rgba(255,102,0," in t["style"] for t in tokens
    )
    assert any("rgba(255,102,0,1.000)" in t["style"] for t in tokens)  # the top token
    assert el.having("svg", "hist") and len(el.having("rect", "bar")) >= 2
    assert "Logit effects" in dom


def test_no_remote_reference_in_any_page(dashboard):
    # token text may itself contain "http://"; what must not exist is a reference to load
    remote = re.compile(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//|url\(|@import""", re.I)
    for page in dashboard.glob("*.html"):
        assert not remote.search(page.read_text()), page
