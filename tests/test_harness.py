"""The harness fails loudly, with PostgreSQL's own reason, when it cannot start — never skips."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg
import pytest

from scripts import pgcluster
from scripts.pgcluster import Cluster, ClusterError, free_port
from tests.pg import SessionCluster


def test_a_cluster_that_cannot_start_raises_with_the_server_log() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="aio-pg-bad-"))
    tmp.chmod(0o755)
    cluster = Cluster(data_dir=tmp / "cluster", port=free_port(),
                      settings={"max_connections": "not-a-number"})
    try:
        cluster.init()
        with pytest.raises(ClusterError) as failure:
            cluster.start()
        assert "did not start" in str(failure.value)
        assert "max_connections" in str(failure.value)  # the server's own complaint
    finally:
        cluster.destroy()


def test_missing_postgresql_binaries_say_how_to_install_them(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pgcluster, "PG_BIN", tmp_path / "no-such-postgres")
    with pytest.raises(ClusterError, match="apt-get install -y postgresql-15 postgresql-15-cron"):
        Cluster(data_dir=tmp_path / "c", port=free_port()).init()


def test_the_template_database_was_built_with_plain_psql(pg_session: SessionCluster) -> None:
    """SPEC §2: local + migrations through `psql -v ON_ERROR_STOP=1` give the whole schema."""
    with psycopg.connect(pg_session.cluster.url("aio_template")) as conn:
        tables = {r[0] for r in conn.execute(
            "select tablename from pg_tables where schemaname = 'public'")}
    assert tables >= {
        "system_controls", "market_allowlist", "trading_settings", "trading_allowlist",
        "scan_jobs", "trade_proposals", "trade_executions", "trade_history",
        "gpt_model_prices", "gpt_usage_log", "execution_audit_log"}
