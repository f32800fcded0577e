import pytest

# Plain asserts in the shared invariant checks report their values, as they would in a test module.
pytest.register_assert_rewrite("billing.tests.invariants")
