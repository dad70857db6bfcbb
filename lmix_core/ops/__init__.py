"""Pure tensor and scalar helpers shared by components (no registered parts here)."""
