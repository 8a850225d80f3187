"""Prompt templates, one JSON file per domain (format in README.md here); installed as package data
and read through ``importlib.resources``, so they are found from any working directory."""
