"""Logs a run into `albef serve` through MLflow's public Python API only, as a training script
would, for tests/mlflow_client.rs. The tracking URI and token come from MLFLOW_TRACKING_URI and
MLFLOW_TRACKING_TOKEN.

    log_with_mlflow.py log OUT.json MODEL VERSION   log, search, read back, set and read an alias;
                                                    write what was logged to OUT.json, doubles as
                                                    their IEEE-754 bits in hex
    log_with_mlflow.py refused                      expect the first write to be refused as
                                                    UNAUTHENTICATED (no token)
"""
import json
import struct
import sys

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

EXPERIMENT = "mlflow-client"
# Doubles that a REAL column or a JSON number would not keep as they are.
EXACT = [0.1 + 0.2, -0.0, float("nan"), float("inf"), float("-inf"), 1e-320, 1.7976931348623157e308, 2.5]
EXACT_T0 = 1_700_000_000_000


def bits(x):
    return struct.pack(">d", x).hex()


def log_run():
    """One run: params, tags, a metric per step through the fluent API, and the exact values
    with timestamps of their own through MlflowClient.log_batch. Returns its run id."""
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="baseline") as run:
        run_id = run.info.run_id
        mlflow.log_param("lr", "1e-3")
        mlflow.log_params({"batch_size": 32, "optimizer": "adamw"})
        mlflow.set_tag("t", "v")
        for step in range(50):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
            mlflow.log_metrics({"acc": step / 49, "lr": 1e-3 * 0.9**step}, step=step)
        exact = [Metric("exact", v, EXACT_T0 + i, i) for i, v in enumerate(EXACT)]
        MlflowClient().log_batch(run_id, metrics=exact)
    return run_id


def check_search(run_id):
    """search_runs with a filter string finds the run; one it does not match finds nothing."""
    found = mlflow.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string="metrics.acc > 0.5 and params.lr = '1e-3' and tags.t = 'v' "
        "and attributes.status = 'FINISHED'",
        order_by=["metrics.loss ASC"],
        output_format="list",
    )
    assert [r.info.run_id for r in found] == [run_id], found
    assert found[0].data.params["optimizer"] == "adamw"
    assert found[0].data.metrics["acc"] == 1.0
    missed = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string="params.lr = '1e-4'", output_format="list"
    )
    assert missed == [], missed


def read_back(client, run_id):
    """Every metric's history as MLflow's client reads it: key -> [[step, timestamp, bits]]."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED", run.info
    assert run.info.run_name == "baseline", run.info
    histories = {}
    for key in sorted(run.data.metrics):
        points = client.get_metric_history(run_id, key)
        histories[key] = [[m.step, m.timestamp, bits(m.value)] for m in points]
    sent = [[i, EXACT_T0 + i, bits(v)] for i, v in enumerate(EXACT)]
    assert histories["exact"] == sent, histories["exact"]
    return run, histories


def log(out, model, version):
    run_id = log_run()
    check_search(run_id)
    client = MlflowClient()
    run, histories = read_back(client, run_id)
    client.create_registered_model(model)
    client.set_registered_model_alias(model, "champion", version)
    mv = client.get_model_version_by_alias(model, "champion")
    assert (mv.name, mv.version) == (model, version), mv
    assert "champion" in mv.aliases, mv
    with open(out, "w") as f:
        json.dump(
            {
                "run_id": run_id,
                "params": run.data.params,
                "tags": {k: v for k, v in run.data.tags.items()},
                "metrics": histories,
                "model_version_run_id": mv.run_id,
            },
            f,
        )


def refused():
    try:
        mlflow.set_experiment(EXPERIMENT)
        with mlflow.start_run():
            mlflow.log_metric("loss", 1.0)
    except MlflowException as e:
        assert e.error_code == "UNAUTHENTICATED", (e.error_code, str(e))
        print("refused:", e)
        return
    raise AssertionError("a write without the token was accepted")


if __name__ == "__main__":
    if sys.argv[1] == "log":
        log(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        refused()
