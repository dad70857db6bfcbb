"""Repository meta-tests: entry points cover the modules, tolerances stay tight."""
