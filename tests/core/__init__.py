"""Tests of the registry, recipes, config structuring, errors and the CLI."""
