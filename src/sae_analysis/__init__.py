"""The original `sae_analysis` import paths (mats_sae_training), as thin modules over saekit.

`sae_analysis.visualizer.data_fns.get_feature_data` (feature dashboards),
`sae_analysis.feature_statistics` (logit-weight statistics), `sae_analysis.tsea` (token set
enrichment analysis), `sae_analysis.toolkit` (loading the GPT-2 small SAEs, Neuronpedia links).
pandas and plotly are needed here (`pip install saekit[analysis]`).
"""
