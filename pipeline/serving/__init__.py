"""Serving: the OpenAI-compatible app, the adapter pool and hot swap, the canary router, the buffered feedback
writer and the canary statistics. Plain Python; no Dagster imports."""
