"""The seed use cases in examples/ run as written (SPEC §11)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from examples import balance_transfer, notifications, scheduled_notification

ROOT = Path(__file__).resolve().parent.parent


def test_notification_is_sent(tmp_path: Path) -> None:
    """The enqueued notification reaches the listener, which sends it."""
    assert notifications.main(str(tmp_path / "n.db")) == ["alovelace"]


def test_three_day_notification_lands_in_the_backup_key() -> None:
    """Delivered first after 3 days; when every attempt fails, the backup key holds the message."""
    result = scheduled_notification.main()
    assert result["backup"] == {"forUser": "alovelace", "body": "You've got mail!"}
    assert result["first_attempt_delay_ms"] >= scheduled_notification.THREE_DAYS_MS
    assert result["attempts"] == 6


def test_balance_transfer_happens_once(tmp_path: Path) -> None:
    """The nonce-guarded transfer moves 10 once, even when its message is handled twice."""
    result = balance_transfer.main(str(tmp_path / "bank.db"))
    assert result["balances"] == {"bob": 90, "liz": 10}
    assert result["counts"] == {"enqueued_count": kvqueue_u64(1), "processed_count": kvqueue_u64(1)}


def kvqueue_u64(n: int) -> object:
    import kvqueue

    return kvqueue.KvU64(n)


def test_tour_runs(tmp_path: Path) -> None:
    """The README tour (examples/tour.py) completes and handles every message."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tour.py"), str(tmp_path / "tour.db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "handled 1000 messages" in out
