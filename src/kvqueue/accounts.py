"""Accounts: isolated sets of named queues in one database.

A server hosts many accounts (Cloudflare's ``/accounts/{account_id}``); each
token is bound to one. The queues of the default account are the ones the
embedded API shows (``db.queues``); another account's queue is stored under
``"{account}/{name}"``. The slash cannot occur in a queue name, so no name of
one account can reach another's, and a dead-letter queue always lives in the
account of the queue it serves.

Each account also has a KV keyspace and a KV queue (``{account}/~kv``) of its
own, which KV Connect reaches; the default account's are the embedded API's.
"""

from __future__ import annotations

import re

from kvqueue import errors
from kvqueue.keys import reserved_key

#: The account whose queues ``db.queues`` manages, and the one a token names by default.
DEFAULT_ACCOUNT = "default"

_SEPARATOR = "/"
_ACCOUNT = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_account(account: str) -> str:
    """``account`` if it is a valid account id (1-64 letters, digits, ``_`` and ``-``)."""
    if not isinstance(account, str) or not _ACCOUNT.fullmatch(account):
        raise errors.InvalidAccount(account)
    return account


def stored_name(account: str, name: str) -> str:
    """The name under which ``account``'s queue ``name`` is stored."""
    return name if account == DEFAULT_ACCOUNT else f"{account}{_SEPARATOR}{name}"


def split_name(stored: str) -> tuple[str, str]:
    """``(account, name)`` of a stored queue name."""
    account, separator, name = stored.rpartition(_SEPARATOR)
    return (account, name) if separator else (DEFAULT_ACCOUNT, stored)


def sibling(stored: str, name: str) -> str:
    """The stored name of queue ``name`` in the account of the stored queue ``stored``."""
    return stored_name(split_name(stored)[0], name)


def kv_prefix(account: str) -> bytes:
    """What every KV key of ``account`` is stored under: nothing for the default
    account (whose keyspace is the embedded API's), a reserved prefix otherwise."""
    if account == DEFAULT_ACCOUNT:
        return b""
    return reserved_key("kv", check_account(account)) + b"\x00"
