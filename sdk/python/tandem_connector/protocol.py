"""The base class, the errors and the protocol loop of a Tandem process connector.

Messages are JSON objects, one per line: Tandem writes requests to stdin, the
connector answers each on stdout with the same ``id``. Everything a connector prints
goes to stderr (``print`` included), which Tandem forwards into its own log.
"""

import json
import logging
import sys
import traceback
from typing import Any, Dict, Iterable, List, Optional

# The plugin protocol version this SDK speaks (`abi_version` of `describe`).
ABI_VERSION = 1

KINDS = ("contact", "customer", "vendor", "bank_account")

COMMON_FIELDS = (
    "name", "name_2", "address", "address_2", "city", "post_code", "county",
    "country_code", "phone", "mobile_phone", "fax", "email", "home_page",
    "vat_registration_no", "registration_no", "currency_code", "language_code",
    "salesperson_code", "territory_code",
)
CONTACT_FIELDS = (
    "contact_type", "company_id", "first_name", "surname", "job_title",
    "business_relations",
)
BANK_FIELDS = ("iban", "swift_code", "bank_account_no", "bank_branch_no")

log = logging.getLogger("tandem_connector")


def fields_of(kind: str) -> frozenset:
    """The canonical field names of `kind` (connector extras start with ``x_``)."""
    names = set(COMMON_FIELDS)
    if kind == "contact":
        names.update(CONTACT_FIELDS)
    elif kind == "bank_account":
        names.update(BANK_FIELDS)
    return frozenset(names)


def check_field_names(kind: str, names: Iterable[str], id: Optional[str] = None) -> None:
    """Raises :class:`InvalidRecord` for a name neither canonical for `kind` nor ``x_``."""
    known = fields_of(kind)
    for name in names:
        if name not in known and not name.startswith("x_"):
            raise InvalidRecord(
                "`%s` is not a field of %ss (canonical names, or x_<name> for extras)"
                % (name, kind),
                id=id,
            )


# ----- errors -----


class ConnectorError(Exception):
    """An error Tandem understands; subclasses say which kind (docs/plugin-protocol.md)."""

    error = "fatal"

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message

    def to_json(self) -> Dict[str, Any]:
        return {"error": self.error, "message": self.message}


class RateLimited(ConnectorError):
    error = "rate_limited"

    def __init__(self, retry_after_ms: Optional[int] = None):
        super().__init__("rate limited")
        self.retry_after_ms = retry_after_ms

    def to_json(self) -> Dict[str, Any]:
        return {"error": self.error, "retry_after_ms": self.retry_after_ms}


class Transient(ConnectorError):
    """May succeed later; a write that failed so may have been carried out."""

    error = "transient"


class Conflict(ConnectorError):
    """The record changed since the version the update or delete carries."""

    error = "conflict"

    def __init__(self, id: str):
        super().__init__("record %s changed since it was read" % id)
        self.id = id

    def to_json(self) -> Dict[str, Any]:
        return {"error": self.error, "id": self.id}


class NotFound(ConnectorError):
    error = "not_found"

    def __init__(self, id: str):
        super().__init__("record %s not found" % id)
        self.id = id

    def to_json(self) -> Dict[str, Any]:
        return {"error": self.error, "id": self.id}


class InvalidRecord(ConnectorError):
    error = "invalid_record"

    def __init__(self, message: str, id: Optional[str] = None):
        super().__init__(message)
        self.id = id

    def to_json(self) -> Dict[str, Any]:
        return {"error": self.error, "id": self.id, "message": self.message}


class AuthError(ConnectorError):
    error = "auth"


class ConfigError(ConnectorError):
    """Bad settings. Start the message with the key in backquotes: "`path`: ..."."""

    error = "config"


class Fatal(ConnectorError):
    error = "fatal"


# ----- values -----


