"""`saekit steer` and `saekit features`."""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
from itertools import zip_longest

from saekit.steering.interventions import MODES, UNITS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `steer` and `features` sub-commands."""
    p = subparsers.add_parser(
        "steer",
        help="generate with SAE features added, clamped, ablated or scaled",
        description="Generate from the prompt twice, without and with the intervention, and "
        "print both completions side by side, then the tokens whose next-token probability "
        "rose and fell most at the first generated position and the KL between the two "
        "distributions. Model and hook come from the SAE folder's cfg.json metadata.",
    )
    p.add_argument("sae", help="SAE folder, .pt file or hub path (anything saekit.load_sae takes)")
    p.add_argument("--feature", required=True, help="feature id(s): '1234' or '12,40'")
    p.add_argument(
        "--strength",
        default="8",
        help="value per feature, one for all or a comma list: added (add), clamped to (clamp), "
        "factor (scale); ignored by ablate (default 8)",
    )
    p.add_argument("--prompt", action="append", required=True, help="prompt (repeat for a batch)")
    p.add_argument("--mode", default="add", help=f"{', '.join(MODES)} (default add)")
    p.add_argument(
        "--units",
        default="raw",
        help=f"{', '.join(UNITS)}: strengths as given, in typical activations of the feature "
        "(measured on --calibration-tokens of the SAE's dataset), or in residual norms (add) "
        "(default raw)",
    )
    p.add_argument(
        "--positions",
        default="all",
        help="all, prompt, generated, an index ('-1': last prompt token), a list ('0,3') or "
        "a slice ('2:5'; write a leading minus as --positions=-3:) (default all)",
    )
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate (default 40)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--hook", help="hook to edit (default: the SAE's metadata)")
    p.add_argument("--drop-error", action="store_true", help="replace the activation by the "
                   "SAE reconstruction instead of keeping the SAE's error term")  # fmt: skip
    p.add_argument("--calibration-tokens", type=int, default=8192, help="tokens for --units act")
    p.add_argument("--top", type=int, default=8, help="tokens listed as rose / fell (default 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    _add_source_args(p)
    p.set_defaults(func=run_steer)

    p = subparsers.add_parser(
        "features",
        help="find features: by the token they boost, or the most active at each token of a text",
        description="--token: the features whose decoder direction boosts that token's logit "
        "most (logit lens, final norm not applied). --text: the most active features at each "
        "token; with --ablation, the change in the text's next-token loss when each active "
        "feature is ablated (batched forwards).",
    )
    p.add_argument("sae", help="SAE folder, .pt file or hub path")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--token", help="one token's text, e.g. ' Python' (mind the space)")
    what.add_argument("--text", help="a text to read the features of")
    p.add_argument("--ablation", action="store_true", help="with --text: loss effect of ablating")
    p.add_argument("--k", type=int, default=10, help="features listed (per token for --text)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_source_args(p)
    p.set_defaults(func=run_features)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """--model, --dtype, --device: the data commands' flags (a flag not given takes the SAE
    folder's recorded value)."""
    from saekit.analysis.cli import MODEL_FLAGS
    from saekit.data.provenance import add_data_arguments

    add_data_arguments(p, for_sae=True, only=MODEL_FLAGS)


def _load(args: argparse.Namespace):
    """The SAE and its model, through the SAE's provenance record and the flags given."""
    from saekit.analysis.cli import load_sae_and_model

    sae, lm, _ = load_sae_and_model(args)
    return sae, lm


def parse_positions(text: str):
    """'all' | 'prompt' | 'generated' | '-1' | '0,3' | '2:5' -> a positions selection."""
    text = text.strip()
    try:
        if ":" in text:
            lo, hi = text.split(":", 1)
            return slice(int(lo) if lo.strip() else None, int(hi) if hi.strip() else None)
        if "," in text:
            return [int(p) for p in text.split(",") if p.strip()]
        if text.lstrip("-").isdigit():
            return int(text)
    except ValueError:
        raise ValueError(f"--positions {text!r}: not an index, list or slice") from None
    return text  # a name; Intervention checks it


