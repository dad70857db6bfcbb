"""Documentation meta-tests: every component, error, setting and command is documented."""