class Capabilities:
    """What the connector can do; Tandem plans by it, so it must be honest."""

    def __init__(
        self,
        kinds: List[str],
        incremental: bool = False,
        write: bool = True,
        delete: bool = True,
        max_batch: int = 100,
    ):
        self.kinds = list(kinds)
        self.incremental = incremental
        self.write = write
        self.delete = delete
        self.max_batch = max_batch

    def to_json(self) -> Dict[str, Any]:
        return {
            "kinds": self.kinds,
            "incremental": self.incremental,
            "write": self.write,
            "delete": self.delete,
            "max_batch": self.max_batch,
        }


def record(
    kind: str,
    id: str,
    fields: Dict[str, Any],
    version: Optional[str] = None,
    modified_at: Optional[str] = None,
) -> Dict[str, Any]:
    """A record as it travels. Field values: str, bool, int/float, None, a list of
    str, or ``{"date": "YYYY-MM-DD"}``; `modified_at` is RFC 3339."""
    out = {"id": id, "kind": kind, "fields": fields}
    if version is not None:
        out["version"] = version
    if modified_at is not None:
        out["modified_at"] = modified_at
    return out


def tombstone(kind: str, id: str) -> Dict[str, Any]:
    """A deleted record, in a page of changes."""
    return {"id": id, "kind": kind, "fields": {}, "deleted": True}


class Page:
    """One page of a read. `listing` is "full" (every live record over all pages of
    this read) or "changes" (only changes since the cursor, deletes as tombstones)."""

    def __init__(
        self,
        records: List[Dict[str, Any]],
        listing: str = "full",
        cursor: Optional[str] = None,
        has_more: bool = False,
    ):
        self.records = records
        self.listing = listing
        self.cursor = cursor
        self.has_more = has_more

    def to_json(self) -> Dict[str, Any]:
        return {
            "records": self.records,
            "listing": self.listing,
            "cursor": self.cursor,
            "has_more": self.has_more,
        }


class Written:
    """What a successful write left: the id (new for a create) and the version."""

    def __init__(self, id: str, version: Optional[str] = None, modified_at: Optional[str] = None):
        self.id = id
        self.version = version
        self.modified_at = modified_at

    def to_json(self) -> Dict[str, Any]:
        return {"id": self.id, "version": self.version, "modified_at": self.modified_at}


# ----- the base class -----


class Connector:
    """Subclass it. Tandem builds one instance per `init`, from the connector's
    `settings` table and the config file's folder `base_dir` (for relative paths)."""

    #: The package name and version Tandem shows.
    name = "python-connector"
    version = "0.0.0"
    #: The connector's type, shown by Tandem.
    type_name = "python"

    def __init__(self, settings: Dict[str, Any], base_dir: str):
        self.settings = settings
        self.base_dir = base_dir

    def capabilities(self) -> Capabilities:
        raise NotImplementedError("capabilities")

    def check(self) -> None:
        """Raise a ConnectorError when the system cannot be reached."""

    def read(self, kind: str, cursor: Optional[str]) -> Page:
        raise NotImplementedError("read")

    def write(self, kind: str, ops: List[Dict[str, Any]]) -> List[Any]:
        """One outcome per op, in op order: a :class:`Written` or a
        :class:`ConnectorError`. The default calls `create`, `update` and `delete` per
        op; raise from `write` itself when none of the ops was applied."""
        outcomes: List[Any] = []
        for op in ops:
            try:
                if op["op"] == "create":
                    outcomes.append(self.create(kind, op["fields"]))
                elif op["op"] == "update":
                    outcomes.append(self.update(kind, op["id"], op.get("version"), op["changes"]))
                elif op["op"] == "delete":
                    outcomes.append(self.delete(kind, op["id"], op.get("version")))
                else:
                    outcomes.append(Fatal("unknown op `%s`" % op["op"]))
            except ConnectorError as error:
                outcomes.append(error)
        return outcomes

    def create(self, kind: str, fields: Dict[str, Any]) -> Written:
        raise Fatal("this connector does not create records")

    def update(self, kind: str, id: str, version: Optional[str], changes: Dict[str, Any]) -> Written:
        """`changes`: a None value clears the field; fields not named stay."""
        raise Fatal("this connector does not update records")

    def delete(self, kind: str, id: str, version: Optional[str]) -> Written:
        raise Fatal("this connector does not delete records")

    def close(self) -> None:
        """Called when Tandem closes stdin, before the process exits."""


