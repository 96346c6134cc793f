"""`s3 score` end to end (issue 15 §2): contexts gathered elsewhere answered by a real generator
(embedded SmolLM2-135M started for the run), and bad input named in one line."""

import json
import os
import subprocess
import sys

ENV = {**os.environ, "S3_LOG_LEVEL": "WARNING"}


def s3(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "s3cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def test_score_contexts_with_the_generator(shared_data, tmp_path):
    """PopQA questions with their gold passages as the "other searcher's" contexts, as Search-R1's
    /retrieve returns them ({"document": {"id", "contents"}, "score"}), next to MIRAGE PubMedQA
    questions with no documents, scored with --judge only: the real generator judges every row,
    multiple-choice rows with their options and the gold option line."""
    rows = [json.loads(x) for x in (shared_data / "wiki_qa" / "popqa.dev.jsonl").read_text().splitlines()][:3]
    med = [json.loads(x) for x in (shared_data / "mirage" / "pubmedqa.dev.jsonl").read_text().splitlines()][::200]
    need = {i for r in rows for i in r["metadata"]["gold_passage_ids"]}
    corpus = {}
    with (shared_data / "wiki_corpus.jsonl").open() as fh:
        for line in fh:
            d = json.loads(line)
            if d["id"] in need:
                corpus[d["id"]] = d
    q = tmp_path / "popqa.dev.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mq = tmp_path / "pubmedqa.dev.jsonl"
    mq.write_text("".join(json.dumps(r) + "\n" for r in med))
    c = tmp_path / "sr1-contexts.jsonl"
    c.write_text("".join(json.dumps({"id": r["id"], "dataset": "popqa", "documents": [
        {"document": corpus[i], "score": 1.0} for i in r["metadata"]["gold_passage_ids"]]}) + "\n" for r in rows)
        + "".join(json.dumps({"id": r["id"], "documents": []}) + "\n" for r in med))
    out = tmp_path / "out"
    r = s3("score", "--questions", q, mq, "--contexts", c, "--out", out, "--preset", "embedded", "--judge", "only",
           "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    ds = res["datasets"]["popqa"]
    assert ds["n"] == 3 and ds["answer_recall@k"] == 1.0 and res["config"]["scored_from"] == "contexts"
    assert res["config"]["generator_model"] and res["method"] == "sr1-contexts" and res["config"]["judge"] == "only"
    assert ds["span"] >= 0.5  # the gold passage is in every context (measured: 1.0 at 8 questions)
    pm = res["datasets"]["pubmedqa"]
    assert pm["n"] == len(med) == pm["mc"] and pm["judge_calls"] == len(med) and ds["judge_calls"] == 3
    scored = [json.loads(x) for x in (out / "scored.jsonl").read_text().splitlines()]
    assert [s["doc_ids"] for s in scored[:3]] == [r["metadata"]["gold_passage_ids"] for r in rows]
    assert all(s["prediction"] for s in scored)
    assert all(isinstance(s["judge"], bool) and s["genacc"] == s["judge"] for s in scored)  # judge only
    assert all("choice" in s for s in scored[3:]) and not any("choice" in s for s in scored[:3])

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "popqa-999999", "prediction": "x"}) + "\n")
    r = s3("score", "--questions", q, "--predictions", bad, "--out", tmp_path / "o2")
    assert r.returncode == 2 and f"{bad}:1" in r.stderr and "popqa-999999" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
