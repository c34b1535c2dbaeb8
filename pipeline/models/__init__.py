"""The model store: base models imported once, as safetensors, with their hashes."""
