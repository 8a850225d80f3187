"""Built-in small models: tokenizers, configs, training, and the looped architecture.

Importing the package imports nothing heavy; code that loads models registers the looped model
type with transformers' Auto classes by importing ``latentcot.zoo.looped``.
"""
