"""The local stack: the whole system on this machine (`make run`, `make demo`, `make db`).

`python -m stack run | demo | db | db-down | db-reset`. `stack.supervisor` starts the processes in
order and stops them; `stack.cluster` is a PostgreSQL 15 cluster without Docker (the tests and
benchmarks start theirs with it), `stack.localdb` the kept project-local one, migrated by the
Supabase CLI; `stack.cron` stands in for Supabase Cron, `stack.live` shows it all, `stack.demo` is
`make demo`'s scenario.

Never deployed nor installed; it reads the system through the console's snapshot and views.
"""
