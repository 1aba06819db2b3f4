"""HTML dashboard pages: content, escaping, visible whitespace, no external references."""

from __future__ import annotations

import json
import re

import torch

from saekit.analysis.dashboard import _tok, write_dashboard
from saekit.analysis.features import FeatureStatsCollector
from saekit.analysis.logit_lens import LogitEffects

VOCAB = ["<s>", " the", "<script>", "a&b", " x\ny", '"q"', "\t", "Z"]


class FakeTokenizer:
    def batch_decode(self, seqs):
        return ["".join(VOCAB[i] for i in s) for s in seqs]


def _stats(features=(4, 9, 2)):
    torch.manual_seed(0)
    c = FeatureStatsCollector(
        list(features), top_k=4, n_samples=12, context_left=2, context_right=1
    )
    ids = torch.randint(0, len(VOCAB), (3, 10))
    acts = torch.relu(torch.randn(3, 10, len(features)))
    acts[..., -1] = 0  # the last feature never fires
    c.update(ids, torch.ones(3, 10, dtype=torch.bool), acts)
    return c.result(), ids, acts


def _effects(features):
    return [LogitEffects(f, [(2, "<script>", 1.5)], [(3, "a&b", -0.5)]) for f in features]


def test_pages_show_every_feature_and_escape_tokens(tmp_path):
    stats, _, acts = _stats()
    index = write_dashboard(tmp_path, stats, _effects([4, 9, 2]), FakeTokenizer(), title="T<1>")
    html_index = index.read_text()
    for f in (4, 9, 2):
        assert f'href="feature_{f}.html"' in html_index
        assert (tmp_path / f"feature_{f}.html").exists()
    assert "T&lt;1&gt;" in html_index and "<script>alert" not in html_index
    assert "never fires" in html_index
    page = (tmp_path / "feature_4.html").read_text()
    assert "&lt;script&gt;" in page and "<script>" not in page.split("</style>")[1]
    assert "a&amp;b" in page
    assert page.count('class="bar"') >= 1 and '<svg class="hist"' in page
    # every shaded top example token carries its activation on hover
    top_html = page.split('id="top"')[1].split('id="quantiles"')[0]
    n_top = int(stats.top.valid_FK[0].sum())
    assert top_html.count('class="ex"') == n_top
    assert f"activation {acts[..., 0].max().item():.4g}" in top_html
    assert re.search(r'style="background:rgba\(255,102,0,1\.000\)"', top_html)


def test_no_external_references_and_json_summary(tmp_path):
    stats, _, acts = _stats()
    write_dashboard(tmp_path, stats, _effects([4, 9, 2]), FakeTokenizer())
    for page in tmp_path.glob("*.html"):
        text = page.read_text()
        assert not re.search(r"(https?:)?//[a-z]", text, re.I), page
        assert not re.search(r"""(src|href)=["'](?!feature_\d+\.html|index\.html)""", text), page
    summary = json.loads((tmp_path / "features.json").read_text())
    assert [s["feature"] for s in summary] == [4, 9, 2]
    assert summary[0]["fire_count"] == int((acts[..., 0] > 0).sum())
    assert summary[2]["fire_count"] == 0 and summary[2]["mean_activation"] is None


def test_whitespace_is_visible_and_escaped():
    assert _tok(" x\ny") == '<span class="ws">·</span>x<span class="ws">↵</span>y'
    assert _tok("\t<&>") == '<span class="ws">⇥</span>&lt;&amp;&gt;'


def test_after_special_mask_hand_worked():
    from saekit.analysis.special_positions import after_special_mask

    ids = torch.tensor([[5, 0, 7, 8, 0, 9]])  # special token 0 at positions 1 and 4
    assert after_special_mask(ids, [0], 0).tolist() == [[False] * 6]
    assert after_special_mask(ids, [0], 1).tolist() == [[True, False, True, False, False, True]]
    assert after_special_mask(ids, [0], 2).tolist() == [[True, True, True, True, False, True]]
    assert after_special_mask(ids, [], 1).tolist() == [[True] + [False] * 5]


class SpecialTokenizer(FakeTokenizer):
    all_special_ids = [0]  # "<s>"


def test_note_when_top_examples_sit_after_a_special_token(tmp_path):
    c = FeatureStatsCollector([0, 1], top_k=4, n_samples=8, context_left=2, context_right=1)
    ids = torch.tensor([[0, 1, 7, 1, 7, 1], [0, 3, 7, 3, 7, 3]])
    acts = torch.zeros(2, 6, 2)
    acts[:, 1, 0] = 15.0  # feature 0: largest right after <s>, smaller elsewhere
    acts[:, 3, 0] = 3.8
    acts[:, 2, 1] = 2.0  # feature 1: never right after <s>
    acts[0, 4, 1] = 1.0
    c.update(ids, ids != 0, acts)
    write_dashboard(tmp_path, c.result(), _effects([0, 1]), SpecialTokenizer())
    page0, page1 = ((tmp_path / f"feature_{f}.html").read_text() for f in (0, 1))
    assert '<p class="warn">2 of 4 top examples sit on the first token after' in page0
    assert "&lt;s&gt;" in page0.split('class="warn"')[1] and "--exclude-after-special 1" in page0
    assert 'class="warn"' not in page1
    summary = json.loads((tmp_path / "features.json").read_text())
    assert [s["top_after_special"] for s in summary] == [0.5, 0.0]
    assert [s["after_special_note"] for s in summary] == [True, False]
    assert (tmp_path / "index.html").read_text().count("(after special tokens)</span>") == 1
    write_dashboard(tmp_path, c.result(), _effects([0, 1]), SpecialTokenizer(),
                    after_special_excluded=True)  # fmt: skip
    assert 'class="warn"' not in (tmp_path / "feature_0.html").read_text()
    assert "(after special tokens)</span>" not in (tmp_path / "index.html").read_text()


def test_histogram_axes_are_labelled(tmp_path):
    stats, _, _ = _stats()
    write_dashboard(tmp_path, stats, _effects([4, 9, 2]), FakeTokenizer())
    svg = (tmp_path / "feature_4.html").read_text().split('<svg class="hist"')[1]
    assert "activation (firing positions only)" in svg and "positions (tallest bar: " in svg
