"""Data: download, ingest, synthesis, shards and loading."""
