"""How ``jobtrail serve`` runs its event loop."""

from __future__ import annotations

import pytest

from service.server import new_event_loop


def test_serve_runs_on_uvloop_where_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")  # a dependency on every platform but Windows
    loop = new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
