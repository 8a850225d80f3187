"""Optional decoding backends (vLLM), imported lazily by name."""
