"""A searcher :class:`~s3core.search.episode.Policy` on transformers (CPU, or one GPU).

Prompts arrive as token ids, are sorted by length and generated in batches of ``max_batch_size``
with left padding.  ``temperature > 0`` samples (top-k and top-p off: the plain softmax, which is
what PPO/GRPO assume); ``temperature == 0`` is greedy.  Sampling is reproducible: each ``generate``
call seeds torch from ``(seed, call number)`` inside :func:`torch.random.fork_rng`, so the global
random state of the process is left untouched.  Stop strings end a row early (a stopping criterion)
and are then cut at the token level (:func:`~s3core.search.episode.cut_tokens`), as is an
end-of-sequence token (kept) and the padding after it (dropped).

**KV cache across turns** (``kv_cache=True``, the default): a search episode's next prompt is its
previous prompt plus the turn just generated plus an observation, so the policy keeps the key/value
cache of the rows of its last calls and, when a new prompt extends a cached row, feeds only the new
tokens.  Identical prompts in one call (a GRPO group: ``n`` copies of a question) are prefilled once
and the cache is copied to the others.  Rows are left-aligned in the cache with masked gaps
(attention mask 0, position ids counting real tokens only), so rows of different lengths share one
batch; tokens generated past a row's cut point stay in the cache masked out.  Which rows are reused
is decided by comparing token ids, never assumed: a prompt that extends no cached row is prefilled
from scratch, so results do not depend on the cache (only its speed does).  :meth:`set_seed` (called
by :func:`~s3core.search.episode.run_episodes` at the start of every run) and :meth:`reset_cache`
drop the cache; so must anything that changes the weights.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from s3core.errors import ConfigError
from s3core.search.episode import cut_tokens

__all__ = ["HFPolicy"]


class _Session:
    """The KV cache of one batch of rows after a generate call: ``fed[r]`` = the tokens whose keys and
    values are valid in row ``r`` (in order), ``mask`` = the cache's attention mask."""

    def __init__(self, cache: Any, mask: Any, fed: list[list[int]]) -> None:
        self.cache, self.mask, self.fed = cache, mask, fed

    def find(self, prompt: list[int]) -> int | None:
        """A row whose valid tokens are a proper prefix of ``prompt`` (the longest), or None."""
        best, best_len = None, -1
        for r, toks in enumerate(self.fed):
            if len(toks) < len(prompt) and len(toks) > best_len and prompt[:len(toks)] == toks:
                best, best_len = r, len(toks)
        return best

    def copy_rows(self, sel: Any) -> Any:
        import copy

        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        cache.batch_select_indices(sel)
        return cache


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}") from None


