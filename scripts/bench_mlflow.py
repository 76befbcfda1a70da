"""Points/s logged into one MLflow tracking server, for scripts/bench-mlflow, which runs it
against `albef serve` and `mlflow server` in turn. Both ways send the same requests: batches of
MLflow's maximum of 1,000 metrics over 10 keys, one request at a time.

    bench_mlflow.py client TRACKING_URI POINTS   through MlflowClient.log_batch, as a training
                                                 script logs: the client's own work (protobuf
                                                 messages, JSON) is part of the time
    bench_mlflow.py server TRACKING_URI POINTS   the request bodies that client sends
                                                 (MLflow's message_to_json of LogBatch) made
                                                 before the clock starts, then posted with the
                                                 HTTP library the client uses: the server's share

The last line printed is the points per second (MLflow prints run links before it).
"""
import os
import sys
import time

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.protos.service_pb2 import LogBatch
from mlflow.utils.proto_json_utils import message_to_json

BATCH = 1000
KEYS = 10


def batches(points, now):
    return [
        [Metric(f"m{i % KEYS}", i * 0.001, now, i // KEYS) for i in range(start, min(start + BATCH, points))]
        for start in range(0, points, BATCH)
    ]


def through_client(client, run, metric_batches):
    started = time.perf_counter()
    for batch in metric_batches:
        client.log_batch(run, metrics=batch)
    return time.perf_counter() - started


def posted(uri, run, metric_batches):
    bodies = [message_to_json(LogBatch(run_id=run, metrics=[m.to_proto() for m in b])) for b in metric_batches]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    session = requests.Session()
    started = time.perf_counter()
    for body in bodies:
        session.post(f"{uri}/api/2.0/mlflow/runs/log-batch", data=body, headers=headers).raise_for_status()
    return time.perf_counter() - started


def main(mode, uri, points):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(f"bench-{mode}-{time.time_ns()}")
    run = client.create_run(experiment).info.run_id
    metric_batches = batches(points, int(time.time() * 1000))
    if mode == "client":
        elapsed = through_client(client, run, metric_batches)
    else:
        elapsed = posted(uri, run, metric_batches)
    client.set_terminated(run)
    print(f"{points / elapsed:.0f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
