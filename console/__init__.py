"""The operator's console (`oracle`, SPEC §7): inspect, check and steer a running system.

    ops/cli.py        the entry point: argument parsing, one function per command, exit statuses
    ops/database.py   which database (--db-url > DATABASE_URL > local), reads, the RPC port
    ops/status.py     `status`: one read-only snapshot of the system
    ops/audit.py      `audit`: a proposal's audit trail
    ops/budget.py     `budget`: check_gpt_budget + get_budget_analytics
    ops/controls.py   `halt` / `resume`: set_trading_halted, audited with the reason
    ops/tokens.py     `token`: local development JWTs, never with the public secret off this machine
    ops/verify.py     `verify`: the post-deployment invariant gate
    ops/views.py      rich tables and JSON
    ops/users.py      a user named by uuid or email
    ops/local.py      the local stack's defaults (URL, ports, development secret and service key)

The local stack (`make run`, `make demo`, `make db`), run with `python -m ops.stack`:

    ops/stack.py      the supervisor: start in order, run, stop everything it started
    ops/localdb.py    the project-local PostgreSQL: started or reused, migrated by the Supabase CLI
    ops/services.py   the sandbox and the functions as child processes (own sessions, logs)
    ops/ports.py      is a port free, and who holds it
    ops/cron.py       the local stand-in for Supabase Cron (scanner ticks, /reconcile)
    ops/live.py       the live view (status.py's snapshot, views.py's cells)
    ops/demo.py       make demo's scenario and summary

`ops` imports `shared` (the RPC port, dev_token); nothing in `shared` or `functions` imports `ops`.
"""
