"""`oracle audit --proposal ID`: one proposal's whole story — the proposal, its execution, and every
audit row that names either, in the order they were written (G9)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from console.database import OpsError


def trail(conn: psycopg.Connection[Any], proposal_id: uuid.UUID) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        proposal = cur.execute(
            "select p.*, u.email from public.trade_proposals p "
            "left join auth.users u on u.id = p.user_id where p.id = %s",
            (proposal_id,)).fetchone()
        execution = cur.execute("select e.* from public.trade_executions e "
                                "where e.proposal_id = %s", (proposal_id,)).fetchone()
        # By proposal id, and by the execution's id for rows that carry only that (a result
        # recorded by execution id). The identity id is the order of writing.
        events = cur.execute(
            "select l.id, l.created_at, l.event, l.user_id, l.execution_id, l.detail "
            "from public.execution_audit_log l "
            "where l.proposal_id = %s or l.execution_id = %s order by l.id",
            (proposal_id, execution["id"] if execution else None)).fetchall()
        history = None
        if execution is not None:
            history = cur.execute("select h.* from public.trade_history h "
                                  "where h.execution_id = %s", (execution["id"],)).fetchone()
    if proposal is None and not events:
        raise OpsError(f"no proposal {proposal_id} and no audit rows that name it")
    return {"proposal_id": proposal_id, "proposal": proposal, "execution": execution,
            "trade": history, "events": events}
