"""Built-in small models: tokenizers, configs, and the code that builds them."""
from latentcot.zoo import looped  # noqa: F401  registers the looped model with the Auto classes
