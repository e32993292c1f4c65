"""The fault-injection suite (issue 8, "Faults"): `pytest -m faults` runs it alone.

Each test injects one kind of fault into the real appliance and its private test bed, then
checks by a full comparison (`convergence`) that tenants and super cluster converge.
"""
