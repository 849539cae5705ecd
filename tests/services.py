"""The one rule for a service or tool a test needs and cannot have.

Under ``CI=true`` a missing service is a failure, never a skip; on a laptop the test is
skipped, with the reason and the fix.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (under CI=true this must be available)", pytrace=False)
    pytest.skip(f"{reason} (under CI=true this is a failure)")
