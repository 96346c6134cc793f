"""The transformers backend on a tiny randomly initialised Qwen2-style model built in the test."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from s3core.generation.engine import answer, fit_answer_messages  # noqa: E402
from s3core.generation.hf import HFGenerator  # noqa: E402
from s3core.types import Doc  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SENTENCES = [
    "The river Ardle runs through the old town and past the stone bridge.",
    "Thomas Hale designed the bridge in 1832; it is still in use today.",
    "Question: who designed the bridge? Answer in a few words.",
    "Documents describe places, people, books and the years they were made.",
    "A small publisher printed poetry books in the fishing town of Kinvara.",
    "The quick brown fox jumps over the lazy dog near the harbour wall.",
]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("tiny-qwen2")
    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.5,  # large weights: varied (non-repeating) greedy output
        tie_word_embeddings=False,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        # Special tokens and byte pieces get logit 0, far below the best of the random ones: the
        # output never ends early and decodes to readable ASCII.
        for tid in range(len(hf_tok)):
            piece = hf_tok.decode([tid])
            if tid in hf_tok.all_special_ids or not (piece.isascii() and piece.isprintable()):
                model.lm_head.weight[tid].fill_(0.0)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gen(tiny_model_dir: Path) -> HFGenerator:
    return HFGenerator(str(tiny_model_dir), name="tiny", max_batch_size=4, max_prompt_tokens=256, dtype="float32",
                       device="cpu")


def _conv(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be concise."}, {"role": "user", "content": text}]


CONVS = [
    _conv("who designed the bridge?"),
    _conv("The river Ardle runs through the old town and past the stone bridge. Who designed it?"),
    _conv("fox"),
    _conv("A small publisher printed poetry books in the fishing town of Kinvara. Which town?"),
    _conv("Documents describe places, people, books and the years they were made."),
]


def test_batched_equals_unbatched(gen: HFGenerator) -> None:
    lengths = {gen.count_prompt_tokens(c) for c in CONVS}
    assert len(lengths) > 2  # the batch really needs padding
    batched = gen.generate(CONVS, max_new_tokens=12)
    one_by_one = [gen.generate([c], max_new_tokens=12).texts[0] for c in CONVS]
    assert batched.texts == one_by_one
    assert all(t for t in batched.texts)
    assert batched.usage.prompt_tokens == sum(gen.count_prompt_tokens(c) for c in CONVS)


def test_max_new_tokens_respected(gen: HFGenerator) -> None:
    for n in (1, 5):
        out = gen.generate(CONVS[:3], max_new_tokens=n)
        assert out.usage.completion_tokens == 3 * n  # the tiny model never emits its EOS
        assert all(out.texts)
        for conv, text in zip(CONVS[:3], out.texts):
            one = gen.generate([conv], max_new_tokens=n)
            assert one.usage.completion_tokens == n and one.texts == [text]
    empty = gen.generate(CONVS[:2], max_new_tokens=0)
    assert empty.texts == ["", ""] and empty.usage.completion_tokens == 0


def test_usage_and_observer(gen: HFGenerator) -> None:
    seen: list[tuple[int, int, int, float]] = []
    gen.observers.append(lambda *a: seen.append(a))
    try:
        texts = gen.complete(CONVS, max_new_tokens=4)
    finally:
        gen.observers.clear()
    assert len(texts) == len(CONVS)
    assert [s[0] for s in seen] == [4, 1]  # max_batch_size=4, sorted by length
    assert sum(s[2] for s in seen) == gen.last_usage.completion_tokens == 4 * len(CONVS)


def test_stop_strings_cut(gen: HFGenerator) -> None:
    full = gen.generate(CONVS[:2], max_new_tokens=16).texts
    stops = []
    for text in full:
        mid = text[len(text) // 2:].strip()
        assert mid, f"tiny model output too short: {text!r}"
        stops.append(mid[:2])
    for text, stop in zip(full, stops):
        out = gen.generate([CONVS[full.index(text)]], max_new_tokens=16, stop=[stop])
        assert out.texts[0] == text[: text.find(stop)]
        assert stop not in out.texts[0]
        assert out.usage.completion_tokens < 16
    # a stop string that never occurs changes nothing
    assert gen.generate(CONVS[:2], max_new_tokens=16, stop=["\x00never"]).texts == full


def test_truncation_keeps_question(gen: HFGenerator) -> None:
    long_text = " ".join(SENTENCES) * 20
    docs = [Doc("1", "Bridge", long_text), Doc("2", "River", long_text)]
    question = "Who designed the stone bridge over the river Ardle?"
    msgs = fit_answer_messages(gen, question, docs)
    assert gen.count_prompt_tokens(msgs) <= gen.max_prompt_tokens
    user = msgs[-1]["content"]
    assert f"Question: {question}" in user
    assert "Doc 1 (Title: Bridge)" in user
    assert "Doc 2 (Title: River)" not in user  # cut from the end of the context
    # short contexts are left alone
    short = fit_answer_messages(gen, question, [Doc("1", "Bridge", "Thomas Hale designed it.")])
    assert "Doc 1 (Title: Bridge) Thomas Hale designed it." in short[-1]["content"]
    answers = answer(gen, [(question, docs), (question, [])], max_new_tokens=3)
    assert len(answers) == 2 and all("\n" not in a for a in answers)


def test_overlong_conversation_is_cut_not_refused(gen: HFGenerator) -> None:
    huge = _conv(" ".join(SENTENCES) * 40)
    out = gen.generate([huge], max_new_tokens=2)
    assert out.usage.prompt_tokens == gen.max_prompt_tokens
    assert len(out.texts) == 1


def test_sampling_runs(gen: HFGenerator) -> None:
    out = gen.generate(CONVS[:2], max_new_tokens=3, temperature=0.8)
    assert len(out.texts) == 2


def test_resolve_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    from s3core.errors import ConfigError, NotFound
    from s3core.generation.models import default_cache_dir, resolve_model

    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve_model("Qwen/Qwen2.5-14B-Instruct") == "Qwen/Qwen2.5-14B-Instruct"  # hub name: passed through
    with pytest.raises(NotFound):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ConfigError):
        resolve_model("embedded:no-such-model")
    monkeypatch.setenv("S3_MODEL_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    # an already converted embedded model is reused as is (no conversion)
    done = tmp_path / "cache" / "smollm2-135m-instruct"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    (done / "model.safetensors").write_bytes(b"")
    assert resolve_model("embedded:smollm2-135m-instruct") == str(done)
