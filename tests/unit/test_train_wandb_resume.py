"""W&B logging of a training run: a resumed run continues the W&B run it started (one run id per
run folder), with a stand-in ``wandb`` module (the real one needs an account or a local server)."""

from __future__ import annotations

import json
import sys
import types

import pytest

from s3core.train.log import WANDB_FILE, TrainLogger


class FakeRun:
    def __init__(self, run_id: str) -> None:
        self.id = run_id
        self.logged: list[tuple[dict, int]] = []
        self.finished = False

    def log(self, scalars: dict, step: int) -> None:
        self.logged.append((scalars, step))

    def finish(self) -> None:
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    calls: list[dict] = []
    mod = types.ModuleType("wandb")

    def init(**kwargs):
        calls.append(kwargs)
        run = FakeRun(kwargs["id"])
        calls[-1]["run"] = run
        return run

    mod.init = init  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return calls


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, fake_wandb):
    log = TrainLogger(tmp_path, wandb=True, wandb_project="proj", config={"train": {"steps": 3}})
    log.log(1, {"reward_mean": 0.5, "note": "x"})
    log.close()
    first = fake_wandb[0]
    assert first["project"] == "proj" and first["resume"] == "allow" and first["config"] == {"train": {"steps": 3}}
    assert first["id"] and first["run"].logged == [({"reward_mean": 0.5}, 1)] and first["run"].finished
    assert json.loads((tmp_path / WANDB_FILE).read_text()) == {"id": first["id"], "project": "proj"}

    resumed = TrainLogger(tmp_path, wandb=True, wandb_project="proj", start_step=1)
    resumed.log(2, {"reward_mean": 0.25})
    resumed.close()
    assert fake_wandb[1]["id"] == first["id"] and fake_wandb[1]["resume"] == "allow"
    assert fake_wandb[1]["run"].logged == [({"reward_mean": 0.25}, 2)]


def test_another_run_folder_gets_another_wandb_run(tmp_path, fake_wandb):
    TrainLogger(tmp_path / "a", wandb=True).close()
    TrainLogger(tmp_path / "b", wandb=True).close()
    assert fake_wandb[0]["id"] != fake_wandb[1]["id"]


def test_an_unreadable_id_file_opens_a_new_run_and_records_it(tmp_path, fake_wandb):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / WANDB_FILE).write_text("{torn")
    TrainLogger(tmp_path, wandb=True).close()
    assert json.loads((tmp_path / WANDB_FILE).read_text())["id"] == fake_wandb[0]["id"]


def test_no_wandb_file_without_wandb(tmp_path, fake_wandb):
    TrainLogger(tmp_path).close()
    assert not (tmp_path / WANDB_FILE).exists() and fake_wandb == []
