"""Spark jobs and the `metacurate` command line. Thin wrappers around `curation/` and `metadata/`."""
