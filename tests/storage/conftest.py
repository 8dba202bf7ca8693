"""The crash harness's --runs option, when pytest is pointed at this folder.

pytest reads ``pytest_addoption`` only from conftest files it loads at
start-up: this one counts when ``tests/storage`` is named on the command
line; from the project root the option must live in ``tests/conftest.py``
(the same hook; a second definition is skipped here).
"""

from __future__ import annotations

import contextlib

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    with contextlib.suppress(ValueError):  # already added by tests/
        parser.addoption(
            "--runs",
            type=int,
            default=None,
            help="how many times each crash harness kills its child "
            "(default: 200 for persist, 100 for rotation)",
        )
