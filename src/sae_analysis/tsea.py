"""Token set enrichment analysis (TSEA) with the original function names, over
`saekit.analysis.token_sets`: sets from regexes, letters, part of speech, names and word
lists; GSEA running-sum enrichment scores as a pandas table; Manhattan plots (plotly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from saekit.analysis import token_sets as ts


def get_enrichment_df(
    projections: Tensor, features: list[int], gene_sets_selected: dict[str, set[int]]
) -> pd.DataFrame:
    """Enrichment scores in [0, 1]: one row per set, one column per feature."""
    names, member_SV = ts.set_masks(gene_sets_selected, projections.shape[1])
    scores_SF = ts.ks_enrichment(projections[list(features)], member_SV)
    return pd.DataFrame(scores_SF.numpy(), index=names, columns=list(features))


def calculate_batch_enrichment_scores(scores: Tensor, index_lists: Tensor) -> Tensor:
    """`[S, F]` enrichment of sets given as `-1`-padded id lists `[S, L]` in `scores [F, V]`."""
    sets = {str(s): [i for i in row.tolist() if i >= 0] for s, row in enumerate(index_lists)}
    return ts.ks_enrichment(scores, ts.set_masks(sets, scores.shape[1])[1])


def pad_gene_sets(gene_sets_token_ids: dict[str, set[int]]) -> dict[str, list[int]]:
    """Each set as a list padded with -1 to the longest set's length."""
    width = max(len(v) for v in gene_sets_token_ids.values())
    return {k: sorted(v) + [-1] * (width - len(v)) for k, v in gene_sets_token_ids.items()}


def _to_log_scale(df: pd.DataFrame) -> pd.DataFrame:
    return df.apply(lambda x: -np.log(np.clip(1 - x, 1e-12, None)))


def manhattan_plot_enrichment_scores(
    df_enrichment_scores: pd.DataFrame, label_threshold: float = 1.0, top_n: int = 3
) -> Any:
    """Plotly figure: `-log(1 - score)` of every feature, one panel per token set, the
    `top_n` features of each set above `label_threshold` labelled."""
    import plotly.express as px

    long = _to_log_scale(df_enrichment_scores).reset_index(names="gene_set").melt(
        id_vars="gene_set", var_name="Feature", value_name="Enrichment Score")  # fmt: skip
    fig = px.scatter(long, x="Feature", y="Enrichment Score", color="gene_set",
                     facet_col="gene_set", width=1400, height=500)  # fmt: skip
    fig.update_traces(marker={"size": 3})
    panels = {name: i + 1 for i, name in enumerate(long["gene_set"].unique())}
    for name, group in long.groupby("gene_set"):
        for _, row in group.nlargest(top_n, "Enrichment Score").iterrows():
            if row["Enrichment Score"] > label_threshold:
                fig.add_annotation(x=row["Feature"], y=row["Enrichment Score"],
                                   text=str(row["Feature"]), showarrow=False, yshift=12,
                                   xref=f"x{panels[name]}", yref=f"y{panels[name]}")  # fmt: skip
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_layout(showlegend=False, font={"size": 14})
    return fig


def plot_top_k_feature_projections_by_token_and_category(
    gene_sets_selected: dict[str, set[int]],
    df_enrichment_scores: pd.DataFrame,
    category: str,
    model: Any,
    dec_projection_onto_W_U: Tensor,
    k: int = 5,
    projection_onto: str = "W_U",
    features: list[int] | None = None,
    log_y: bool = True,
    histnorm: str | None = None,
    out_dir: str = "es_plots",
) -> list[Any]:
    """Histograms of the top-`k` features' logit weights, the category's tokens coloured;
    each is shown and written to `out_dir`. Returns the figures."""
    import plotly.express as px

    scores = df_enrichment_scores.loc[category]
    features = features or scores.sort_values(ascending=False).head(k).index.to_list()
    vocab = dec_projection_onto_W_U.shape[1]
    table = pd.DataFrame(dec_projection_onto_W_U[features].T.numpy(), columns=features)
    table["token"] = model.tokenizer.batch_decode([[i] for i in range(vocab)])
    table[category] = [i in gene_sets_selected[category] for i in range(vocab)]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    figs = []
    for feature in features:
        score = float(-np.log(max(1 - scores[feature], 1e-12)))
        fig = px.histogram(table, x=feature, color=category, barmode="overlay", log_y=log_y,
                           histnorm=histnorm, hover_name="token", marginal="box", width=800,
                           height=400, title=f"W_dec_{feature}, {projection_onto}, {category}: {score:2.2f}",
                           labels={feature: f"W_U W_dec[{feature}]"})  # fmt: skip
        fig.show()
        fig.write_html(f"{out_dir}/{feature}_projection_onto_{projection_onto}_by_{category}.html")
        figs.append(fig)
    return figs


def get_letter_gene_sets(vocab: dict[str, int]) -> dict[str, set[int]]:
    """Alphabetic tokens by first letter."""
    return ts.letter_sets(vocab)


def get_gene_set_from_regex(vocab: dict[str, int], pattern: str) -> set[int]:
    """Tokens whose vocabulary string matches `pattern`."""
    return ts.regex_sets(vocab, {"set": pattern})["set"]


def generate_pos_sets(vocab: dict[str, int]) -> dict[str, set[int]]:
    """Part-of-speech sets keyed `nltk_pos_<TAG>` as in the original (the tags come from the
    lexicon in `lemminflect`, not from nltk; see `saekit.analysis.token_sets.pos_sets`)."""
    return ts.pos_sets(vocab, prefix="nltk_pos_")


def get_baby_name_sets(vocab: dict[str, int], k: int = 300) -> dict[str, set[int]]:
    """`boy_names` / `girl_names`: the `k` most common US first names (census lists)."""
    sets = ts.name_sets(vocab, k)
    return {"boy_names": sets["boys_names"], "girl_names": sets["girls_names"]}


WORD_LISTS = {
    **{f"{d}'s": [str(y) for y in range(d, d + 10)] for d in range(1910, 2020, 10)},
    "colors": "red green blue yellow orange purple pink brown black white grey violet".split(),
    "positive_words": "good great excellent wonderful lovely superb brilliant delightful "
    "pleasant splendid marvellous fantastic cheerful graceful elegant".split(),
    "negative_words": "bad awful terrible horrible dreadful nasty poor dismal grim ugly "
    "miserable painful hostile vile gloomy".split(),
    "emotions": "anger fear joy sadness surprise disgust love hate hope pride shame guilt "
    "envy trust".split(),
    "boys_names": "James John Robert Michael William David Richard Thomas Charles Daniel".split(),
    "girls_names": "Mary Linda Barbara Elizabeth Jennifer Maria Susan Margaret Dorothy Lisa".split(),
    "countries": "France Germany Japan China India Brazil Canada Mexico Italy Spain".split(),
}  # fmt: skip
"""Small word lists (written for saekit) for the sets the original tutorial compared."""


def get_test_gene_sets(model: Any) -> dict[str, set[int]]:
    """Token sets of `WORD_LISTS` (decades, colours, positive/negative words, names, ...)."""
    return ts.word_list_sets(model.tokenizer, WORD_LISTS)


__all__ = [
    "calculate_batch_enrichment_scores", "generate_pos_sets", "get_baby_name_sets",
    "get_enrichment_df", "get_gene_set_from_regex", "get_letter_gene_sets",
    "get_test_gene_sets", "manhattan_plot_enrichment_scores", "pad_gene_sets",
    "plot_top_k_feature_projections_by_token_and_category",
]  # fmt: skip
