"""Contract suites every registered component must pass, built-in or third-party (cf. scikit-learn's
``check_estimator``). Plugin authors call them from their own tests."""
