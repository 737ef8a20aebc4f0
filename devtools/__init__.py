"""Development and test tooling: the launcher behind ``invoke run``, the dev SMTP sink, sample
events and their loader, HTTP doubles for the gateway's tests and benchmarks.

No deployable imports this package (tests/unit/test_deployables.py checks it), and no
container image holds it.
"""
