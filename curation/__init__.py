"""Curation algorithms on plain data (no Spark): matching, balancing, hashing, shards, statistics."""
