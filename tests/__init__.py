"""The test suite (helpers live beside the tests: dist.py, parallel_cases.py, data_helpers.py, ...)."""
