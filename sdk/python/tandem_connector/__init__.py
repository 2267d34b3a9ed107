"""Tandem connectors in Python: the plugin protocol over stdin and stdout.

A connector is a subclass of :class:`Connector`; :func:`run` speaks the protocol
(docs/plugin-protocol.md) with Tandem, which starts the script as a child process
(``type = "process"`` in tandem.toml)::

    from tandem_connector import Capabilities, Connector, Page, run

    class MyConnector(Connector):
        name = "my-connector"
        version = "0.1.0"

        def __init__(self, settings, base_dir):
            ...

        def capabilities(self):
            return Capabilities(kinds=["customer"])

        def read(self, kind, cursor):
            return Page(records=[...])

        def create(self, kind, fields): ...
        def update(self, kind, id, version, changes): ...
        def delete(self, kind, id, version): ...

    if __name__ == "__main__":
        run(MyConnector)

Standard library only; Python 3.9 or newer.
"""

from .protocol import (
    ABI_VERSION,
    COMMON_FIELDS,
    CONTACT_FIELDS,
    BANK_FIELDS,
    KINDS,
    AuthError,
    Capabilities,
    ConfigError,
    Conflict,
    Connector,
    ConnectorError,
    Fatal,
    InvalidRecord,
    NotFound,
    Page,
    RateLimited,
    Transient,
    Written,
    check_field_names,
    fields_of,
    log,
    record,
    run,
    serve,
    tombstone,
)

__version__ = "0.1.0"

__all__ = [
    "ABI_VERSION",
    "COMMON_FIELDS",
    "CONTACT_FIELDS",
    "BANK_FIELDS",
    "KINDS",
    "AuthError",
    "Capabilities",
    "ConfigError",
    "Conflict",
    "Connector",
    "ConnectorError",
    "Fatal",
    "InvalidRecord",
    "NotFound",
    "Page",
    "RateLimited",
    "Transient",
    "Written",
    "check_field_names",
    "fields_of",
    "log",
    "record",
    "run",
    "serve",
    "tombstone",
]
