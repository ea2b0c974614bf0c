"""The harness fails loudly, with PostgreSQL's own reason, when it cannot start — never skips."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from stack.cluster import Cluster, ClusterError, free_port
from tests.pg import SessionCluster


@contextmanager
def scratch_cluster(**settings: str) -> Iterator[Cluster]:
    """A cluster in a temporary folder the `postgres` OS user can reach (pytest's tmp_path is
    0700 under root); the cluster and the folder itself are gone afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="aio-pg-bad-"))
    tmp.chmod(0o755)
    cluster = Cluster(data_dir=tmp / "cluster", port=free_port(), settings=settings)
    try:
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_cluster_that_cannot_start_raises_with_the_server_log() -> None:
    with scratch_cluster(max_connections="not-a-number") as cluster:
        cluster.init()
        with pytest.raises(ClusterError) as failure:
            cluster.start()
        assert "did not start" in str(failure.value)
        assert "max_connections" in str(failure.value)  # the server's own complaint
    # Nothing is left behind: not the data directory, not the temporary folder around it.
    assert not cluster.data_dir.exists()
    assert not cluster.data_dir.parent.exists()


def test_missing_postgresql_binaries_say_how_to_install_them(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("stack.cluster.PG_BIN", tmp_path / "no-such-postgres")
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
