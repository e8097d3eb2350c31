"""Stage 1, config: the project's inputs (targets, recipes, patch series, the recipe graph)."""
