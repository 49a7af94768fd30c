"""The public API: exported names, and the sync face matching the async one."""

from __future__ import annotations

import inspect

import kvqueue


def test_all_lists_exactly_the_public_names() -> None:
    """kvqueue.__all__ names every public attribute and nothing else."""
    public = {
        name
        for name, value in vars(kvqueue).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert set(kvqueue.__all__) - {"__version__"} == public


def test_sync_database_has_every_async_method() -> None:
    """Database offers every public method of AsyncDatabase, with the same parameters."""
    async_methods = {
        name: member
        for name, member in inspect.getmembers(kvqueue.AsyncDatabase, inspect.isfunction)
        if not name.startswith("_")
    }
    internal = {"commit_write", "commit_stored", "shutdown", "wait_closed", "on_closed"}
    for name, method in async_methods.items():
        if name in internal:
            continue
        sync = getattr(kvqueue.Database, name, None)
        assert sync is not None, f"Database lacks {name}"
        assert list(inspect.signature(sync).parameters) == list(
            inspect.signature(method).parameters
        ), name


def test_errors_form_one_hierarchy() -> None:
    """Every exported error derives from KvQueueError; input errors are also ValueErrors."""
    for name in kvqueue.__all__:
        value = getattr(kvqueue, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, kvqueue.KvQueueError), name
    assert issubclass(kvqueue.KeyTooLarge, ValueError)
    error = kvqueue.KeyTooLarge("MAX_KEY_BYTES", 2048, 2100)
    assert str(error) == (
        "encoded key is 2,100 bytes, over the limit MAX_KEY_BYTES = 2,048 bytes by 52"
    )
