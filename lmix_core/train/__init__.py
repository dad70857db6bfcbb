"""The backend-agnostic SFT/RL training loop."""
