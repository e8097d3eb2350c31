"""Stage 8, team: publish, export, serve, bundle and the outdated report."""
