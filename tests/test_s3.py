"""The store on an S3-compatible server (moto) on loopback: every artifact lands in the bucket, the
corpus is read from S3, the sweep reads the export back from S3, and no credential is written."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import boto3
import pytest

from plm_ray import pipeline
from plm_ray.cli import main
from plm_ray.data import embedded

from .conftest import small_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]
BUCKET = "plm-test"


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="corpus/part-0.txt", Body=embedded.corpus_text(seed=5).encode())
    yield endpoint
    server.stop()


def _objects(endpoint: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    ]
    return {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def test_pretrain_and_sweep_with_the_store_on_s3(s3: str, capfd: pytest.CaptureFixture[str]):
    store_sets = [f"store.root=s3://{BUCKET}/runs", f"store.endpoint={s3}", "store.region=us-east-1"]
    cfg = small_config(None, "s3run", *store_sets, f"data.corpus=s3://{BUCKET}/corpus/")
    sweep = pipeline.execute("run", cfg)["sweep"]
    objects = _objects(s3)
    keys = set(objects)
    prefix = "runs/s3run/"
    for needed in (
        "summary.json",
        "pretrain/result.json",
        "pretrain/export/model.safetensors",
        "pretrain/export/tokenizer.json",
        "sweep/results.csv",
        "sweep/best_model/model.safetensors",
        "sweep/best_model/config.json",
        "tokenizer/tokenizer.json",
    ):
        assert prefix + needed in keys, needed
    assert any(k.startswith(prefix + "pretrain/checkpoint_") and "zero_pp_rank_1" in k for k in keys)
    assert any(k.startswith(prefix + "pretrain/tensorboard/events") for k in keys)
    assert sweep["best"]["checkpoint"] == f"s3://{BUCKET}/runs/s3run/sweep/best_model"
    assert all(t["checkpoint"].startswith(f"s3://{BUCKET}/runs/s3run/sweep/") for t in sweep["trials"])
    assert sweep["model"] == f"s3://{BUCKET}/runs/s3run/pretrain/export"  # read back from S3
    secret = b"plm-test-secret-key"
    assert not [k for k, body in objects.items() if secret in body], "a credential was written to the store"
    logs = capfd.readouterr()  # the driver's output and every worker's, as Ray forwards them
    assert secret.decode() not in logs.out + logs.err, "a credential was logged"

    assert main(["store", "ls", f"s3://{BUCKET}/runs", "--endpoint", s3, "--region", "us-east-1"]) == 0
    assert capfd.readouterr().out.startswith("s3run\tcomplete\tpretrain,sweep\ts3://plm-test/runs/s3run")


def test_refused_s3_credentials_are_one_clear_error(s3: str, tmp_path, capsys: pytest.CaptureFixture[str]):
    from moto import settings

    endpoint = ["--set", f"store.endpoint={s3}", "--set", "store.region=us-east-1"]
    saved = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on the server checks every request's credentials
    try:
        corpus = ["--set", f"data.corpus=s3://{BUCKET}/corpus/", "--set", f"store.root={tmp_path}"]
        assert main(["pretrain", *corpus, *endpoint]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"plm-ray: error: cannot read corpus s3://{BUCKET}/corpus/: "), err
        assert main(["pretrain", "--set", f"store.root=s3://{BUCKET}/runs", *endpoint]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"plm-ray: error: cannot access the store s3://{BUCKET}/runs: "), err
        assert "AWS_ACCESS_KEY_ID" in err[0] and "plm-test-secret-key" not in err[0]
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = saved
