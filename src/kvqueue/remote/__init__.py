"""Reaching a kvqueue server: what ``kvqueue.open("http://…")`` and a remote Worker use.

* :mod:`kvqueue.remote.http`: the server's Cloudflare REST API with one token.
* :mod:`kvqueue.remote.worker`: a Worker's queues on a server.

Needs the ``remote`` extra: ``pip install 'kvqueue[remote]'``.
"""

from __future__ import annotations

from kvqueue.remote.http import Server, is_url

__all__ = ["Server", "is_url"]
