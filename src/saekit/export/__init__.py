"""Exports of SAE features to other tools (`saekit export neuronpedia ...`)."""
