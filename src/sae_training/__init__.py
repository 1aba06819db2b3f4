"""The original `sae_training` import paths (mats_sae_training), as thin modules over saekit.

`sae_training.utils.LMSparseAutoencoderSessionloader`, `sae_training.config.LanguageModelSAERunnerConfig`,
`sae_training.lm_runner.language_model_sae_runner`, `sae_training.sparse_autoencoder.SparseAutoencoder`,
`sae_training.sae_group.SAEGroup`, `sae_training.activations_store.ActivationsStore`.
Nothing here is a second implementation: each name maps onto `saekit.compat`.
"""
