"""`oracle halt` / `oracle resume`: the system kill switch (system_controls.trading_halted).

One service-only RPC, `set_trading_halted(p_halted, p_reason)` (migration *_operator.sql), called as
service_role like every backend call: it writes the operator's reason to the audit log and flips the
switch in one transaction; the table's audit trigger records the change itself. Idempotent —
halting a halted system changes nothing (`changed: false`) but is still audited.

A halt refuses every new claim (claim_trade_execution's `trading_enabled` validator); executions
already claimed finish and are reconciled as usual.
"""

from __future__ import annotations

from typing import Any

from console.database import OpsError, UsageError
from shared.rpc.errors import RpcUndefinedFunction
from shared.rpc.port import RpcPort

MAX_REASON = 500


def check_reason(reason: str) -> str:
    text = reason.strip()
    if not text:
        raise UsageError("--reason must say why (it is written to the audit log)")
    if len(text) > MAX_REASON:
        raise UsageError(f"--reason is {len(text)} characters; at most {MAX_REASON}")
    return text


def set_halted(rpc: RpcPort, halted: bool, reason: str) -> dict[str, Any]:
    try:
        result: dict[str, Any] = rpc.call("set_trading_halted",
                                          {"p_halted": halted, "p_reason": check_reason(reason)})
    except RpcUndefinedFunction:
        raise OpsError("this database has no set_trading_halted(): apply the migrations "
                       "(supabase/migrations/*_operator.sql) with `supabase db push`") from None
    return result