# ----- the loop -----


class _LevelPrefix(logging.Formatter):
    """`warn: message`: the prefixes Tandem reads as log levels."""

    LEVELS = {"CRITICAL": "error", "ERROR": "error", "WARNING": "warn", "INFO": "info", "DEBUG": "debug"}

    def format(self, rec: logging.LogRecord) -> str:
        text = super().format(rec).replace("\n", " | ")
        return "%s: %s" % (self.LEVELS.get(rec.levelname, "info"), text)


def _outcome(value: Any) -> Dict[str, Any]:
    if isinstance(value, ConnectorError):
        return {"err": value.to_json()}
    if isinstance(value, Written):
        return {"ok": value.to_json()}
    return {"ok": value}


def _describe(factory: Any) -> Dict[str, Any]:
    from . import __version__

    return {
        "name": getattr(factory, "name", "python-connector"),
        "version": getattr(factory, "version", "0.0.0"),
        "abi_version": ABI_VERSION,
        "type_name": getattr(factory, "type_name", "python"),
        "tandem_plugin_version": "python-sdk " + __version__,
    }


def _call(connector: Optional[Connector], message: Dict[str, Any]) -> Any:
    if connector is None:
        raise Fatal("`call` before `init`")
    call = message.get("call")
    if call == "info":
        return {
            "name": getattr(connector, "name", "python-connector"),
            "version": getattr(connector, "version", "0.0.0"),
            "capabilities": connector.capabilities().to_json(),
        }
    if call == "check":
        connector.check()
        return None
    if call == "read":
        return connector.read(message["kind"], message.get("cursor")).to_json()
    if call == "write":
        ops = message["ops"]
        outcomes = connector.write(message["kind"], ops)
        if len(outcomes) != len(ops):
            raise Fatal("write returned %d outcomes for %d ops" % (len(outcomes), len(ops)))
        return [_outcome(o) for o in outcomes]
    raise Fatal("unknown call `%s`" % call)


def serve(factory: Any, stdin: Any, stdout: Any) -> None:
    """The protocol loop on binary streams, until `stdin` closes."""
    connector: Optional[Connector] = None
    for raw in stdin:
        if not raw.strip():
            continue
        try:
            message = json.loads(raw)
            request_id = message.get("id")
        except (ValueError, AttributeError) as error:
            log.error("ignored a line that is not a request: %s", error)
            continue
        try:
            kind = message.get("type")
            if kind == "describe":
                reply = {"id": request_id, "ok": _describe(factory)}
            elif kind == "init":
                connector = factory(message.get("settings") or {}, message.get("base_dir") or ".")
                reply = {"id": request_id, "ok": None}
            elif kind == "call":
                reply = {"id": request_id, "ok": _call(connector, message)}
            else:
                raise Fatal("unknown message type `%s`" % kind)
        except ConnectorError as error:
            reply = {"id": request_id, "err": error.to_json()}
        except Exception as error:  # a bug in the connector: report it, keep serving
            log.error("%s", traceback.format_exc())
            reply = {
                "id": request_id,
                "err": {"error": "fatal", "message": "%s: %s" % (type(error).__name__, error)},
            }
        try:
            line = json.dumps(reply, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:  # NaN, or a value JSON cannot carry
            message = "the reply cannot be written as JSON: %s" % error
            line = json.dumps({"id": request_id, "err": {"error": "fatal", "message": message}})
        stdout.write(line.encode("utf-8") + b"\n")
        stdout.flush()
    if connector is not None:
        connector.close()


def run(factory: Any, level: int = logging.INFO) -> None:
    """Serves Tandem on this process's stdin and stdout. `factory` builds the
    connector from `(settings, base_dir)`: usually the Connector subclass itself."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelPrefix("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    protocol_out = sys.stdout.buffer
    # A stray print() must not corrupt the protocol: it goes to the log instead.
    sys.stdout = sys.stderr
    try:
        serve(factory, sys.stdin.buffer, protocol_out)
    except KeyboardInterrupt:
        pass
