"""The model work behind the pages; each function runs inside the worker thread as one job.

- `inspect_text`: the most active features at each token (`saekit.steering.find.text_features`);
- `rank_by_token`: every feature by how much its decoder direction boosts a token (logit lens,
  `saekit.steering.find.features_for_token`);
- `steer_job`: the default and the steered completion (`saekit.models.generate.generate` under
  `saekit.steer`), streamed token by token, then the next-token shift
  (`saekit.steering.compare.next_token_shift`);
- `graph_job`: an attribution graph through the loaded transcoders
  (`saekit.circuits.run.trace_prompt`) and its viewer page (`saekit.circuits.viewer`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from saekit.serve.catalog import Entry
from saekit.serve.worker import Job


def inspect_text(entry: Entry, lm, text: str, k: int) -> dict:
    """Tokens of ``text`` and, at each, the ``k`` most active features of the SAE."""
    from saekit.steering.find import text_features
    from saekit.steering.interventions import sae_source

    found = text_features(entry.sae, lm, text, k)
    # the BOS that text_features puts first is a special token: the SAE's convention leaves
    # it out (its activations are outliers), so no features are listed there
    skip_first = sae_source(entry.sae).prepend_bos and lm.bos_token_id is not None
    rows = []
    for i, feats in enumerate(found.features):
        rows.append([] if i == 0 and skip_first else [
            {"feature": s.feature, "activation": s.score, "indexed": s.feature in entry.position,
             "explanation": (entry.interp.get(s.feature) or {}).get("explanation")}
            for s in feats
        ])  # fmt: skip
    return {"sae": entry.name, "tokens": found.tokens, "features": rows}


def rank_by_token(entry: Entry, lm, token: str) -> list[tuple[int, float]]:
    """Every feature with its logit-lens weight on ``token`` (one token's text), largest first."""
    from saekit.steering.find import features_for_token

    return [(s.feature, s.score) for s in features_for_token(entry.sae, lm, token, entry.d_sae)]


class _TokenStream:
    """A `generate` streamer (HF's protocol: `put`, `end`): new text of row 0 as events (``{"type": "token", ...}``).

    Special tokens are left out of the stream; the ``final`` event after it carries the
    completion exactly as `generate` returns it."""

    def __init__(self, job: Job, which: str, tokenizer) -> None:
        self.job, self.which, self.tokenizer = job, which, tokenizer
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.ids.append(int(value.reshape(-1)[0]))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        if text.startswith(self.sent):
            delta, self.sent = text[len(self.sent) :], text
            if delta:
                self.job.emit({"type": "token", "which": self.which, "text": delta})

    def end(self) -> None:
        pass


def steer_job(job: Job, lm, intervention, prompt: str, settings: dict[str, Any]) -> dict:
    """Default then steered completion of ``prompt``, streamed; then the next-token shift.

    ``settings``: ``max_new_tokens``, ``do_sample``, ``temperature``, ``seed``, ``prepend_bos``.
    """
    from saekit.models.generate import generate
    from saekit.steering import steer
    from saekit.steering.compare import next_token_shift

    kwargs = dict(
        max_new_tokens=settings["max_new_tokens"], do_sample=settings["do_sample"],
        temperature=settings["temperature"], seed=settings["seed"],
        prepend_bos=settings["prepend_bos"],
    )  # fmt: skip
    job.report(0.0, "generating the default completion")
    default = generate(lm, prompt, streamer=_TokenStream(job, "default", lm.tokenizer), **kwargs)
    job.emit({"type": "final", "which": "default", "text": default})
    job.report(0.5, "generating the steered completion")
    with steer(lm, [intervention]) as steering:
        described = steering.describe()
        steered = generate(
            lm, prompt, streamer=_TokenStream(job, "steered", lm.tokenizer), **kwargs
        )
    job.emit({"type": "final", "which": "steered", "text": steered})
    job.report(0.95, "next-token shift")
    shift = next_token_shift(lm, prompt, [intervention], k=8, prepend_bos=settings["prepend_bos"])
    return {
        "prompt": prompt, "default": default, "steered": steered, "kl": shift.kl,
        "rose": [asdict(t) for t in shift.rose], "fell": [asdict(t) for t in shift.fell],
        "interventions": described,
    }  # fmt: skip


def feature_info(entries: list[Entry], layer_of: Callable[[Entry], int]) -> dict[str, dict]:
    """The circuits viewer's node details, ``{"layer_feature": {...}}``, from the catalog."""
    info: dict[str, dict] = {}
    for entry in entries:
        layer = layer_of(entry)
        for row in entry.rows:
            item = {"top_activating_tokens": row["top_activating_tokens"]}
            if row["explanation"]:
                item["explanation"] = row["explanation"]
            info[f"{layer}_{row['feature']}"] = item
    return info


def graph_job(job: Job, replacement, prompt: str, info: dict[str, dict], **settings) -> dict:
    """Attribute ``prompt`` through the transcoders; the graph JSON and the viewer page."""
    from saekit.circuits.run import trace_prompt
    from saekit.circuits.viewer import viewer_html

    job.report(None, "attributing")
    result = trace_prompt(
        replacement, prompt, None, check_features=0, feature_info=info,
        log=lambda message: job.report(None, message), **settings,
    )  # fmt: skip
    return {"graph": result.json, "html": viewer_html(result.json, info)}
