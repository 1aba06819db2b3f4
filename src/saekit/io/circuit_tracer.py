"""circuit-tracer's transcoder layouts, both ways.

Per-layer transcoders (its `load_transcoder_set` / `load_transcoder`): one
`layer_{L}.safetensors` per layer with `W_enc [F, D]`, `W_dec [F, O]`, `b_enc [F]`,
`b_dec [O]`, optional `W_skip [O, D]` (it computes `x @ W_skip.T`), and
`activation_function.threshold [F]` (JumpReLU) or `k` (TopK); plus a `config.yaml`
naming the hooks, the activation and the files. Cross-layer transcoders (its `load_clt`):
`W_enc_{l}.safetensors` with `W_enc_{l} [F, D]`, `b_enc_{l}`, `b_dec_{l}` (+ `threshold_{l}`)
and `W_dec_{l}.safetensors` with `W_dec_{l} [F, L - l, O]`. circuit-tracer's CLT knows ReLU
and JumpReLU only, so a TopK CLT cannot be exported exactly: train it with batchtopk, whose
inference form is a JumpReLU, or with jumprelu. Thresholds travel bit for bit both ways.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from saekit.models.hooks import MLP_IN, MLP_OUT
from saekit.saes.base import SAE
from saekit.saes.clt import CLTConfig, CrossLayerTranscoder

# saekit hook suffix -> circuit-tracer's (TransformerLens block-relative) hook name
_HOOKS = {MLP_IN: "mlp.hook_in", MLP_OUT: "hook_mlp_out"}
_THRESHOLDED = ("jumprelu", "batchtopk", "matryoshka")


def _suffix(hook: str | None) -> str:
    parts = (hook or "").split(".", 2)
    suffix = parts[2] if len(parts) == 3 and parts[0] == "blocks" else (hook or "")
    return _HOOKS.get(suffix, suffix)


def _saekit_hook(layer: int, name: str) -> str:
    back = {v: k for k, v in _HOOKS.items()}
    return f"blocks.{layer}.{back.get(name, name)}"


def _layer(hook: str | None) -> int:
    parts = (hook or "").split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(
            f"cannot tell the layer of hook {hook!r}: circuit-tracer files are per layer"
        )
    return int(parts[1])


def export_transcoder_set(saes: list[SAE], out: str | os.PathLike[str]) -> Path:
    """Write per-layer transcoders (one SAE per layer, hooks in their metadata)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    archs = {s.cfg.architecture for s in saes}
    if len(archs) != 1:
        raise ValueError(f"a transcoder set has one architecture, got {sorted(archs)}")
    arch = archs.pop()
    files = {}
    for sae in saes:
        meta = sae.cfg.metadata
        layer = _layer(meta.hook_name)
        tensors = {
            "W_enc": sae.W_enc.detach().T, "W_dec": sae.W_dec.detach(),
            "b_enc": sae.b_enc.detach(), "b_dec": sae.b_dec.detach(),
        }  # fmt: skip
        if sae.cfg.skip:
            tensors["W_skip"] = sae.W_skip.detach().T
        if arch in _THRESHOLDED:
            tensors["activation_function.threshold"] = sae.threshold.detach()
        elif arch == "topk":
            tensors["k"] = torch.tensor(sae.cfg.k)
        elif arch != "relu":
            raise ValueError(
                f"circuit-tracer has no {arch!r} transcoder (relu, topk, jumprelu, batchtopk)"
            )
        files[layer] = f"layer_{layer}.safetensors"
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(out / files[layer]))
    first = saes[0].cfg
    config = {
        "model_kind": "transcoder_set",  # what circuit-tracer's config loaders dispatch on
        "model_name": first.metadata.model_name,
        "feature_input_hook": _suffix(first.metadata.hook_name),
        "feature_output_hook": _suffix(first.metadata.hook_name_out or first.metadata.hook_name),
        "activation": {"topk": "topk", "relu": "relu"}.get(arch, "jump_relu"),
        "transcoders": [files[layer] for layer in sorted(files)],
    }
    if arch == "topk":
        config["k"] = first.k
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def import_transcoder_set(folder: str | os.PathLike[str]) -> list[SAE]:
    """Read circuit-tracer per-layer transcoders (`layer_{L}.safetensors`) as saekit SAEs."""
    folder = Path(folder)
    config_file = folder / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    paths = sorted(folder.glob("layer_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))
    if not paths:
        raise FileNotFoundError(f"{folder} holds no layer_*.safetensors")
    saes = []
    for path in paths:
        layer = int(path.stem.split("_")[1])
        t = load_file(str(path))
        F, D = t["W_enc"].shape
        if "activation_function.threshold" in t:
            arch, settings = "jumprelu", {}
        elif "k" in t or config.get("activation") == "topk":
            arch, settings = "topk", {"k": int(t["k"]) if "k" in t else int(config["k"])}
        else:
            arch, settings = "relu", {}
        metadata = {
            "model_name": config.get("model_name"),
            "hook_name": _saekit_hook(layer, config.get("feature_input_hook", "mlp.hook_in")),
            "hook_name_out": _saekit_hook(layer, config.get("feature_output_hook", "hook_mlp_out")),
        }
        sae = SAE.create(
            arch, d_in=D, d_sae=F, d_out=t["W_dec"].shape[1], skip="W_skip" in t,
            apply_b_dec_to_input=False, metadata=metadata, **settings,
        )  # fmt: skip
        with torch.no_grad():
            sae.W_enc.copy_(t["W_enc"].T)
            sae.W_dec.copy_(t["W_dec"])
            sae.b_enc.copy_(t["b_enc"])
            sae.b_dec.copy_(t["b_dec"])
            if "W_skip" in t:
                sae.W_skip.copy_(t["W_skip"].T)
            if arch == "jumprelu":
                sae.threshold.copy_(t["activation_function.threshold"])
        saes.append(sae)
    return saes


def export_clt(clt: CrossLayerTranscoder, out: str | os.PathLike[str]) -> Path:
    """Write a batchtopk or jumprelu CLT in circuit-tracer's `load_clt` layout."""
    if clt.cfg.activation not in _THRESHOLDED:
        raise ValueError(
            f"circuit-tracer CLTs are ReLU or JumpReLU: a CLT with activation "
            f"{clt.cfg.activation!r} does not export exactly; retrain with --arch batchtopk "
            "(a JumpReLU at inference) or --arch jumprelu"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flat = clt.state_dict_flat()
    for i in range(clt.cfg.n_layers):
        enc = {f"W_enc_{i}": flat["W_enc"][i].T, f"b_enc_{i}": flat["b_enc"][i],
               f"b_dec_{i}": flat["b_dec"][i], f"threshold_{i}": flat["threshold"][i]}  # fmt: skip
        save_file({k: v.contiguous() for k, v in enc.items()}, str(out / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": flat[f"W_dec_{i}"]}, str(out / f"W_dec_{i}.safetensors"))
    meta = clt.cfg.metadata
    config = {
        "model_kind": "cross_layer_transcoder",
        "model_name": meta.model_name,
        "feature_input_hook": _suffix(meta.hook_name),
        "feature_output_hook": _suffix(meta.hook_name_out),
        # circuit-tracer reads the keys above only; this one brings the CLT back as trained
        "saekit": {"activation": clt.cfg.activation, "k": clt.cfg.k},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def import_clt(
    folder: str | os.PathLike[str], k: int | None = None, activation: str | None = None
) -> CrossLayerTranscoder:
    """Read a circuit-tracer CLT folder (JumpReLU: it needs thresholds; ReLU is not
    supported). It comes back as the activation `config.yaml` records when saekit wrote it,
    else as batchtopk when `k` is given (k only matters for further training), else jumprelu
    (circuit-tracer's own form). Both are exact at inference."""
    folder = Path(folder)
    config_file = folder / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    written = config.get("saekit") or {}
    activation = activation or written.get("activation") or ("batchtopk" if k else "jumprelu")
    if activation not in ("batchtopk", "jumprelu"):
        raise ValueError(f"import_clt: activation={activation!r} is not one of batchtopk, jumprelu")
    if activation == "jumprelu":
        k = None
    elif k is None:
        k = written.get("k") or 1
    n = len(list(folder.glob("W_enc_*.safetensors")))
    encs = [load_file(str(folder / f"W_enc_{i}.safetensors")) for i in range(n)]
    if not n or f"threshold_{0}" not in encs[0]:
        raise ValueError(f"{folder}: saekit reads circuit-tracer CLTs with thresholds (JumpReLU)")
    F, D = encs[0]["W_enc_0"].shape
    decs = [load_file(str(folder / f"W_dec_{i}.safetensors"))[f"W_dec_{i}"] for i in range(n)]
    hooks_in = [_saekit_hook(i, config.get("feature_input_hook", "mlp.hook_in")) for i in range(n)]
    hooks_out = [
        _saekit_hook(i, config.get("feature_output_hook", "hook_mlp_out")) for i in range(n)
    ]
    metadata = {
        "model_name": config.get("model_name"), "hook_name": hooks_in[0],
        "hook_name_out": hooks_out[0], "hook_names": hooks_in, "hook_names_out": hooks_out,
    }  # fmt: skip
    clt = CrossLayerTranscoder(CLTConfig(
        n_layers=n, d_in=D, d_sae=F, d_out=decs[0].shape[-1], activation=activation,
        k=k, metadata=metadata,
    ))  # fmt: skip
    clt.load_flat({
        "W_enc": torch.stack([e[f"W_enc_{i}"].T for i, e in enumerate(encs)]),
        "b_enc": torch.stack([e[f"b_enc_{i}"] for i, e in enumerate(encs)]),
        "b_dec": torch.stack([e[f"b_dec_{i}"] for i, e in enumerate(encs)]),
        "threshold": torch.stack([e[f"threshold_{i}"] for i, e in enumerate(encs)]),
        **{f"W_dec_{i}": W for i, W in enumerate(decs)},
    })  # fmt: skip
    return clt.eval()


CIRCUIT_TRACER = "circuit-tracer"


def is_circuit_tracer(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` holds circuit-tracer transcoder or CLT files."""
    folder = Path(folder)
    return folder.is_dir() and (
        any(folder.glob("layer_*.safetensors")) or (folder / "W_enc_0.safetensors").is_file()
    )


def convert_dictionary(src: str | os.PathLike[str], dst: str | os.PathLike[str], to: str,
                       *, force: bool = False) -> Path:  # fmt: skip
    """`saekit convert` for per-layer transcoders and CLTs. To circuit-tracer: from a saekit
    CLT folder or a run folder of per-layer transcoders (`--transcoders`). From circuit-tracer
    (to saekit): a CLT becomes a CLT folder; per-layer transcoders one SAE folder per layer,
    named after its input hook, as a run writes them. `dst` appears complete or not at all."""
    import json

    from saekit.fileio import atomic_folder
    from saekit.saes.clt import load_clt

    src = Path(src)
    with atomic_folder(dst, force=force) as tmp:
        if to == CIRCUIT_TRACER:
            cfg_file = src / "cfg.json"
            if cfg_file.is_file() and json.loads(cfg_file.read_text()).get("architecture") == "clt":
                clt = load_clt(src)
                if not clt.cfg.metadata.hook_name_out:
                    clt.cfg.metadata.hook_name_out = clt.cfg.metadata.extra.get(
                        "hook_names_out", [None]
                    )[0]
                export_clt(clt, tmp)
            else:
                folders = sorted(p.parent for p in src.glob("*/cfg.json"))
                if cfg_file.is_file() or not folders:
                    raise ValueError(
                        f"{src}: converting to {CIRCUIT_TRACER} takes a CLT folder or a run folder "
                        "of per-layer transcoders (--transcoders)"
                    )
                export_transcoder_set([SAE.load(f) for f in folders], tmp)
        elif to == "saekit" and is_circuit_tracer(src):
            if (src / "W_enc_0.safetensors").is_file():
                import_clt(src).save(tmp)
            else:
                for sae in import_transcoder_set(src):
                    sae.save(tmp / str(sae.cfg.metadata.hook_name))
        else:
            raise ValueError(
                f"{src}: circuit-tracer files convert to saekit (--to saekit); saekit CLTs and "
                f"transcoder runs convert to {CIRCUIT_TRACER}"
            )
    return Path(dst)
