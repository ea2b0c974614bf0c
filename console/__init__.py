"""The operator's console, `oracle` (SPEC §7): inspect, check and steer a running system.

`oracle COMMAND` is `python -m console COMMAND`; `console.cli` parses it and calls one module per
command (status, audit, budget, controls, tokens, verify). `console.database` picks the database
(--db-url, DATABASE_URL, else the local stack) and `console.views` prints tables or JSON.

Installed by pyproject.toml together with `shared`, the only other package it imports (the RPC
port, dev_token); it never imports the local stack (`stack`), which reads through it instead.
"""
