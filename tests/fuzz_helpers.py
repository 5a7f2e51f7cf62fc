"""Shared by tests/test_fuzz_kernels.py and tests/test_fuzz_public.py."""
import faulthandler
import os

import pytest

EXAMPLES = int(os.environ.get("DLFAST_FUZZ_EXAMPLES", "40"))   # per entry point; 40 = CI budget


@pytest.fixture(autouse=True)
def hang_guard():
    """A hang (in Python or inside a kernel) dumps every thread's traceback and ends the run."""
    faulthandler.dump_traceback_later(60 + 3 * EXAMPLES, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
