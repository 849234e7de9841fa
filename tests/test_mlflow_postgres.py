"""The MLflow tracking server of manifests/base on a real PostgreSQL: the manifest's backend URI,
its `mlflow db upgrade` init container and its server command (tests/pg_mlflow.py), a run logged and
read back over HTTP, artifacts proxied to S3, the allowed Host headers; nothing left running."""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import psycopg2
import pytest

from .pg_mlflow import manifest_mlflow, port_is_closed, postgres_server

pytestmark = pytest.mark.integration


def _get(url: str, host: str) -> int:
    req = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_manifests_mlflow_runs_on_postgres_and_serves_runs_over_http(tmp_path, s3_endpoint, s3):
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket="mlflow")
    with postgres_server() as pg:
        with manifest_mlflow(pg, tmp_path / "mlflow", s3_endpoint) as server:
            assert server.backend_uri.startswith(f"postgresql+psycopg2://mlflow:{pg.password}@127.0.0.1:{pg.port}/mlflow")
            # the migrations ran: MLflow's schema, at a recorded alembic revision, in PostgreSQL
            with psycopg2.connect(host="127.0.0.1", port=pg.port, user="mlflow", password=pg.password,
                                  dbname="mlflow") as conn, conn.cursor() as cur:
                cur.execute("SELECT version_num FROM alembic_version")
                assert len(cur.fetchone()[0]) >= 8
                cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
                tables = {r[0] for r in cur.fetchall()}
            assert {"experiments", "runs", "metrics", "params", "registered_models", "model_versions"} <= tables

            # a run logged and read back over HTTP by a separate client
            writer = mlflow.MlflowClient(tracking_uri=server.url)
            exp = writer.create_experiment("pg-check")
            run = writer.create_run(exp, tags={"reset.step": "mix"})
            rid = run.info.run_id
            writer.log_param(rid, "select.mode", "reset")
            writer.log_metric(rid, "faithfulness", 0.625, step=3)
            writer.log_text(rid, "held-out comparison", "report/comparison.md")
            writer.set_terminated(rid, "FINISHED")

            reader = mlflow.MlflowClient(tracking_uri=server.url)
            back = reader.get_run(rid)
            assert back.info.status == "FINISHED" and back.data.params["select.mode"] == "reset"
            assert back.data.metrics["faithfulness"] == pytest.approx(0.625)
            assert [m.step for m in reader.get_metric_history(rid, "faithfulness")] == [3]
            local = reader.download_artifacts(rid, "report/comparison.md", str(tmp_path))
            assert Path(local).read_text() == "held-out comparison"
            # ... stored in PostgreSQL (not a local file store) and in S3 (proxied, the steps need no keys)
            with psycopg2.connect(host="127.0.0.1", port=pg.port, user="mlflow", password=pg.password,
                                  dbname="mlflow") as conn, conn.cursor() as cur:
                cur.execute("SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'faithfulness'", (rid,))
                assert cur.fetchone()[0] == pytest.approx(0.625)
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow", Prefix="artifacts/").get("Contents", [])]
            assert any(k.endswith(f"{rid}/artifacts/report/comparison.md") for k in keys), keys

            # DNS-rebinding protection: the in-cluster names the steps use pass, any other Host does not
            api = f"{server.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=pg-check"
            for host in server.allowed_hosts:
                assert _get(api, host) == 200, host
            assert _get(api, "evil.example:5000") == 403
            server_port = int(server.url.rsplit(":", 1)[1])
        # nothing left running: PostgreSQL is stopped by its PID after the server
        pg_pid, pg_port = pg.pid, pg.port
    with pytest.raises(ProcessLookupError):
        os.kill(pg_pid, 0)
    assert port_is_closed(pg_port) and port_is_closed(server_port)