class HFPolicy:
    """Batched left-padded generation with a transformers causal LM."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        seed: int = 0,
        max_batch_size: int = 0,
        eos_token_ids: Sequence[int] | None = None,
        version: int = 0,
        name: str = "",
        kv_cache: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.version = int(version)
        self.name = name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "hf")
        self.max_batch_size = int(max_batch_size)  # 0 = all prompts of a call in one batch
        eos: set[int] = set(int(i) for i in (eos_token_ids or []))
        gen_cfg = getattr(model, "generation_config", None)
        for src in (getattr(gen_cfg, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
            if isinstance(src, int):
                eos.add(src)
            elif src:
                eos.update(int(x) for x in src)
        if not eos:
            raise ConfigError("the policy model defines no end-of-sequence token")
        self.eos_token_ids = sorted(eos)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else self.eos_token_ids[0]
        self._seed = int(seed)
        self._calls = 0
        self._lock = threading.Lock()
        self.kv_cache = bool(kv_cache)
        self._sessions: list[_Session] = []
        self.cache_stats = {"prefill_tokens": 0, "reused_tokens": 0, "decode_steps": 0}

    @classmethod
    def from_pretrained(
        cls, path: str, *, dtype: str = "auto", device: str | None = None, **kwargs: Any
    ) -> HFPolicy:
        """Load a model folder or hub name (tokenizer and weights) onto ``device``."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(dtype, dev))
        model.to(dev)
        model.eval()
        kwargs.setdefault("name", path)
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def set_seed(self, seed: int) -> None:
        with self._lock:
            self._seed = int(seed)
            self._calls = 0
            self._sessions = []

    def reset_cache(self) -> None:
        """Forget the cached rows (call after changing the weights in place)."""
        with self._lock:
            self._sessions = []

    def generate(
        self, batch_token_ids: list[list[int]], max_new_tokens: int, temperature: float, stop: list[str]
    ) -> list[list[int]]:
        prompts = [list(map(int, p)) for p in batch_token_ids]
        outs: list[list[int]] = [[] for _ in prompts]
        if not prompts or max_new_tokens <= 0:
            return outs
        stops = [s for s in stop if s]
        if self.kv_cache:
            with self._lock:
                return self._generate_cached(prompts, max_new_tokens, temperature, stops)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        size = self.max_batch_size if self.max_batch_size > 0 else len(order)
        with self._lock:
            for start in range(0, len(order), size):
                chunk = order[start:start + size]
                rows = self._generate_batch([prompts[i] for i in chunk], max_new_tokens, temperature, stops)
                for i, row in zip(chunk, rows):
                    outs[i] = row
        return outs

    # --- the cached path --------------------------------------------------------------------------

    def _generate_cached(self, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                         stops: list[str]) -> list[list[int]]:
        import torch

        # each prompt: the cached row it extends, if any (session index, row index)
        match: list[tuple[int, int] | None] = []
        for p in prompts:
            found = None
            for si, sess in enumerate(self._sessions):
                r = sess.find(p)
                if r is not None:
                    found = (si, r)
                    break
            match.append(found)
        groups: dict[int, list[int]] = {}
        fresh: list[int] = []
        for i, m in enumerate(match):
            if m is None:
                fresh.append(i)
            else:
                groups.setdefault(m[0], []).append(i)
        size = self.max_batch_size if self.max_batch_size > 0 else max(1, len(prompts))
        work: list[tuple[_Session | None, list[int]]] = []
        for si, idx in groups.items():
            for start in range(0, len(idx), size):
                work.append((self._sessions[si], idx[start:start + size]))
        fresh.sort(key=lambda i: len(prompts[i]))
        for start in range(0, len(fresh), size):
            work.append((None, fresh[start:start + size]))
        outs: list[list[int]] = [[] for _ in prompts]
        sessions: list[_Session] = []
        self._calls += 1
        seed = (self._seed * 1_000_003 + self._calls) % (2**63 - 1)
        device = self.device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
            torch.manual_seed(seed)
            for sess, idx in work:
                rows_m = [match[i][1] for i in idx] if sess is not None else None  # type: ignore[index]
                new_sess, rows = self._run_cached(sess, rows_m, [prompts[i] for i in idx], max_new_tokens,
                                                  temperature, stops)
                sessions.append(new_sess)
                for i, row in zip(idx, rows):
                    outs[i] = row
        self._sessions = sessions
        return outs

    def _run_cached(self, sess: _Session | None, rows: list[int] | None, prompts: list[list[int]],
                    max_new_tokens: int, temperature: float, stops: list[str]) -> tuple[_Session, list[list[int]]]:
        import torch
        from transformers import DynamicCache

        model, device = self.model, self.device
        eos = set(self.eos_token_ids)
        if sess is None:
            # prefill each distinct prompt once, then copy its cache to the duplicates (GRPO groups)
            uniq: dict[tuple[int, ...], int] = {}
            for p in prompts:
                uniq.setdefault(tuple(p), len(uniq))
            base = [list(k) for k in uniq]
            width = max(len(p) for p in base)
            ids = torch.full((len(base), width), self.pad_id, dtype=torch.long, device=device)
            mask = torch.zeros((len(base), width), dtype=torch.long, device=device)
            for r, p in enumerate(base):  # right-padded prefill: real tokens first, the gap masked
                ids[r, :len(p)] = torch.tensor(p, device=device)
                mask[r, :len(p)] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache(config=model.config)
            with torch.inference_mode():
                out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                            use_cache=True)
            self.cache_stats["prefill_tokens"] += int(mask.sum())
            last = torch.tensor([len(p) - 1 for p in base], device=device)
            logits = out.logits[torch.arange(len(base), device=device), last]
            sel = torch.tensor([uniq[tuple(p)] for p in prompts], device=device)
            cache.batch_select_indices(sel)
            logits, mask = logits[sel], mask[sel]
            fed = [list(p) for p in prompts]
        else:
            assert rows is not None
            sel = torch.tensor(rows, device=device)
            cache = sess.copy_rows(sel)
            mask = sess.mask[sel]
            suffixes = [p[len(sess.fed[r]):] for p, r in zip(prompts, rows)]
            self.cache_stats["reused_tokens"] += sum(len(sess.fed[r]) for r in rows)
            grow = max(len(x) for x in suffixes)
            if grow == 0:  # nothing new: the prompt is a cached row itself; refeed its last token
                raise AssertionError("a prompt equal to a cached row is matched as fresh")
            ids = torch.full((len(prompts), grow), self.pad_id, dtype=torch.long, device=device)
            add = torch.zeros((len(prompts), grow), dtype=torch.long, device=device)
            for r, x in enumerate(suffixes):  # left-padded suffix: each row's last real token is last
                ids[r, grow - len(x):] = torch.tensor(x, device=device)
                add[r, grow - len(x):] = 1
            real = mask.sum(-1, keepdim=True)
            pos = (real + add.cumsum(-1) - 1).clamp(min=0)
            mask = torch.cat([mask, add], dim=1)
            with torch.inference_mode():
                out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                            use_cache=True, logits_to_keep=1)
            self.cache_stats["prefill_tokens"] += int(add.sum())
            logits = out.logits[:, -1]
            fed = [list(p) for p in prompts]

        n = len(prompts)
        gen: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        fed_gen = [0] * n  # generated tokens whose keys/values are in the cache, unmasked
        tail = max((len(s) for s in stops), default=0) + 4
        for step in range(max_new_tokens):
            with torch.inference_mode():
                if temperature > 0:
                    probs = torch.softmax(logits.float() / float(temperature), dim=-1)
                    tok = torch.multinomial(probs, 1).squeeze(-1)
                else:
                    tok = logits.argmax(-1)
            toks = tok.tolist()
            for r in range(n):
                if done[r]:
                    continue
                gen[r].append(int(toks[r]))
                if toks[r] in eos:
                    done[r] = True
                elif stops:
                    text = self.tokenizer.decode(gen[r][-tail:], skip_special_tokens=False)
                    done[r] = any(x in text for x in stops)
            if all(done) or step == max_new_tokens - 1:
                break
            active = torch.tensor([0 if d else 1 for d in done], dtype=torch.long, device=device).unsqueeze(1)
            feed = torch.tensor([gen[r][-1] if not done[r] else self.pad_id for r in range(n)],
                                device=device).unsqueeze(1)
            pos = mask.sum(-1, keepdim=True)
            mask = torch.cat([mask, active], dim=1)
            with torch.inference_mode():
                out = model(input_ids=feed, attention_mask=mask, position_ids=pos, past_key_values=cache,
                            use_cache=True)
            self.cache_stats["decode_steps"] += 1
            for r in range(n):
                if not done[r]:
                    fed_gen[r] += 1
            logits = out.logits[:, -1]
        results = [cut_tokens(self.tokenizer, row, stops, eos) for row in gen]
        # a row's valid cache: its prompt plus the generated tokens that were fed and are kept by the cut;
        # generated tokens past the cut were fed unmasked -- mask them out now
        keep_gen = [min(len(res), fed_gen[r]) for r, res in enumerate(results)]
        width = mask.shape[1]
        for r in range(n):
            if fed_gen[r] > keep_gen[r]:
                cols = (mask[r] == 1).nonzero().flatten()
                drop = cols[len(cols) - (fed_gen[r] - keep_gen[r]):]
                mask[r, drop] = 0
            fed[r] = fed[r] + results[r][:keep_gen[r]]
        del width
        return _Session(cache=cache, mask=mask, fed=fed), results

    def _generate_batch(
        self, batch: list[list[int]], max_new_tokens: int, temperature: float, stops: list[str]
    ) -> list[list[int]]:
        import torch

        from s3core.generation.hf_generate import generate_new_tokens

        device = self.device
        self._calls += 1
        seed = (self._seed * 1_000_003 + self._calls) % (2**63 - 1)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
            torch.manual_seed(seed)
            rows = generate_new_tokens(self.model, self.tokenizer, batch, max_new_tokens=max_new_tokens,
                                       temperature=temperature, stops=stops, pad_id=self.pad_id,
                                       eos_ids=self.eos_token_ids, skip_special=False)
        eos = set(self.eos_token_ids)
        return [cut_tokens(self.tokenizer, row, stops, eos) for row in rows]
