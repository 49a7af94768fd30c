"""``kvqueue.toml``: queues, producers and consumers declared as ``wrangler.toml`` does.

::

    name = "myapp"                   # the Worker's name: its consumers' script_name
    db = "app.sqlite"                # optional; --db and KVQUEUE_DB win over it

    [[queues.producers]]
    queue = "emails"
    binding = "EMAILS"
    delivery_delay = 30              # seconds: the queue's delivery_delay

    [[queues.consumers]]
    queue = "emails"
    handler = "myapp.jobs:handle"    # kvqueue's key: what `kvqueue worker` runs
    max_batch_size = 10
    dead_letter_queue = "emails-dlq"

    [[queues.consumers]]
    queue = "uploads"
    type = "http_pull"
    visibility_timeout_ms = 60000

    [queues.settings.uploads]        # kvqueue's table for what wrangler has no key for
    message_retention_period = 86400

:func:`load` reads and checks a file into a :class:`Config`, raising
:class:`~kvqueue.errors.InvalidConfig` (naming the file, the table and the key)
for the first thing wrong in it, unknown keys included. The ranges are checked by
the functions the API checks them with (:func:`kvqueue.consumers.make_consumer`,
:func:`kvqueue.queues.checked_settings`), so a file accepts exactly what
``db.queues`` accepts.

:func:`plan` compares a Config with a database and :func:`deploy` makes the
database match it: missing queues are created, queue settings the file sets are
changed, consumers are added or replaced by the file's. Nothing the file does
not mention is removed or reset, and a queue whose consumer is not the one the
file declares is an error (a queue has one consumer; deploy never removes one).
:func:`build_worker` makes the :class:`kvqueue.Worker` of the file's worker
consumers, which ``kvqueue worker`` runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import sys
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kvqueue import errors
from kvqueue.accounts import check_account
from kvqueue.consumers import Consumer, default_settings, make_consumer
from kvqueue.messages import check_name
from kvqueue.queues import QueueInfo, checked_settings, no_self_dead_letter

if TYPE_CHECKING:
    from kvqueue.sync import Database, Queues
    from kvqueue.worker import Worker

#: The file ``kvqueue deploy``, ``worker`` and ``serve`` read when not told another.
DEFAULT_CONFIG = "kvqueue.toml"

_TOP_KEYS = ("name", "db", "account", "queues")
_QUEUES_KEYS = ("producers", "consumers", "settings")
_PRODUCER_KEYS = ("queue", "binding", "delivery_delay")
#: Queue settings a file may set, by their ``db.queues.create`` names. Pausing is
#: left out on purpose: a deploy must not resume a queue an operator paused.
_QUEUE_SETTINGS = ("delivery_delay", "message_retention_period", "max_backlog", "max_backlog_bytes")
# Consumer keys (wrangler's names) and the make_consumer setting each one sets.
_COMMON_CONSUMER_KEYS = {
    "max_batch_size": "batch_size",
    "max_retries": "max_retries",
    "dead_letter_queue": "dead_letter_queue",
    "retry_delay": "retry_delay",
}
_CONSUMER_KEYS: dict[str, dict[str, str]] = {
    "worker": {
        **_COMMON_CONSUMER_KEYS,
        "max_batch_timeout": "max_batch_timeout",
        "max_concurrency": "max_concurrency",
    },
    "http_pull": {
        **_COMMON_CONSUMER_KEYS,
        "visibility_timeout_ms": "visibility_timeout_ms",
        "body_encoding": "body_encoding",
    },
}
_CONSUMER_OWN_KEYS = {"worker": ("queue", "type", "handler"), "http_pull": ("queue", "type")}
# What a Consumer holds that is not a setting: left out of comparisons.
_IDENTITY = ("consumer_id", "created_at_ms")


@dataclass(frozen=True, slots=True)
class Producer:
    """A ``[[queues.producers]]`` entry: a program sends to ``queue``.

    ``binding`` is kept as written (a Worker's variable name in wrangler; kvqueue
    has no use for it yet). ``delivery_delay`` (seconds) is the queue's.
    """

    queue: str
    binding: str | None = None
    delivery_delay: int | None = None


@dataclass(frozen=True, slots=True)
class ConsumerDeclaration:
    """A ``[[queues.consumers]]`` entry: the consumer ``queue`` should have.

    Attributes:
        queue: the queue consumed.
        consumer: the checked consumer, with every setting (those the file leaves
            out at their defaults); its ``consumer_id`` means nothing.
        handler: ``"module:function"`` a worker consumer runs; None for http_pull.
        table: where in the file it was declared, for messages.
    """

    queue: str
    consumer: Consumer
    handler: str | None
    table: str


@dataclass(frozen=True, slots=True)
class Config:
    """A checked ``kvqueue.toml``.

    Attributes:
        path: the file it was read from.
        name: the Worker's name (wrangler's ``name``): the ``script_name`` of every
            worker consumer the file declares. Needed when it declares one.
        db: the database it names, a relative file path made relative to the
            file's directory; None if it names none.
        account: whose queues it declares (None: the database's default account;
            through a server, the token's).
        queues: every queue the file names (dead-letter queues too), each with the
            settings the file sets for it, in the order the file names them.
        producers: the ``[[queues.producers]]`` entries.
        consumers: the ``[[queues.consumers]]`` entries.
    """

    path: Path
    name: str | None = None
    db: str | None = None
    account: str | None = None
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)
    producers: tuple[Producer, ...] = ()
    consumers: tuple[ConsumerDeclaration, ...] = ()

    @property
    def workers(self) -> tuple[ConsumerDeclaration, ...]:
        """The worker (push) consumers, the ones ``kvqueue worker`` runs."""
        return tuple(c for c in self.consumers if c.consumer.type == "worker")


# --- reading ------------------------------------------------------------------------


class _Table:
    """One table of the file being read, to name it in errors."""

    def __init__(self, path: Path, name: str, data: Any) -> None:
        self.path = path
        self.name = name
        if not isinstance(data, dict):
            raise self.fail(None, f"must be a table, got {_toml(data)}")
        self.data: dict[str, Any] = data

    def fail(self, key: str | None, problem: str) -> errors.InvalidConfig:
        return errors.InvalidConfig(str(self.path), self.name, key, problem)

    def only(self, known: Iterable[str]) -> None:
        """Refuse keys not in ``known`` (a typo must not pass silently)."""
        allowed = list(known)
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.fail(key, f"unknown key {key!r}{hint}")

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(key, f"{key} is missing")
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"{key} must be a non-empty string, got {_toml(value)}")
        return value

    def queue(self) -> str:
        """The entry's ``queue``, a valid queue name."""
        name = self.string("queue", required=True)
        assert name is not None
        self.check("queue", functools.partial(check_name, name))
        return name

    def check(self, key: str | None, run: Callable[[], Any], setting: str | None = None) -> Any:
        """``run()``, its InvalidInput turned into InvalidConfig about ``key`` (whose
        setting the message may call ``setting``)."""
        try:
            return run()
        except errors.InvalidInput as exc:
            problem = str(exc)
            if key is not None and setting is not None and setting != key:
                # The API names its setting; the file's reader knows the key.
                if problem.startswith(f"{setting} "):
                    problem = key + problem[len(setting) :]
                else:
                    problem = f"{key}: {problem}"
            elif key is not None and not problem.startswith(key):
                problem = f"{key}: {problem}"
            raise self.fail(key, problem) from exc


def _toml(value: Any) -> str:
    """``value`` as TOML would write it, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _entries(parent: _Table, key: str) -> list[_Table]:
    """The tables of an array of tables (``[[queues.KEY]]``)."""
    value = parent.data.get(key, [])
    if not isinstance(value, list):
        raise parent.fail(key, f"queues.{key} must be an array of tables ([[queues.{key}]])")
    tables = []
    for number, item in enumerate(value, 1):
        label = f"[[queues.{key}]] #{number}"
        if isinstance(item, dict) and isinstance(item.get("queue"), str):
            label += f" (queue {item['queue']!r})"
        tables.append(_Table(parent.path, label, item))
    return tables


def find(path: str | Path | None = None) -> Path | None:
    """The config file to read: ``path`` if given (it must exist), else
    ``./kvqueue.toml`` if there is one, else None."""
    if path is not None:
        given = Path(path)
        if not given.is_file():
            raise errors.InvalidConfig(str(given), "", None, "no such file")
        return given
    default = Path(DEFAULT_CONFIG)
    return default if default.is_file() else None


def load(path: str | Path) -> Config:
    """Read and check ``path``.

    Raises:
        InvalidConfig: the file is missing, is not TOML, or breaks a rule; the
            message names the file, the table and the key.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise errors.InvalidConfig(str(path), "", None, "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise errors.InvalidConfig(str(path), "", None, f"not valid TOML: {exc}") from None
    return parse(data, path)


def parse(data: dict[str, Any], path: str | Path = DEFAULT_CONFIG) -> Config:
    """Check the contents of a kvqueue.toml (as ``tomllib`` reads it); ``path``
    names it in errors and anchors a relative ``db``."""
    path = Path(path)
    top = _Table(path, "top level", data)
    top.only(_TOP_KEYS)
    name = top.string("name")
    account = top.string("account")
    if account is not None:
        top.check("account", lambda: check_account(account))
    db = top.string("db")
    if db is not None and "://" not in db and db != ":memory:" and not Path(db).is_absolute():
        # Like wrangler's paths: relative to the file, wherever the command runs.
        db = str(path.parent / db)
    section = _Table(path, "[queues]", data.get("queues", {}))
    section.only(_QUEUES_KEYS)

    queues: dict[str, dict[str, Any]] = {}
    # Where each queue setting was set, so a second, different value names both.
    origins: dict[tuple[str, str], str] = {}

    def declare(table: _Table, queue: str, key: str | None = None, value: Any = None) -> None:
        settings = queues.setdefault(queue, {})
        if key is None:
            return
        table.check(key, lambda: checked_settings(default_settings(), **{key: value}))
        if key in settings and settings[key] != value:
            raise table.fail(
                key,
                f"{key} = {_toml(value)} for queue {queue!r}, but"
                f" {origins[queue, key]} sets {_toml(settings[key])}",
            )
        settings[key] = value
        origins[queue, key] = table.name

    producers = []
    for table in _entries(section, "producers"):
        table.only(_PRODUCER_KEYS)
        queue = table.queue()
        producer = Producer(queue, table.string("binding"), table.data.get("delivery_delay"))
        declare(table, queue)
        if producer.delivery_delay is not None:
            declare(table, queue, "delivery_delay", producer.delivery_delay)
        producers.append(producer)

    consumers: list[ConsumerDeclaration] = []
    for table in _entries(section, "consumers"):
        declaration = _consumer(table, name)
        for other in consumers:
            if other.queue == declaration.queue:
                raise table.fail(
                    "queue",
                    f"queue {declaration.queue!r} already has a consumer in {other.table}"
                    " (a queue has one consumer)",
                )
        declare(table, declaration.queue)
        if declaration.consumer.dead_letter_queue is not None:
            declare(table, declaration.consumer.dead_letter_queue)
        consumers.append(declaration)

    settings = _Table(path, "[queues.settings]", section.data.get("settings", {}))
    for queue, values in settings.data.items():
        table = _Table(path, f"[queues.settings.{queue}]", values)
        table.check(None, functools.partial(check_name, queue))
        if "delivery_paused" in table.data:
            raise table.fail(
                "delivery_paused",
                "delivery_paused cannot be declared: pause and resume with `kvqueue queues"
                " pause-delivery` and `resume-delivery` (a deploy must not resume a paused queue)",
            )
        table.only(_QUEUE_SETTINGS)
        declare(table, queue)
        for key, value in table.data.items():
            declare(table, queue, key, value)

    return Config(
        path=path,
        name=name,
        db=db,
        account=account,
        queues=queues,
        producers=tuple(producers),
        consumers=tuple(consumers),
    )


def _consumer(table: _Table, name: str | None) -> ConsumerDeclaration:
    kind = table.data.get("type", "worker")
    if not isinstance(kind, str) or kind not in _CONSUMER_KEYS:
        raise table.fail("type", f'type is "worker" or "http_pull", got {_toml(kind)}')
    keys = _CONSUMER_KEYS[kind]
    for key in table.data:
        if key not in keys and key not in _CONSUMER_OWN_KEYS[kind]:
            other = "http_pull" if kind == "worker" else "worker"
            if key in _CONSUMER_KEYS[other] or key in _CONSUMER_OWN_KEYS[other]:
                raise table.fail(key, f"{key} is a setting of {other} consumers, not of {kind}")
    if "name" in table.data or "script_name" in table.data:
        key = "name" if "name" in table.data else "script_name"
        raise table.fail(
            key,
            f"{key} is not a consumer's key: the top-level name is the Worker's name, the"
            " script_name of every worker consumer in the file (as in wrangler.toml)",
        )
    table.only([*_CONSUMER_OWN_KEYS[kind], *keys])
    queue = table.queue()
    handler = None
    if kind == "worker":
        handler = table.string("handler", required=True)
        assert handler is not None
        module, _, attribute = handler.partition(":")
        if not module or not attribute:
            raise table.fail(
                "handler", f'handler is "module:function" (myapp.jobs:handle), got "{handler}"'
            )
        if name is None:
            raise table.fail(
                None,
                'a worker consumer needs the top-level name = "..." (the Worker\'s name,'
                " stored as the consumer's script_name, as in wrangler.toml)",
            )
    given: dict[str, Any] = {}
    for key, setting in keys.items():
        if key in table.data:
            value = table.data[key]
            # One setting at a time, so a range error is blamed on its own key.
            one = functools.partial(make_consumer, kind, **{setting: value})
            table.check(key, one, setting)
            given[setting] = value
    script = name if kind == "worker" else None
    consumer = table.check(None, lambda: make_consumer(kind, script_name=script, **given))
    table.check("dead_letter_queue", lambda: no_self_dead_letter(queue, consumer))
    return ConsumerDeclaration(queue, consumer, handler, table.name)


# --- comparing and deploying --------------------------------------------------------

Kind = Literal["queue", "consumer"]
Action = Literal["create", "update", "add", "unchanged"]


@dataclass(frozen=True, slots=True)
class Change:
    """One thing :func:`deploy` does (or found already done).

    Attributes:
        queue: the queue it is about.
        kind: ``"queue"`` (the queue and its settings) or ``"consumer"``.
        action: ``"create"`` (a queue), ``"add"`` (a consumer), ``"update"`` or
            ``"unchanged"``.
        settings: what it sets: on create and add, the settings the file gives (a
            consumer's type and script_name too); on update, the new values of
            the settings that change.
        previous: on update, the old values of those settings; else empty.
    """

    queue: str
    kind: Kind
    action: Action
    settings: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether the database changes (or would)."""
        return self.action != "unchanged"

    def describe(self) -> str:
        """The settings it sets, in a few words: ``a=1, b: 2 -> 3``."""
        if self.previous:
            return ", ".join(
                f"{key}: {_shown(self.previous[key])} -> {_shown(value)}"
                for key, value in self.settings.items()
            )
        return ", ".join(f"{key}={_shown(value)}" for key, value in self.settings.items())


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)


def _settings(consumer: Consumer) -> dict[str, Any]:
    """A consumer's settings: everything but its identity."""
    return {k: v for k, v in dataclasses.asdict(consumer).items() if k not in _IDENTITY}


def _consumer_arguments(consumer: Consumer) -> dict[str, Any]:
    """The ``add_consumer``/``update_consumer`` keyword arguments that make ``consumer``."""
    arguments = _settings(consumer)
    del arguments["type"]
    return arguments


def _queue_change(queue: str, wanted: dict[str, Any], info: QueueInfo | None) -> Change:
    if info is None:
        return Change(queue, "queue", "create", dict(wanted))
    current = {key: getattr(info, key) for key in wanted}
    differ = {key: value for key, value in wanted.items() if current[key] != value}
    if not differ:
        return Change(queue, "queue", "unchanged")
    return Change(queue, "queue", "update", differ, {key: current[key] for key in differ})


def _consumer_change(
    config: Config, declaration: ConsumerDeclaration, existing: Consumer | None
) -> Change:
    wanted = declaration.consumer
    queue = declaration.queue
    if existing is None:
        defaults = _settings(make_consumer(wanted.type))
        shown = {
            key: value
            for key, value in _settings(wanted).items()
            if key == "type" or (defaults[key] != value and value is not None)
        }
        return Change(queue, "consumer", "add", shown)
    if existing.type != wanted.type or existing.script_name != wanted.script_name:
        fix = (
            f"kvqueue queues consumer remove {queue} {existing.script_name}"
            if existing.type == "worker"
            else f"kvqueue queues consumer http remove {queue}"
        )
        exc = errors.rebuilt(
            errors.ConsumerExists,
            f"{config.path}: {declaration.table} declares consumer {wanted.describe()} for"
            f" queue {queue!r}, which already has a consumer ({existing.describe()}); a queue"
            f" has one consumer and deploy removes nothing: remove it first ({fix})",
        )
        assert isinstance(exc, errors.ConsumerExists)
        exc.queue, exc.existing = queue, existing.describe()
        raise exc
    now, then = _settings(wanted), _settings(existing)
    differ = {key: value for key, value in now.items() if then[key] != value}
    if not differ:
        return Change(queue, "consumer", "unchanged")
    return Change(queue, "consumer", "update", differ, {key: then[key] for key in differ})


def _queues_of(db: Database, config: Config) -> Queues:
    return db.queues_of(config.account) if config.account else db.queues


def plan(db: Database, config: Config) -> list[Change]:
    """What :func:`deploy` would do to ``db``: every queue first, then every
    consumer, each with its action (``unchanged`` included); changes nothing.

    Raises:
        ConsumerExists: a queue has a consumer other than the one the file
            declares (another type or another Worker).
    """
    queues = _queues_of(db, config)
    infos: dict[str, QueueInfo | None] = {}
    for queue in config.queues:
        try:
            infos[queue] = queues.get(queue)
        except errors.QueueNotFound:
            infos[queue] = None
    changes = [_queue_change(q, wanted, infos[q]) for q, wanted in config.queues.items()]
    for declaration in config.consumers:
        info = infos[declaration.queue]
        existing = info.consumer if info is not None else None
        changes.append(_consumer_change(config, declaration, existing))
    return changes


def deploy(db: Database, config: Config, *, dry_run: bool = False) -> list[Change]:
    """Make ``db`` hold what ``config`` declares; returns what it did (see :func:`plan`).

    Creates missing queues (with the file's settings, the others at their
    defaults), changes the queue settings the file sets and leaves the others as
    they are, adds missing consumers and replaces changed ones with the file's
    (settings the file leaves out at their defaults, as wrangler does). It removes
    nothing, and running it again changes nothing. The whole plan is checked
    before the first change, so a conflict changes nothing.

    Raises:
        ConsumerExists: a queue has a consumer other than the one the file declares.
    """
    changes = plan(db, config)
    if dry_run:
        return changes
    queues = _queues_of(db, config)
    consumers = {c.queue: c.consumer for c in config.consumers}
    for change in changes:
        if change.kind == "queue" and change.action == "create":
            try:
                queues.create(change.queue, **change.settings)
            except errors.QueueExists:
                # Created by someone else since the plan: make it match instead.
                queues.update(change.queue, **config.queues[change.queue])
        elif change.kind == "queue" and change.action == "update":
            queues.update(change.queue, **change.settings)
        elif change.kind == "consumer" and change.action == "add":
            consumer = consumers[change.queue]
            queues.add_consumer(change.queue, consumer.type, **_consumer_arguments(consumer))
        elif change.kind == "consumer" and change.action == "update":
            consumer = consumers[change.queue]
            queues.update_consumer(change.queue, consumer.type, **_consumer_arguments(consumer))
    return changes


# --- the Worker ---------------------------------------------------------------------


def import_object(spec: str, directories: Iterable[str]) -> Any:
    """What ``module:attribute`` (the attribute may be dotted) names, importing the
    module with ``directories`` searched first, as ``python -m`` searches the
    current one.

    Raises:
        LookupError: the module cannot be imported or has no such attribute; the
            message says which.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise LookupError(f"expected MODULE:NAME, got {spec!r}")
    for directory in directories:
        if directory not in sys.path:
            sys.path.insert(0, directory)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise LookupError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return target


def load_handler(config: Config, declaration: ConsumerDeclaration) -> Callable[..., Any]:
    """Import the handler a worker consumer names (``module:function``), looking in
    the current directory and the file's directory first, as ``python -m`` would."""
    assert declaration.handler is not None

    def fail(problem: str) -> errors.InvalidConfig:
        return errors.InvalidConfig(
            str(config.path),
            declaration.table,
            "handler",
            f'handler "{declaration.handler}": {problem}',
        )

    try:
        target = import_object(
            declaration.handler, (str(config.path.parent.resolve()), str(Path.cwd()))
        )
    except LookupError as exc:
        raise fail(str(exc)) from exc.__cause__
    if not callable(target):
        attribute = declaration.handler.partition(":")[2]
        raise fail(f"{attribute} is a {type(target).__name__}, not a function")
    handler: Callable[..., Any] = target
    return handler


def build_worker(config: Config, database: Any, *, token: str | None = None) -> Worker:
    """The :class:`kvqueue.Worker` of the file's worker consumers, on ``database``
    (what ``kvqueue.Worker`` takes), named by the file's ``name``.

    Raises:
        InvalidConfig: the file declares no worker consumer, or a handler cannot be
            imported.
    """
    from kvqueue.worker import Worker

    if not config.workers:
        raise errors.InvalidConfig(
            str(config.path),
            "[[queues.consumers]]",
            None,
            'no worker consumers to run: declare one with queue = "..." and'
            ' handler = "module:function"',
        )
    worker = Worker(database, name=config.name, account=config.account, token=token)
    for declaration in config.workers:
        consumer = declaration.consumer
        worker.consumer(
            declaration.queue,
            max_batch_size=consumer.batch_size,
            max_batch_timeout=consumer.max_batch_timeout,
            max_retries=consumer.max_retries,
            retry_delay=consumer.retry_delay,
            dead_letter_queue=consumer.dead_letter_queue,
            max_concurrency=consumer.max_concurrency,
        )(load_handler(config, declaration))
    return worker
