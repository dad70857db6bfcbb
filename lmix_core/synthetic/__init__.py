"""Parts built from scratch, without downloads: the byte-level tokenizer (:mod:`lmix_core.synthetic.tokenizer`) and
tiny random-init causal LMs (:mod:`lmix_core.synthetic.model`), for the demo, tests, benchmarks and users' own
experiments. :mod:`lmix_core.testing.tiny` re-exports them for tests."""
