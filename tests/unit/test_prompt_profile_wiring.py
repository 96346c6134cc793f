"""Prompt profiles wired in (issue 15 §4): run_episodes renders in the profile it is given and
records name@version in every trajectory (through the proto and JSON too); searcher.prompt_profile
selects it in the searcher core, which warns about or refuses a policy folder trained under another
profile; the config's choices are exactly the known profiles."""

from __future__ import annotations

import logging
import typing
from pathlib import Path
from typing import Any

import pytest

from s3core.config import SearchConfig, SearcherConfig, load_config
from s3core.errors import ConfigError, DataError, InvalidArgument
from s3core.rl.tiny import train_tiny_tokenizer
from s3core.rpc.convert import trajectory_from_json, trajectory_from_pb, trajectory_to_json, trajectory_to_pb
from s3core.search import prompts
from s3core.search.episode import run_episodes
from s3core.search.profiles import (
    DEFAULT_PROFILE,
    PROFILE_FILE,
    PROFILES,
    get_profile,
    read_profile_record,
    write_profile_record,
)
from s3core.types import Doc, Question

DOCS = [Doc(f"d{i}", f"Title {i}", f"text number {i} about planets") for i in range(1, 9)]
Q = Question("q1", "Which planet is closest to the Sun?", ("Mercury",))


@pytest.fixture(scope="module")
def tok() -> Any:
    return train_tiny_tokenizer()


class Scripted:
    """Turn t emits texts[t] as token ids; keeps every prompt it was given (as text)."""

    def __init__(self, tokenizer: Any, texts: list[str]) -> None:
        self.tokenizer = tokenizer
        self.texts = texts
        self.seen: list[str] = []
        self.turn = 0

    def generate(self, batch: list[list[int]], max_new_tokens: int, temperature: float, stop: list[str]) -> list[list[int]]:
        self.seen.append(self.tokenizer.decode(batch[0], skip_special_tokens=False))
        text = self.texts[min(self.turn, len(self.texts) - 1)]
        self.turn += 1
        return [list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) for _ in batch]


def search(queries: list[str], k: int) -> list[list[Doc]]:
    return [DOCS[:k] for _ in queries]


TURNS = ["nothing useful here",  # invalid: feedback (ours) / a <query> nudge (reference)
         '<search_complete>false</search_complete><query>{"query": "closest planet"}</query>',
         "<important_info>[1, 2, 3, 4, 5]</important_info><search_complete>yes</search_complete>"]


def test_default_profile_is_recorded_and_unchanged(tok: Any) -> None:
    cfg = SearchConfig(initial_k=3, retrieve_k=8, select_max=4, max_turns=3)
    a = run_episodes([Q], Scripted(tok, TURNS), search, cfg)[0]
    b = run_episodes([Q], Scripted(tok, TURNS), search, cfg, profile=get_profile(DEFAULT_PROFILE))[0]
    assert a.prompt_profile == b.prompt_profile == f"{DEFAULT_PROFILE}@{prompts.SEARCHER_PROMPT_VERSION}"
    assert a.token_ids == b.token_ids  # the default is exactly what was rendered before profiles
    assert "<feedback>" in a.turns[0].observation
    assert a.blocks[1].selected == [1, 2, 3, 4]  # search.select_max = 4 (ours has no cap of its own)


def test_reference_layout_is_rendered_and_recorded(tok: Any) -> None:
    cfg = SearchConfig(initial_k=3, retrieve_k=8, select_max=4, max_turns=3)
    prof = get_profile("reference-layout")
    pol = Scripted(tok, TURNS)
    t = run_episodes([Q], pol, search, cfg, profile=prof)[0]
    assert t.prompt_profile == prof.tag == "reference-layout@ref-layout-v1"
    first = pol.seen[0]
    assert "<question>" in first and 'Doc 1(Title: "Title 1") text number 1' in first
    assert "block=" not in first and "[1] Title 1" not in first
    assert t.turns[0].observation == prof.feedback_observation(final_next=False)  # the <query> nudge
    assert t.turns[1].observation.startswith("\n\n<information>Doc 1(Title:")
    assert t.blocks[1].selected == [1, 2, 3]  # the profile's cap of 3 is below search.select_max = 4
    assert t.done  # "yes" ends the search
    # recorded through the proto and its JSON
    assert trajectory_from_pb(trajectory_to_pb(t)).prompt_profile == prof.tag
    j = trajectory_to_json(t)
    assert j["prompt_profile"] == prof.tag and trajectory_from_json(j).prompt_profile == prof.tag


def test_config_choices_are_the_known_profiles() -> None:
    hints = typing.get_type_hints(SearcherConfig)
    assert set(typing.get_args(hints["prompt_profile"])) == set(PROFILES)
    assert SearcherConfig().prompt_profile == DEFAULT_PROFILE
    assert load_config(None, overrides={"searcher": {"prompt_profile": "reference-layout"}}).searcher.prompt_profile \
        == "reference-layout"
    with pytest.raises(ConfigError, match="searcher.prompt_profile must be one of"):
        load_config(None, overrides={"searcher": {"prompt_profile": "theirs"}})


