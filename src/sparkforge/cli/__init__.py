"""The command line: parse, call the pipeline, render. ``sparkforge`` runs ``main``."""

from sparkforge.cli.app import build_parser, entry, main

__all__ = ["build_parser", "entry", "main"]
