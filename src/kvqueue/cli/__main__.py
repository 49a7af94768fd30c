"""``python -m kvqueue.cli``: the ``kvqueue`` command."""

from __future__ import annotations

from kvqueue.cli import main

raise SystemExit(main())
