"""Stores and datasets named by an fsspec URL (s3://, gs://, memory://...) instead of a path."""
