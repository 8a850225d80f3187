"""Built-in small models: tokenizers, configs, and the code that builds them."""
