"""latentcot: compare latent and token chain of thought in causal language models."""

__version__ = "0.1.0"
