"""Fixtures for the codec tests: every behaviour is checked on both implementations.

``impl`` is parametrized over the compiled module (``codec._mulaw``) and the NumPy fallback
(``codec._fallback``); a test using it runs once per implementation.  Where the compiled module is
missing its cases skip, and ``test_codec_selection.py::test_compiled_module_is_built_where_a_compiler_exists``
fails instead, so a silent fallback cannot pass unnoticed.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from codec import _fallback

_compiled: ModuleType | None
try:
    _compiled = importlib.import_module("codec._mulaw")
except ImportError:  # no compiled module: its cases skip (and the build test fails where cc exists)
    _compiled = None

IMPLEMENTATIONS: dict[str, ModuleType | None] = {"cython": _compiled, "python": _fallback}


@pytest.fixture(scope="session", params=sorted(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """One codec implementation module (same API in both)."""
    module = IMPLEMENTATIONS[request.param]
    if module is None:
        pytest.skip("codec._mulaw is not built")
    return module


@pytest.fixture(scope="session")
def compiled() -> ModuleType:
    """The compiled implementation (skips where it is not built)."""
    if _compiled is None:
        pytest.skip("codec._mulaw is not built")
    return _compiled


@pytest.fixture(scope="session")
def fallback() -> ModuleType:
    """The NumPy implementation."""
    return _fallback
