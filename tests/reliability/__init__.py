"""The reliability suite: hostile input and faults, each test marked ``reliability``.

``pytest -m reliability`` runs it, with the one test that needs the flow tests' worker:
tests/flows/test_fine_tune.py::test_killed_run_resumes_from_its_checkpoint (SIGKILL of a
fine-tune under a Prefect worker).
"""
