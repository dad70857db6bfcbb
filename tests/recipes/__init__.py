"""Every shipped recipe validates."""
