"""``python -m lmix``: the same command as the ``lmix`` script (for ``torchrun -m lmix run ...``)."""