def test_profile_record_in_a_policy_folder(tmp_path: Path) -> None:
    assert read_profile_record(tmp_path) == ""
    write_profile_record(tmp_path, get_profile("reference-layout"))
    assert read_profile_record(tmp_path) == "reference-layout@ref-layout-v1"
    (tmp_path / PROFILE_FILE).write_text('{"prompt_profile": 3}')
    with pytest.raises(DataError, match="name@version"):
        read_profile_record(tmp_path)
    with pytest.raises(InvalidArgument):
        write_profile_record(tmp_path, "no-version")


def test_searcher_core_warns_or_refuses_another_training_profile(tmp_path: Path, caplog: Any) -> None:
    from s3_searcher.servicer import SearcherCore

    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    write_profile_record(folder, get_profile("reference-layout"))
    loaded: list[str] = []

    class P:
        tokenizer = None

    def factory(path: str, version: int) -> Any:
        loaded.append(path)
        return P()

    core = SearcherCore(SearchConfig(), SearcherConfig(model="embedded:x"), search, factory)
    core.load_initial()
    assert core.served.trained_profile == ""
    with caplog.at_level(logging.WARNING):
        served = core.load_policy(str(folder), 1)
    assert served.trained_profile == "reference-layout@ref-layout-v1"
    assert "trained with searcher prompt profile reference-layout@ref-layout-v1 but is served with s3-platform@" \
        in caplog.text
    strict = SearcherCore(SearchConfig(), SearcherConfig(model="embedded:x", prompt_profile_mismatch="refuse"),
                          search, factory)
    strict.load_initial()
    n = len(loaded)
    with pytest.raises(InvalidArgument, match="set searcher.prompt_profile to the training one"):
        strict.load_policy(str(folder), 1)
    assert len(loaded) == n and strict.served.version == 0  # refused before loading; the old policy serves
    # served with the profile it was trained with: no complaint
    same = SearcherCore(SearchConfig(), SearcherConfig(model="embedded:x", prompt_profile="reference-layout",
                                                       prompt_profile_mismatch="refuse"), search, factory)
    same.load_initial()
    assert same.load_policy(str(folder), 1).version == 1 and same.profile.name == "reference-layout"


def test_results_json_names_the_profiles_of_the_episodes(tok: Any, tmp_path: Path) -> None:
    import json

    from s3core.eval.report import write_outcome
    from s3core.eval.runner import EvalOutcome

    cfg = SearchConfig(initial_k=3, retrieve_k=8, select_max=3, max_turns=1)
    t = run_episodes([Q], Scripted(tok, TURNS), search, cfg, profile=get_profile("reference-layout"))[0]
    res = write_outcome(tmp_path / "s3", EvalOutcome(method="s3", k=3, trajectories=[("nq", Q.id, t, [])]), {})
    assert res["searcher_prompt_profiles"] == ["reference-layout@ref-layout-v1"]
    assert json.loads((tmp_path / "s3" / "results.json").read_text())["searcher_prompt_profiles"] == res[
        "searcher_prompt_profiles"]
    line = json.loads((tmp_path / "s3" / "trajectories.jsonl").read_text().splitlines()[0])
    assert line["trajectory"]["prompt_profile"] == "reference-layout@ref-layout-v1"
    # methods without episodes carry no such field
    assert "searcher_prompt_profiles" not in write_outcome(tmp_path / "rag", EvalOutcome(method="naive-rag", k=3), {})


def test_replay_lays_an_episode_out_in_its_recorded_profile(tok: Any) -> None:
    import dataclasses

    from s3core.search.replay import replay_tokens, replay_trajectory

    cfg = SearchConfig(initial_k=3, retrieve_k=8, select_max=4, max_turns=3)
    for name in ("reference-layout", DEFAULT_PROFILE):
        t = run_episodes([Q], Scripted(tok, TURNS), search, cfg, profile=get_profile(name))[0]
        ids, mask, plen = replay_tokens(t, tok, cfg)  # same tokenizer: exactly the engine's layout
        assert (ids, mask, plen) == (t.token_ids, t.action_mask, t.prompt_length), name
        assert replay_trajectory(t, tok, cfg).prompt_profile == t.prompt_profile
    # the other profile lays it out differently; an unknown one is refused
    assert replay_tokens(t, tok, cfg, get_profile("reference-layout"))[0] != t.token_ids
    with pytest.raises(InvalidArgument, match="unknown searcher prompt profile 'theirs'"):
        replay_tokens(dataclasses.replace(t, prompt_profile="theirs@1"), tok, cfg)


def test_learner_exports_record_the_training_profile(tmp_path: Path) -> None:
    """Policies the learner publishes carry the profile record, so the check above fires for them."""
    from s3core.rl.tiny import build_tiny_model
    from s3core.train.learner_core import LearnerCore

    model = build_tiny_model(tmp_path / "tiny", seed=0)
    name = next(n for n in PROFILES if n != DEFAULT_PROFILE)
    cfg = load_config(overrides={"searcher": {"prompt_profile": name}, "rl": {"algorithm": "grpo", "device": "cpu"}})
    core = LearnerCore(cfg, str(model), tmp_path / "ck")
    assert core.trainer.prompt_profile == get_profile(name).tag
    out = core.trainer.export_policy(tmp_path / "export")
    assert read_profile_record(out) == get_profile(name).tag
    core.trainer.prompt_profile = ""  # a bare trainer (no driver config) records nothing
    assert read_profile_record(core.trainer.export_policy(tmp_path / "bare")) == ""
