"""Run-level GPU limit of deploy/dagster.yaml, unmodified, enforced by the real daemon over PostgreSQL.

With every `gpu` slot taken, a queued training run (whose first steps are all in the pool) is not
started, while a data run is; once a slot frees, the training run starts. This holds for any run,
whatever launched it, because it comes from the ops' pool and not from run tags.
"""

import time

import dagster as dg
import pytest

from earthsnap_assets_tests.deploy.production_dagster import launch, production_dagster
from earthsnap_assets_tests.polling import wait_until

pytestmark = pytest.mark.stack
HOLDER = "slot-holder-run"  # stands for a training step of another run that holds the only GPU


def status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run.status


def test_a_training_run_waits_in_the_queue_for_a_gpu_slot_and_a_data_run_does_not(postgres, stack, tmp_path):
    with (
        production_dagster(postgres, stack, tmp_path, "earthsnap_assets.definitions") as dagster,
        dagster.instance() as instance,
    ):
        storage = instance.event_log_storage
        storage.set_concurrency_slots("gpu", 1)
        claim = storage.claim_concurrency_slot("gpu", HOLDER, "parent_model")
        assert claim.is_claimed

        training = launch(dagster.url, "parent_training")
        data = launch(dagster.url, "taxonomy_update")
        wait_until(lambda: status(instance, data) != dg.DagsterRunStatus.QUEUED, 120, interval=2)
        time.sleep(12)  # two more dequeue passes of the daemon (every 5 s)
        assert status(instance, training) == dg.DagsterRunStatus.QUEUED

        storage.free_concurrency_slots_for_run(HOLDER)
        wait_until(lambda: status(instance, training) != dg.DagsterRunStatus.QUEUED, 120, interval=2)
