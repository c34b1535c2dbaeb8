"""The production feedback loop's domain code: the bucket's events (`FEEDBACK.md`) read, turned into training data."""
