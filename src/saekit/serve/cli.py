"""`saekit serve`: a local web app over SAE folders (feature browser, inspector, steering)."""

from __future__ import annotations

import argparse
import errno
import socket

from saekit.data.provenance import add_data_arguments
from saekit.settings import count_arg

EXPOSE_HINT = (
    "only this machine can connect; to reach it from elsewhere forward the port "
    "(ssh -L {port}:127.0.0.1:{port} THIS_HOST) or pass --host 0.0.0.0 on a trusted network"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` sub-command."""
    p = subparsers.add_parser(
        "serve",
        help="local web app: feature index and pages, text inspector, steering, graphs",
        description="Index the features of one or more SAE folders (one model pass over each "
        "SAE's own dataset, from its provenance record, shared by SAEs that read the same "
        "text) and serve a feature browser with "
        "search, feature pages, a 'what fires here' text inspector, a steering playground and, "
        "when transcoders for every layer are loaded, attribution graphs. Model work runs in "
        "one worker thread with a queue. Binds 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("sae", nargs="+", help="SAE folders (a sweep, or transcoders for every layer)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--features", default="all", help="features to index: all, '0:1000' or "
                   "'3,17,42' (default all)")  # fmt: skip
    p.add_argument("--tokens", type=count_arg, default=20_000, metavar="N",
                   help="tokens scanned per dataset at start-up: 20000, 100k (default 20k)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=20, help="top examples per feature (default 20)")
    p.add_argument("--autointerp", action="append", default=[], metavar="DIR",
                   help="`saekit explain --out` folder with explanations; the i-th --autointerp "
                   "belongs to the i-th SAE")  # fmt: skip
    p.add_argument("--max-prompt-tokens", type=int, default=256, help="longest prompt or "
                   "inspected text accepted (default 256)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest steered completion "
                   "accepted (default 64)")  # fmt: skip
    add_data_arguments(p, for_sae=True)
    p.set_defaults(func=run_serve)


def check_port(host: str, port: int) -> None:
    """ValueError naming --port / --host when the address cannot be bound."""
    if not 0 < port < 65536:
        raise ValueError(f"--port {port}: must be in 1..65535")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise ValueError(
                f"--port {port} is in use on {host}; pick another with --port"
            ) from None
        raise ValueError(f"--host {host} --port {port}: cannot bind ({err.strerror})") from None


def load_entries(args: argparse.Namespace):
    """The model and one `Entry` per SAE folder (data settings: folder record, then flags)."""
    from saekit import load_sae
    from saekit.analysis.features import parse_feature_spec
    from saekit.autointerp.run import read_results
    from saekit.data.provenance import settings_for_sae
    from saekit.dtypes import DTYPES
    from saekit.models import load_model
    from saekit.models.loading import resolve_device
    from saekit.serve.catalog import Entry, unique_names

    if len(args.autointerp) > len(args.sae):
        raise ValueError(
            f"--autointerp given {len(args.autointerp)} times for {len(args.sae)} SAEs: the "
            "i-th --autointerp belongs to the i-th SAE"
        )
    device = resolve_device(getattr(args, "device", "auto"))
    entries, models = [], set()
    for i, (path, name) in enumerate(zip(args.sae, unique_names(args.sae), strict=True)):
        sae = load_sae(path, device=device)
        data, sources = settings_for_sae(sae, args)
        if sources["model"] == "default":
            raise ValueError(f"{path}: cfg.json names no metadata.model_name; pass --model")
        models.add((data.model, data.dtype))
        spec = args.features
        ids = (
            list(range(sae.cfg.d_sae)) if spec == "all" else parse_feature_spec(spec, sae.cfg.d_sae)
        )
        interp = read_results(args.autointerp[i]) if i < len(args.autointerp) else {}
        entries.append(Entry(name, path, sae, data, ids, interp))
    if len(models) > 1:
        named = ", ".join(sorted(m for m, _ in models))
        raise ValueError(f"the SAEs name different models or dtypes ({named}): pass --model")
    model, dtype = models.pop()
    return load_model(model, device=device, dtype=DTYPES[dtype]), entries


def run_serve(args: argparse.Namespace) -> int:
    """Handler of `saekit serve`."""
    try:
        import uvicorn

        from saekit.serve.app import create_app
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"saekit serve needs FastAPI and uvicorn ({err}): pip install 'saekit[serve]'"
        ) from None
    from saekit.serve.state import Limits, ServeState

    if args.tokens < 1:
        raise ValueError(f"--tokens must be positive, got {args.tokens}")
    for flag in ("max_prompt_tokens", "max_new_tokens", "top_k"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive")
    check_port(args.host, args.port)
    lm, entries = load_entries(args)
    limits = Limits(max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens)
    state = ServeState(lm, entries, tokens=args.tokens, limits=limits,
                       collector_kwargs={"top_k": args.top_k})  # fmt: skip
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"saekit serve: http://{shown}:{args.port}/ ({len(entries)} SAE(s), model {lm.spec}; "
          "indexing features in the background)", flush=True)  # fmt: skip
    if args.host in ("127.0.0.1", "localhost", "::1"):
        print("  " + EXPOSE_HINT.format(port=args.port), flush=True)
    else:
        print("  listening on every address it binds: anyone who reaches it can run the model")
    local = args.host in ("127.0.0.1", "localhost")
    app = create_app(state, allowed_hosts=["127.0.0.1", "localhost"] if local else None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    state.worker.stop()
    return 0