def _numbers(text: str, kind, flag: str) -> list:
    try:
        return [kind(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(
            f"{flag} {text!r}: expected {kind.__name__}s separated by commas"
        ) from None


def run_steer(args: argparse.Namespace) -> int:
    """Handler of `saekit steer`."""
    from saekit.steering.compare import compare
    from saekit.steering.interventions import Intervention, sae_source

    feats = _numbers(args.feature, int, "--feature")
    strengths = _numbers(args.strength, float, "--strength")
    if len(strengths) not in (1, len(feats)):
        raise ValueError(
            f"--strength has {len(strengths)} values for {len(feats)} features: give one or one each"
        )
    values = dict(
        zip(feats, strengths * len(feats) if len(strengths) == 1 else strengths, strict=False)
    )
    sae, lm = _load(args)
    typical = None
    if args.units == "act":
        typical = _typical(sae, lm, args.calibration_tokens)
    spec = Intervention(
        sae, values, mode=args.mode, positions=parse_positions(args.positions), units=args.units,
        hook=args.hook, typical_acts=typical, keep_error=not args.drop_error,
    )  # fmt: skip
    results = compare(
        lm, args.prompt, [spec], args.max_new_tokens, k=args.top,
        prepend_bos=sae_source(sae).prepend_bos, chat=args.chat, do_sample=args.sample,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
    )  # fmt: skip
    for result in results:
        if args.json:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            print(format_comparison(result))
    return 0


def _typical(sae, lm, tokens: int):
    """Typical activations from the SAE's dataset (its provenance record's)."""
    from itertools import islice

    from saekit.data.provenance import Provenance, documents
    from saekit.steering.find import typical_activations

    texts = (t for t in islice(documents(Provenance.from_sae(sae)[0]), 10_000) if isinstance(t, str))
    return typical_activations(sae, lm, list(islice(texts, max(1, tokens // 32))), tokens)


def _side_by_side(left: str, right: str, width: int) -> list[str]:
    lines_l = textwrap.wrap(left.replace("\n", "↵ "), width) or [""]
    lines_r = textwrap.wrap(right.replace("\n", "↵ "), width) or [""]
    return [f"{a:<{width}} │ {b}" for a, b in zip_longest(lines_l, lines_r, fillvalue="")]


def describe(item: dict) -> str:
    """One line for an intervention summary (`BoundIntervention.describe()`)."""
    values = item["features"]
    if item["mode"] == "add":
        what = "add " + ", ".join(f"{v:g} × feature {f}" for f, v in values.items())
    elif item["mode"] == "clamp":
        what = "clamp " + ", ".join(f"feature {f} to {v:g}" for f, v in values.items())
    elif item["mode"] == "scale":
        what = "scale " + ", ".join(f"feature {f} by {v:g}" for f, v in values.items())
    else:
        what = "ablate feature" + ("s " if len(values) > 1 else " ") + ", ".join(values)
    units = {"raw": "", "act": " (× typical activation)", "norm": " (× residual norm)"}
    error = "" if item["keep_error"] else ", error term dropped"
    return f"{what}{units[item['units']]} at {item['hook']}, positions {item['positions']}{error}"


def format_comparison(result) -> str:
    """The human-readable `saekit steer` output for one prompt."""
    width = max(30, min(60, (shutil.get_terminal_size((120, 20)).columns - 3) // 2))
    out = [f"prompt: {result.prompt!r}"]
    out += [f"steering: {describe(item)}" for item in result.interventions] + [""]
    out += _side_by_side("default", "steered", width)
    out.append("─" * width + "─┼─" + "─" * width)
    out += _side_by_side(result.default, result.steered, width)
    out.append("")
    out.append(f"first generated token: KL(default || steered) = {result.kl:.4f} nats")
    rows = list(zip_longest(result.rose, result.fell))
    out.append(f"  {'rose':<34} {'fell'}")
    for up, down in rows:
        a = f"{up.text!r:>14} {up.p_default:.4f} → {up.p_steered:.4f}" if up else ""
        b = f"{down.text!r:>14} {down.p_default:.4f} → {down.p_steered:.4f}" if down else ""
        out.append(f"  {a:<34} {b}")
    return "\n".join(out)


def run_features(args: argparse.Namespace) -> int:
    """Handler of `saekit features`."""
    from saekit.steering import find

    if args.ablation and args.text is None:
        raise ValueError("--ablation needs --text")
    sae, lm = _load(args)
    if args.token is not None:
        scores = find.features_for_token(sae, lm, args.token, args.k)
        if args.json:
            print(json.dumps({"token": args.token, "features": [vars(s) for s in scores]}))
            return 0
        print(f"features whose decoder direction boosts {args.token!r} most (logit lens):")
        for s in scores:
            print(f"  {s.feature:>6}  {s.score:+.3f}")
        return 0
    if args.ablation:
        clean, effects = find.ablation_effects(sae, lm, args.text)
        effects = effects[: args.k]
        if args.json:
            print(json.dumps({"clean_loss": clean, "effects": [vars(e) for e in effects]}))
            return 0
        print(f"clean next-token loss {clean:.4f} nats; ablating each active feature:")
        print(f"  {'feature':>7}  {'Δloss':>8}  {'max |Δ|':>8}  active at")
        for e in effects:
            print(f"  {e.feature:>7}  {e.delta_loss:+8.4f}  {e.max_delta:8.4f}  {e.positions}")
        return 0
    result = find.text_features(sae, lm, args.text, args.k)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    for token, feats in zip(result.tokens, result.features, strict=True):
        listed = "  ".join(f"{s.feature}:{s.score:.2f}" for s in feats)
        print(f"{token!r:>16}  {listed}")
    return 0
