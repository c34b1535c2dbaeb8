"""Curation: raw example files to clean, deduplicated, split chat records. No Dagster imports."""
