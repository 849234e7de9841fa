"""Two runs racing on one tracking store's unique keys, on SQLite and on a real PostgreSQL: MLflow's
SQL store reads whether a row exists and then inserts it, so another run can insert the same row in
between. Here that other run is made to win every time: just before the store flushes its insert,
the same row is inserted (and committed) on a connection of its own, and the database itself
refuses the store's insert (SQLite: "UNIQUE constraint failed"; PostgreSQL: "duplicate key value
violates unique constraint"). The library's retries (`registry.set_alias`, `tracking.log_input`)
find the row on their next try; without them the call fails with the database's error."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from reset import registry, tracking

pytestmark = pytest.mark.integration

DUPLICATE = {"sqlite": "UNIQUE constraint failed", "postgresql": "duplicate key value violates unique constraint"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(database kind, tracking URI) of an MLflow store, one per database for the module's tests."""
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path_factory.mktemp('races') / 'mlflow.db'}"
    else:
        import psycopg2

        pg = request.getfixturevalue("postgres")
        db = f"races_{uuid.uuid4().hex[:8]}"
        conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user="postgres", password=pg.password,
                                dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {db} OWNER mlflow")
        finally:
            conn.close()
        uri = f"postgresql+psycopg2://mlflow:{pg.password}@127.0.0.1:{pg.port}/{db}"
    mlflow.set_tracking_uri(uri)
    try:
        yield request.param, uri
    finally:
        mlflow.set_tracking_uri(None)


@contextlib.contextmanager
def another_run_inserts_first(table: type, differs: Callable[[Any], dict[str, Any]] = lambda _: {}):
    """While active, the first flush of MLflow's store that inserts a `table` row is preceded by
    the same row (its unique key; `differs` gives the other run's own values) inserted and committed
    on another connection. Yields the rows so inserted."""
    import sqlalchemy
    from sqlalchemy import event, inspect
    from sqlalchemy.orm import Session

    inserted: list[dict[str, Any]] = []

    def before_flush(session, _context, _instances) -> None:
        if inserted:
            return
        for obj in list(session.new):
            if isinstance(obj, table):
                values = {a.columns[0].name: getattr(obj, a.key) for a in inspect(table).column_attrs}
                values = {k: v for k, v in values.items() if v is not None} | differs(obj)
                engine = sqlalchemy.create_engine(session.get_bind().url.render_as_string(hide_password=False))
                try:
                    with engine.connect() as other:
                        other.execute(sqlalchemy.insert(table.__table__).values(**values))
                        other.commit()
                finally:
                    engine.dispose()
                inserted.append(values)
                return

    event.listen(Session, "before_flush", before_flush)
    try:
        yield inserted
    finally:
        event.remove(Session, "before_flush", before_flush)


def _model_with_versions(client, name: str, n: int, tmp_path) -> None:
    client.create_registered_model(name)
    for _ in range(n):
        client.create_model_version(name, source=(tmp_path / "src").as_uri())


def test_an_alias_another_run_set_meanwhile_is_updated_not_an_error(store, tmp_path):
    from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModelAlias

    kind, _ = store
    client = mlflow.MlflowClient()
    _model_with_versions(client, "race", 2, tmp_path)
    # the other run points the alias at version 1 first; ours, at version 2, must end up set
    with another_run_inserts_first(SqlRegisteredModelAlias, lambda _: {"version": 1}) as other:
        registry.set_alias(client, "race", "challenger", "2")
    assert [row["version"] for row in other] == [1]  # the race happened
    assert str(client.get_model_version_by_alias("race", "challenger").version) == "2"

    # the positive control: the same race without the retry is the database's duplicate-row error
    client.delete_registered_model_alias("race", "challenger")
    with another_run_inserts_first(SqlRegisteredModelAlias, lambda _: {"version": 1}), \
            pytest.raises(MlflowException, match=DUPLICATE[kind]):
        registry.set_alias(client, "race", "challenger", "2", attempts=1)


def test_a_dataset_another_run_logged_meanwhile_is_linked_not_an_error(store, tmp_path):
    from mlflow.store.tracking.dbmodels.models import SqlDataset

    kind, _ = store
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    exp = mlflow.create_experiment("race", artifact_location=(tmp_path / "art").as_uri())
    other_uuid = uuid.uuid4().hex
    with mlflow.start_run(experiment_id=exp) as run:
        with another_run_inserts_first(SqlDataset, lambda _: {"dataset_uuid": other_uuid}) as other:
            tracking.log_input(tracking.dataset(str(data), "train", "abc"), context="train")
        assert [row["dataset_uuid"] for row in other] == [other_uuid]  # the race happened
        # the positive control: the race without the retry is the database's duplicate-row error
        with another_run_inserts_first(SqlDataset, lambda _: {"dataset_uuid": uuid.uuid4().hex}), \
                pytest.raises(MlflowException, match=DUPLICATE[kind]):
            mlflow.log_input(tracking.dataset(str(data), "eval", "def"), context="eval")
    (linked,) = mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    assert linked.dataset.name == "train" and linked.dataset.digest == "abc"
    # one row for the dataset: the other run's (ours linked to it, none inserted beside it)
    store_ = mlflow.tracking._tracking_service.utils._get_store()
    with store_.ManagedSessionMaker() as session:
        rows = session.query(SqlDataset).filter(SqlDataset.name == "train").all()
        assert [r.dataset_uuid for r in rows] == [other_uuid]


def test_an_experiment_tag_another_step_set_meanwhile_is_not_an_error(store, tmp_path):
    """An experiment made without our tags (by hand, or by an older version): the first steps that
    find it tag it, and two of them at once (two promotions, say) insert the same tag."""
    from mlflow.store.tracking.dbmodels.models import SqlExperimentTag

    from reset.config import TrackingConfig

    kind, uri = store
    client = mlflow.MlflowClient()
    exp = client.create_experiment("untagged", artifact_location=(tmp_path / "art").as_uri())
    # (a PostgreSQL URI holds its password: refused as a parameter, so built here without validation)
    cfg = TrackingConfig.model_construct(**{**TrackingConfig().model_dump(), "tracking_uri": uri,
                                            "experiment": "untagged"})
    with another_run_inserts_first(SqlExperimentTag) as other:
        assert tracking.experiment_id(cfg) == exp
    assert other  # the race happened
    assert set(tracking.EXPERIMENT_TAGS.items()) <= set(client.get_experiment(exp).tags.items())

    # the positive control: the same race on a tag set directly is the database's duplicate-row error
    other_exp = client.create_experiment("untagged-2", artifact_location=(tmp_path / "art2").as_uri())
    with another_run_inserts_first(SqlExperimentTag), pytest.raises(MlflowException, match=DUPLICATE[kind]):
        client.set_experiment_tag(other_exp, "mlflow.experimentKind", "custom_model_development")
