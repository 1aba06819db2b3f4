"""Tutorial: find a feature, steer the model with it, check the effect, see which features matter.

    python examples/tutorial_steering.py --sae runs/saekit/blocks.15.hook_resid_pre
    python examples/tutorial_steering.py --sae SAE --token " Python" --prompt "My favourite"

1. `features_for_token`: the features whose decoder direction raises a token's logit most.
2. `saekit.steer(..., mode="add")` during `lm.generate`: default and steered completions.
3. `compare`: the KL and the tokens that rose and fell at the first generated position.
4. clamp, ablate and scale the same feature; a no-op clamp changes nothing.
5. `ablation_effects`: the features whose ablation hurts the next-token loss of a text most.
"""

from __future__ import annotations

import argparse

import torch

import saekit
from saekit.models.generate import encode_prompts
from saekit.steering import Intervention, sae_source
from saekit.steering.compare import compare
from saekit.steering.find import ablation_effects, features_for_token, text_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", required=True, help="SAE folder")
    parser.add_argument("--model", help="default: the SAE's metadata.model_name")
    parser.add_argument("--token", default=" Python", help="token to promote")
    parser.add_argument("--prompt", default="My favourite thing is")
    parser.add_argument("--strength", type=float, default=8.0)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args()

    sae = saekit.load_sae(args.sae)
    lm = saekit.load_model(args.model or sae_source(sae).model_name)
    bos = sae_source(sae).prepend_bos

    print(f"1. features that boost {args.token!r} most (logit lens):")
    found = features_for_token(sae, lm, args.token, k=5)
    for s in found:
        print(f"   feature {s.feature:>5}  logit weight {s.score:+.3f}")
    feature = found[0].feature

    print(f"\n2. add {args.strength:g} x feature {feature} while generating:")
    print("   default:", repr(lm.generate(args.prompt, args.max_new_tokens, prepend_bos=bos)))
    with saekit.steer(lm, sae, {feature: args.strength}, mode="add"):
        steered = lm.generate(args.prompt, args.max_new_tokens, prepend_bos=bos)
    print("   steered:", repr(steered))

    print("\n3. the next-token distribution at the first generated position:")
    spec = Intervention(sae, {feature: args.strength})
    result = compare(lm, args.prompt, [spec], args.max_new_tokens, k=5, prepend_bos=bos)[0]
    print(f"   KL(default || steered) = {result.kl:.4f} nats")
    for row in result.rose:
        print(f"   rose {row.text!r:>14}  {row.p_default:.4f} -> {row.p_steered:.4f}")

    print("\n4. the other modes, at the last prompt token only:")
    feats = text_features(sae, lm, args.prompt, k=1).features[-1]
    active = feats[0].feature if feats else feature
    value = feats[0].score if feats else 0.0
    ids, mask = encode_prompts(lm, [args.prompt], prepend_bos=bos)
    clean = lm.logits(ids, mask)
    for mode, values in [("clamp", {active: value}), ("clamp", {active: 4 * value}),
                         ("scale", {active: 0.5}), ("ablate", [active])]:  # fmt: skip
        with saekit.steer(lm, sae, values, mode=mode, positions=-1):
            logits = lm.logits(ids, mask)
        change = float((logits - clean).abs().max())
        print(f"   {mode:6} {values}: largest logit change {change:.2e}")

    text = "Lists are mutable sequences, typically used to store collections of items."
    clean_loss, effects = ablation_effects(sae, lm, text)
    print(f"\n5. ablating each active feature of {text!r} (clean loss {clean_loss:.3f}):")
    for e in effects[:5]:
        print(f"   feature {e.feature:>5}  loss {e.delta_loss:+.4f} (active at {e.positions})")


if __name__ == "__main__":
    with torch.no_grad():
        main()
