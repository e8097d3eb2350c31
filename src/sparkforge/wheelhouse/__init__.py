"""Stage 6, wheelhouse: the store, its PEP 503/691 index and browsable page, provenance."""
