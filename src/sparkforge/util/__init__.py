"""Shared helpers every stage may use: errors, hashing, files, processes, fetching, the workspace."""
