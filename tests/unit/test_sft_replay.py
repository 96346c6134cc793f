"""Replaying trajectories with a student's tokenizer, and the teacher trajectories of `s3 sft`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from s3core.config import SearchConfig
from s3core.errors import DataError, InvalidArgument
from s3core.search.episode import run_episodes
from s3core.search.replay import replay_tokens, replay_trajectory
from s3core.types import Doc, Question

DOCS = [Doc(f"d{i}", f"Title {i}", f"Passage number {i} says something about topic {i % 3}.") for i in range(1, 10)]


class WordSearch:
    def __call__(self, queries: list[str], k: int) -> list[list[Doc]]:
        out = []
        for q in queries:
            n = sum(map(ord, q))
            out.append([DOCS[(n + j) % len(DOCS)] for j in range(k)])
        return out


class Scripted:
    """Emits per-turn texts (turn = observations seen after the prompt), optionally followed by EOS."""

    def __init__(self, tokenizer: Any, script: list[str], *, eos: bool = False) -> None:
        self.tokenizer = tokenizer
        self.script = script
        self.eos = eos

    def generate(self, batch, max_new_tokens, temperature, stop):
        outs = []
        for ids in batch:
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            rest = text.split("Assistant:", 1)[1]
            turn = rest.count("</information>") + rest.count("</feedback>")
            gen = list(self.tokenizer(self.script[min(turn, len(self.script) - 1)], add_special_tokens=False)["input_ids"])
            if self.eos:
                gen.append(self.tokenizer.eos_token_id)
            outs.append(gen)
        return outs


@pytest.fixture(scope="module")
def tok() -> Any:
    from s3core.rl.tiny import train_tiny_tokenizer

    return train_tiny_tokenizer()


SCRIPT = [
    "I am not sure what to do here.",  # invalid -> feedback
    '<important_info>[2]</important_info><search_complete>false</search_complete><query>{"query": "topic one"}</query>',
    '<important_info>[]</important_info><search_complete>false</search_complete><query>{"query": "topic two"}</query>',
    "<important_info>[1, 3]</important_info><search_complete>true</search_complete>",
]


@pytest.mark.parametrize("max_turns", [0, 1, 3])
def test_replay_is_the_engines_layout(tok: Any, max_turns: int) -> None:
    cfg = SearchConfig(max_turns=max_turns, max_new_tokens=64, max_obs_tokens=40, retrieve_k=4)
    qs = [Question("q1", "Which passage talks about topic one?", ("x",)), Question("q2", "Topic two?", ("y",))]
    trajs = run_episodes(qs, Scripted(tok, SCRIPT), WordSearch(), cfg)
    for t in trajs:
        assert len(t.turns) == max_turns + 1  # every turn used (the last one is the final turn)
        ids, mask, plen = replay_tokens(t, tok, cfg)
        assert (ids, mask, plen) == (t.token_ids, t.action_mask, t.prompt_length)
        r = replay_trajectory(t, tok, cfg)
        assert r.token_ids == t.token_ids and r.turns == t.turns


def test_replay_drops_generated_eos_only(tok: Any) -> None:
    cfg = SearchConfig(max_turns=2, max_new_tokens=64, max_obs_tokens=40, retrieve_k=4)
    (t,) = run_episodes([Question("q", "Topic two?", ("y",))], Scripted(tok, SCRIPT, eos=True), WordSearch(), cfg)
    eos = tok.eos_token_id
    assert eos in [i for i, m in zip(t.token_ids, t.action_mask) if m]
    ids, mask, plen = replay_tokens(t, tok, cfg)
    kept = [(i, m) for i, m in zip(t.token_ids, t.action_mask) if not (m and i == eos)]
    assert list(zip(ids, mask)) == kept
    assert plen == t.prompt_length


def test_replay_with_another_tokenizer_and_bad_structure(tok: Any) -> None:
    from s3core.rl.tiny import train_tiny_tokenizer
    from s3core.search.episode import decode

    cfg = SearchConfig(max_turns=3, max_new_tokens=64, max_obs_tokens=40, retrieve_k=4)
    (t,) = run_episodes([Question("q", "Topic two?", ("y",))], Scripted(tok, SCRIPT), WordSearch(), cfg)
    other = train_tiny_tokenizer(["a completely different corpus of words", "<query> </query> {} []"], vocab_size=300)
    ids, mask, plen = replay_tokens(t, other, cfg)
    assert ids != t.token_ids and len(ids) == len(mask)
    acts = decode(other, [i for i, m in zip(ids, mask) if m], skip_special=True)
    assert acts == "".join(turn.raw_text for turn in t.turns)
    assert mask[:plen] == [0] * plen and mask[plen] == 1
    with pytest.raises(InvalidArgument, match="more than search.max_turns"):
        replay_tokens(t, tok, SearchConfig(max_turns=1))
    broken = replay_trajectory(t, tok, cfg)
    broken.blocks = broken.blocks[:1]
    with pytest.raises(InvalidArgument, match="no block 1"):
        replay_tokens(broken, tok, cfg)


# --- the synthetic-world teacher --------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Question], Any]:
    from s3core.data.io import load_questions
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index, load_index

    root = tmp_path_factory.mktemp("world")
    synthesize(root / "w", seed=3, n_entities=60, n_questions=12)
    build_index(root / "w" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    qs = load_questions(root / "w" / "synth_1hop.jsonl") + load_questions(root / "w" / "synth_2hop.jsonl")
    return qs, load_index(root / "idx")


def test_synth_teacher_real_episodes(tok: Any, world: tuple[list[Question], Any]) -> None:
    from s3core.search.parsing import parse_turn
    from s3core.train.teacher import synth_teacher_trajectories

    qs, index = world
    cfg = SearchConfig(max_new_tokens=128)
    trajs = synth_teacher_trajectories(qs, index.search, tok, cfg)
    assert [t.question.id for t in trajs] == [q.id for q in qs]
    full = 0
    for t in trajs:
        meta = t.question.metadata
        golds = meta["gold_passage_ids"]
        assert all(turn.valid_action for turn in t.turns) and t.done
        # blocks are the index's own results for the queries
        for b in t.blocks[1:]:
            assert [d.id for d in b.docs] == [d.id for d in index.search([b.query], cfg.retrieve_k)[0]]
        # every selected doc is a gold passage; every gold passage shown is selected
        ctx = [d.id for d in t.context]
        assert set(ctx) <= set(golds)
        shown = {d.id for b in t.blocks for d in b.docs}
        assert {g for g in golds if g in shown} == set(ctx)
        full += set(ctx) == set(golds)
        if meta["hops"] == 2 and len(t.blocks) > 1:
            first = parse_turn(t.turns[0].raw_text, len(t.blocks[0].docs), cfg.select_max).query
            dec = [d["question"] for d in meta["decomposition"]]
            # the bridge is only named once the subject's passage was shown
            assert first == (dec[1] if golds[0] in {d.id for d in t.blocks[0].docs} else dec[0])
        assert replay_tokens(t, tok, cfg) == (t.token_ids, t.action_mask, t.prompt_length)
    assert full >= len(trajs) // 2


def test_synth_teacher_needs_metadata(tok: Any) -> None:
    from s3core.train.teacher import synth_teacher_trajectories

    with pytest.raises(InvalidArgument, match="gold_passage_ids"):
        synth_teacher_trajectories([Question("q", "Who?", ("x",))], WordSearch(), tok, SearchConfig())


def test_load_eval_trajectories(tmp_path: Path, tok: Any) -> None:
    from s3core.eval.report import trajectory_record
    from s3core.train.teacher import load_trajectory_file

    cfg = SearchConfig(max_turns=3, max_new_tokens=64, max_obs_tokens=40, retrieve_k=4)
    qs = [Question(f"q{i}", f"Topic {i}?", ("y",), dataset="ds") for i in range(3)]
    trajs = run_episodes(qs, Scripted(tok, SCRIPT), WordSearch(), cfg)
    path = tmp_path / "trajectories.jsonl"
    path.write_text("".join(json.dumps(trajectory_record("ds", t.question.id, "s3", t, [d.id for d in t.context])) + "\n"
                            for t in trajs))
    back = load_trajectory_file(path)
    assert [b.token_ids for b in back] == [t.token_ids for t in trajs]
    assert [b.turns for b in back] == [t.turns for t in trajs]
    assert [replay_tokens(b, tok, cfg)[0] for b in back] == [t.token_ids for t in trajs]
    with pytest.raises(InvalidArgument, match="predictions.jsonl"):
        load_trajectory_file(path, only_correct=True)
    (tmp_path / "predictions.jsonl").write_text("".join(
        json.dumps({"dataset": "ds", "id": f"q{i}", "genacc": i != 1}) + "\n" for i in range(3)))
    assert [t.question.id for t in load_trajectory_file(path, only_correct=True)] == ["q0", "q2"]
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(DataError, match=r"trajectories.jsonl:2: invalid JSON"):
        load_trajectory_file(path)
    path.write_text(lines[0] + "\n" + json.dumps({"trajectory": {"turns": "x"}}) + "\n")
    with pytest.raises(DataError, match=r"trajectories.jsonl:2: bad trajectory"):
        load_trajectory_file(path)
