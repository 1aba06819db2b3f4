"""saekit: train, load, evaluate and analyse sparse autoencoders on language-model activations."""

__version__ = "0.1.0"
