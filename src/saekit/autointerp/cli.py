"""`saekit explain`: collect examples, explain every feature in words, score the explanations."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.data.provenance import add_data_arguments
from saekit.settings import count_arg

DEFAULT_EXPLAINER = "hf:smollm2-135m"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `explain` sub-command."""
    p = subparsers.add_parser(
        "explain",
        help="autointerp: explain features in words and score the explanations",
        description="One model pass collects top, quantile-sampled and non-activating windows of "
        "the requested features (saved in --out, so later runs need no model); an LLM explains "
        "each feature from its top windows; detection and fuzzing scorers (delphi's "
        "definitions) score each explanation and, as a baseline, another feature's. Writes "
        "results.jsonl (one line per feature), summary.json and scores.png. Re-running resumes: "
        "done features are skipped and every LLM answer is cached in --out/llm-cache.",
    )
    p.add_argument("sae", help="SAE folder, .pt file or hub path (anything saekit.load_sae takes)")
    p.add_argument("--features", default="0:20", help="'0:200' (range) or '3,17,42' (default 0:20)")
    p.add_argument("--tokens", type=count_arg, default=200_000, metavar="N",
                   help="tokens to scan for examples: 200k, 1M (default 200k)")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_argument_group("LLM")
    g.add_argument("--explainer", default=DEFAULT_EXPLAINER,
                   help=f"hf:MODEL (in process) or openai:URL (any OpenAI-compatible server) "
                   f"(default {DEFAULT_EXPLAINER})")  # fmt: skip
    g.add_argument("--explainer-model", default=None,
                   help="openai: the model id to request (default: the server's only model)")  # fmt: skip
    g.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="openai: environment variable holding the API key (default OPENAI_API_KEY)")  # fmt: skip
    g.add_argument(
        "--concurrency", type=int, default=4, help="openai: requests in flight (default 4)"
    )
    g.add_argument(
        "--timeout", type=float, default=120.0, help="openai: seconds per request (default 120)"
    )
    g.add_argument(
        "--retries", type=int, default=4, help="openai: retries on 429/5xx/timeouts (default 4)"
    )
    g.add_argument("--answer-tokenizer", default=None, metavar="TOKENIZER",
                   help="openai: the served model's tokenizer (transformers id or folder); the "
                   "scorers' requests then carry a logit_bias allowing only 0/1-list tokens")  # fmt: skip
    g.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads for the model passes (0: torch's default)")  # fmt: skip
    g.add_argument(
        "--prompts", default=None, help="folder of prompt templates overriding the shipped ones"
    )
    g = p.add_argument_group("examples and scoring")
    g.add_argument(
        "--scorers", default="detection,fuzzing", help="comma list (default detection,fuzzing)"
    )
    g.add_argument("--window", type=int, default=32, help="tokens per example window (default 32)")
    g.add_argument(
        "--n-explain", type=int, default=10, help="top windows shown to the explainer (default 10)"
    )
    g.add_argument(
        "--n-activating", type=int, default=10, help="activating windows per scorer (default 10)"
    )
    g.add_argument(
        "--n-random",
        type=int,
        default=10,
        help="random non-activating windows per scorer (default 10)",
    )
    g.add_argument("--hard-negatives", type=int, default=0, metavar="N",
                   help="windows where a decoder-neighbour fires and the feature does not (default 0)")  # fmt: skip
    g.add_argument(
        "--per-prompt", type=int, default=5, help="windows per scorer prompt (default 5)"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    g.add_argument(
        "--examples", default=None, help="folder of examples collected earlier (default: --out)"
    )
    g.add_argument(
        "--collect-only", action="store_true", help="collect and save examples, then stop"
    )
    g.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_data_arguments(p, for_sae=True)
    p.set_defaults(func=run_explain)


def _collect(args: argparse.Namespace, ids: list[int], folder: Path):
    from saekit.analysis.cli import load_sae_and_model
    from saekit.autointerp.examples import collect_examples
    from saekit.autointerp.exampleset import ExampleSet
    from saekit.data.provenance import token_batches

    sae, lm, data = load_sae_and_model(args)
    if max(ids) >= sae.cfg.d_sae:
        raise ValueError(f"--features: feature ids must be below d_sae={sae.cfg.d_sae}")
    collected = collect_examples(
        sae, lm, token_batches(data, lm.tokenizer, data.forward_rows), ids,
        max_tokens=args.tokens, window=args.window, top_k=max(40, 3 * args.n_explain),
        n_samples=max(200, 20 * args.n_activating), n_random=max(40, 2 * args.n_random),
        n_hard=args.hard_negatives, seed=args.seed, progress=not args.no_progress,
    )  # fmt: skip
    meta = {"sae": args.sae, "provenance": data.to_dict(), "tokens": args.tokens,
            "window": args.window, "hard_negatives": args.hard_negatives,
            "special_tokens": data.describe_special_tokens()}  # fmt: skip
    examples = ExampleSet.from_collected(collected, lm.tokenizer, meta)
    examples.save(folder)
    return examples


def _load_or_collect(args: argparse.Namespace, ids: list[int]):
    from saekit.autointerp.exampleset import META_FILE, ExampleSet

    folder = Path(args.examples or args.out)
    if not (folder / META_FILE).is_file():
        if args.examples:
            raise FileNotFoundError(f"--examples {folder}: no collected examples there")
        return _collect(args, ids, folder), True
    examples = ExampleSet.load(folder)
    wanted = {"sae": args.sae, "tokens": args.tokens, "window": args.window}
    diff = [f"{k}: {examples.meta.get(k)!r} there, {v!r} now" for k, v in wanted.items()
            if examples.meta.get(k) != v]  # fmt: skip
    missing = sorted(set(ids) - set(examples.feature_ids))
    if missing:
        diff.append(f"features {missing[:5]}{'...' if len(missing) > 5 else ''} not collected")
    if examples.meta.get("hard_negatives", 0) < args.hard_negatives:
        diff.append(
            f"--hard-negatives {args.hard_negatives} > the {examples.meta.get('hard_negatives')} collected"
        )
    if diff:
        raise ValueError(
            f"{folder} holds examples collected with other settings ({'; '.join(diff)}); "
            "use another --out (or --examples) to collect anew"
        )
    return examples, False


def run_explain(args: argparse.Namespace) -> int:
    """Handler of `saekit explain`."""
    from saekit.analysis.features import parse_feature_spec
    from saekit.autointerp.clients import CachedClient, make_client
    from saekit.autointerp.prompts import load_templates
    from saekit.autointerp.run import InterpSettings, run_autointerp
    from saekit.autointerp.summary import format_summary
    from saekit.models.loading import resolve_device

    ids = parse_feature_spec(args.features)
    if args.threads < 0:
        raise ValueError(f"--threads {args.threads}: use 0 (torch's default) or a positive count")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = InterpSettings(
        scorers=tuple(s.strip() for s in args.scorers.split(",") if s.strip()),
        n_explain=args.n_explain, n_activating=args.n_activating, n_random=args.n_random,
        n_hard=args.hard_negatives, per_prompt=args.per_prompt, seed=args.seed,
    )  # fmt: skip
    templates = load_templates(args.prompts)
    examples, fresh = _load_or_collect(args, ids)
    where = "collected" if fresh else "reused"
    print(f"examples {where}: {len(examples.feature_ids)} features, "
          f"{examples.collected.stats.n_tokens:,} tokens ({examples.meta.get('special_tokens', '')})")  # fmt: skip
    if args.collect_only:
        return 0
    client = make_client(
        args.explainer, model=args.explainer_model, api_key_env=args.api_key_env,
        timeout=args.timeout, retries=args.retries, concurrency=args.concurrency,
        device=str(resolve_device(getattr(args, "device", "auto"))),
        answer_tokenizer=args.answer_tokenizer,
    )  # fmt: skip
    cached = CachedClient(client, Path(args.out) / "llm-cache")
    summary = run_autointerp(examples, cached, args.out, settings=settings, features=ids,
                             templates=templates, progress=not args.no_progress)  # fmt: skip
    print(format_summary(summary))
    print(f"wrote {Path(args.out) / 'results.jsonl'}, summary.json, scores.png")
    return 0
