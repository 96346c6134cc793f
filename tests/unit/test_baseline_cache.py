"""The Redis baseline cache on fakeredis: get / put / many, counters, export → import round trip,
bad import records, unreachable Redis."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import fakeredis
import pytest
from prometheus_client import REGISTRY

from s3core.cache.baseline import BaselineCache, BaselineRecord, connect
from s3core.cache.keys import BaselineKey
from s3core.errors import DataError, Unavailable


def _key(i: int, **over: object) -> BaselineKey:
    d: dict[str, object] = dict(dataset="nq", question=f"Question {i}?", index_fingerprint="bm25-abc", k=3,
                                generator_model="hf/m", prompt_version="v1", judge_id="span-only")
    d.update(over)
    return BaselineKey(**d)  # type: ignore[arg-type]


def _rec(i: int, correct: bool = False) -> BaselineRecord:
    return BaselineRecord(question_id=f"q{i}", answer=f"answer {i} – é", genacc=correct, em=correct,
                          f1=1.0 if correct else 0.25, span=correct, judge=None if correct else False,
                          doc_ids=(f"d{i}", f"d{i + 1}"))


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
def cache() -> BaselineCache:
    return BaselineCache(fakeredis.FakeRedis())


def test_get_put_many(cache: BaselineCache) -> None:
    h0, m0, w0 = (_counter(f"s3_baseline_cache_{n}_total") for n in ("hits", "misses", "writes"))
    assert cache.get(_key(0)) is None
    assert cache.put_many([(_key(i), _rec(i, i % 2 == 0)) for i in range(5)]) == 5
    assert cache.count() == 5
    got = cache.get_many([_key(i) for i in range(7)])
    assert got[:5] == [_rec(i, i % 2 == 0) for i in range(5)]
    assert got[5:] == [None, None]
    assert got[0].acc == 1.0 and got[1].acc == 0.0
    # trivially different question → same entry
    assert cache.get(_key(3, question="question 3")) == _rec(3)
    assert _counter("s3_baseline_cache_hits_total") - h0 == 6
    assert _counter("s3_baseline_cache_misses_total") - m0 == 3
    assert _counter("s3_baseline_cache_writes_total") - w0 == 5


def test_overwrite_flag_and_namespaces(cache: BaselineCache) -> None:
    cache.put(_key(0), _rec(0, False))
    assert cache.put(_key(0), _rec(0, True), overwrite=False) is False
    assert cache.get(_key(0)) == _rec(0, False)
    assert cache.put(_key(0), _rec(0, True)) is True
    assert cache.get(_key(0)) == _rec(0, True)
    other = BaselineCache(cache.client, namespace="exp2")
    assert other.get(_key(0)) is None and other.count() == 0
    cache.client.set("unrelated", "x")
    assert cache.count() == 1
    assert cache.clear() == 1 and cache.count() == 0
    assert cache.client.get("unrelated") == b"x"


def test_stored_value_is_self_describing(cache: BaselineCache) -> None:
    cache.put(_key(1), _rec(1))
    raw = json.loads(cache.client.get(_key(1).redis_key()))
    assert raw["key"] == _key(1).to_dict()
    for f in ("answer", "genacc", "em", "f1", "span", "judge", "doc_ids", "question_id", "created_at"):
        assert f in raw


def test_corrupt_entry_is_reported(cache: BaselineCache) -> None:
    cache.client.set(_key(1).redis_key(), b"{not json")
    with pytest.raises(DataError, match="corrupt baseline entry"):
        cache.get(_key(1))


def test_export_import_round_trip(cache: BaselineCache, tmp_path: Path) -> None:
    entries = [(_key(i, dataset="nq" if i < 3 else "hotpotqa"), _rec(i, i == 1)) for i in range(6)]
    cache.put_many(entries)
    out = tmp_path / "sub" / "baselines.json"
    assert cache.export_json(out) == 6
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["format"] == "s3-baseline-cache" and doc["count"] == 6
    assert not list(out.parent.glob(".*.tmp"))  # atomic: no temp file left

    fresh = BaselineCache(fakeredis.FakeRedis())
    res = fresh.import_json(out)
    assert (res.total, res.written, res.skipped) == (6, 6, 0)
    assert fresh.get_many([k for k, _ in entries]) == [r for _, r in entries]
    # importing again skips everything by default; overwrite rewrites
    again = fresh.import_json(out)
    assert (again.written, again.skipped) == (0, 6)
    assert fresh.import_json(out, overwrite=True).written == 6
    # export of the imported cache is the same baselines
    out2 = tmp_path / "b2.json"
    fresh.export_json(out2)
    assert json.loads(out2.read_text())["records"] == doc["records"]


def test_import_keeps_existing_unless_overwrite(cache: BaselineCache, tmp_path: Path) -> None:
    cache.put(_key(0), _rec(0, True))
    cache.export_json(tmp_path / "e.json")
    cache.put(_key(0), _rec(0, False))
    assert cache.import_json(tmp_path / "e.json").skipped == 1
    assert cache.get(_key(0)) == _rec(0, False)
    cache.import_json(tmp_path / "e.json", overwrite=True)
    assert cache.get(_key(0)) == _rec(0, True)


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r.pop("genacc"), "record 2: missing field 'genacc'"),
    (lambda r: r.update(f1="high"), "record 2: field 'f1' must be a number"),
    (lambda r: r.update(doc_ids="d1"), "record 2: field 'doc_ids'"),
    (lambda r: r["key"].update(k=0), "record 2: baseline key: k must be"),
    (lambda r: r["key"].pop("judge_id"), "record 2: baseline key misses field"),
    (lambda r: r.update(genacc=True, span=False, judge=False), "record 2: inconsistent record"),
])
def test_bad_import_record(cache: BaselineCache, tmp_path: Path, mutate, match: str) -> None:  # noqa: ANN001
    cache.put_many([(_key(i), _rec(i)) for i in range(4)])
    path = tmp_path / "e.json"
    cache.export_json(path)
    doc = json.loads(path.read_text())
    mutate(doc["records"][2])
    path.write_text(json.dumps(doc))
    fresh = BaselineCache(fakeredis.FakeRedis())
    with pytest.raises(DataError, match=match):
        fresh.import_json(path)
    assert fresh.count() == 0  # validated before anything is written


def test_import_not_an_export(cache: BaselineCache, tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text('{"records": []}')
    with pytest.raises(DataError, match="not a baseline-cache export"):
        cache.import_json(p)
    p.write_text("{oops")
    with pytest.raises(DataError, match="invalid JSON"):
        cache.import_json(p)
    with pytest.raises(DataError, match="no such file"):
        cache.import_json(tmp_path / "missing.json")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on exit: nothing listens there


def test_unreachable_redis() -> None:
    url = f"redis://127.0.0.1:{_dead_port()}/0"
    with pytest.raises(Unavailable, match=f"redis at {url} unreachable"):
        connect(url, timeout=0.5)
    import redis

    cache = BaselineCache(redis.Redis.from_url(url, socket_connect_timeout=0.5), url=url)
    with pytest.raises(Unavailable, match="unreachable"):
        cache.get(_key(0))
    with pytest.raises(Unavailable, match="unreachable"):
        cache.put(_key(0), _rec(0))


# --- precompute and the training-set filter with stub services (the real ones: tests/integration) ------

class _Info:
    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


class StubRetriever:
    def __init__(self) -> None:
        self.searches = 0

    def list_indexes(self) -> _Info:
        idx = _Info(name="synth", backend="bm25", num_documents=10, corpus_sha256="ab" * 32, encoder="",
                    params_json="{}")
        return _Info(indexes=[idx], default_index="synth")

    def search(self, queries, k, index=""):  # noqa: ANN001, ANN201
        from s3core.types import Doc

        self.searches += 1
        return [[Doc(id=f"{q[:6]}-{j}", title="t", text=q) for j in range(k)] for q in queries]


class StubGenerator:
    """Answers "Paris" to everything; the judge says yes when a gold starts with "J"."""

    def __init__(self, prompt_version: str = "v1") -> None:
        self.answers = 0
        self.judged = 0
        self.prompt_version = prompt_version

    def model_info(self) -> _Info:
        return _Info(model="stub", backend="hf", prompt_version=self.prompt_version)

    def answer(self, items):  # noqa: ANN001, ANN201
        self.answers += 1
        return _Info(answers=["Paris" for _ in items], prompt_version=self.prompt_version, model="stub")

    def judge(self, items):  # noqa: ANN001, ANN201
        self.judged += len(items)
        return _Info(correct=[any(g.startswith("J") for g in golds) for _, _, golds in items])


def _qs(ds: str, golds: list[list[str]]) -> list:
    from s3core.types import Question

    return [Question(id=f"{ds}-{i}", question=f"{ds} question {i}?", golden_answers=tuple(g), dataset=ds)
            for i, g in enumerate(golds)]


def test_precompute_and_filter_with_stubs(cache: BaselineCache, tmp_path: Path) -> None:
    from s3core.data import load_questions
    from s3core.eval.precompute import filter_training_set, precompute
    from s3core.reward import MissingBaseline

    sets = {
        "a": _qs("a", [["Paris"], ["London"], ["Jupiter"], ["yes"], ["Rome"]]),
        "b": _qs("b", [["paris city"], ["False", "x"], ["Oslo"]]),
    }
    # a trivially different duplicate of a-1 shares its baseline
    from s3core.types import Question

    sets["a"].append(Question(id="a-dup", question="A QUESTION 1", golden_answers=("London",), dataset="a"))
    ret, gen = StubRetriever(), StubGenerator()
    batches: list[int] = []
    s = precompute(sets, ret, gen, cache, k=2, judge=True, batch_size=2, show_progress=False,
                   on_batch=lambda ds, n: batches.append(n))
    assert (s.hits, s.misses, s.written) == (0, 9, 8)
    assert cache.count() == 8
    assert batches == [2, 4, 5, 7, 8]  # a: 5 distinct keys in batches of 2; b: 3
    pa = s.per_dataset["a"]
    # a: Paris (span), London (no), Jupiter (judge), yes (no), Rome (no), dup of London (no)
    assert pa.genacc == pytest.approx(2 / 6) and pa.em == pytest.approx(1 / 6)
    assert s.per_dataset["b"].genacc == pytest.approx(0.0)
    assert s.genacc == pytest.approx((2 / 6 + 0.0) / 2)
    assert gen.judged == 7  # every non-span answer was judged

    s2 = precompute(sets, ret, gen, cache, k=2, judge=True, batch_size=2, show_progress=False)
    assert (s2.hits, s2.misses, s2.written) == (9, 0, 0)
    assert gen.answers == 5 and s2.genacc == s.genacc
    # any change of the setup is a different baseline: span-only judging recomputes
    s3 = precompute(sets, ret, gen, cache, k=2, judge=False, batch_size=8, show_progress=False)
    assert s3.misses == 9 and s3.per_dataset["a"].genacc == pytest.approx(1 / 6)

    from s3core.eval.precompute import resolve_setup

    key_fn = resolve_setup(ret, gen, 2, True).key_fn()
    out = tmp_path / "train.jsonl"
    fs = filter_training_set(sets, cache, key_fn, out)
    assert (fs.total, fs.dropped_yes_no, fs.dropped_rag_correct, fs.kept) == (9, 2, 2, 5)
    kept = load_questions(out)
    assert [q.question for q in kept] == ["a question 1?", "a question 4?", "A QUESTION 1", "b question 0?",
                                          "b question 2?"]
    # ids stay; the source dataset travels in metadata so the baselines are found again
    assert [key_fn(q) for q in kept] == [key_fn(q) for q in [sets["a"][1], sets["a"][4], sets["a"][5],
                                                              sets["b"][0], sets["b"][2]]]

    # a missing baseline fails loudly and writes nothing
    extra = _qs("c", [["Oslo"], ["Rome"]])
    out2 = tmp_path / "train2.jsonl"
    with pytest.raises(MissingBaseline, match=r"2 naive-RAG baseline\(s\) missing .*'c-0', 'c-1'"):
        filter_training_set(extra, cache, key_fn, out2)
    assert not out2.exists()


def test_precompute_refuses_a_generator_swap(cache: BaselineCache) -> None:
    from s3core.errors import S3Error
    from s3core.eval.precompute import precompute, resolve_setup

    ret, gen = StubRetriever(), StubGenerator()
    setup = resolve_setup(ret, gen, 2, False)
    gen.prompt_version = "v2"  # templates changed after the keys were resolved
    with pytest.raises(S3Error, match="prompt version changed"):
        precompute({"a": _qs("a", [["x"]])}, ret, gen, cache, k=2, judge=False, show_progress=False, setup=setup)
    assert cache.count() == 0
