"""One batched ``model.generate`` call on left-padded prompts, shared by the hf generator backend
and the hf searcher policy.

Sampling (``temperature > 0``) is the plain softmax at that temperature (top-k and top-p off: what
PPO/GRPO assume of the behaviour policy); ``temperature == 0`` is greedy.  Stop strings end a row
early through a stopping criterion that decodes only the row's last few tokens.  Returns the new
tokens of each row, padding after a finished row included: callers cut them their own way.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["generate_new_tokens"]


def generate_new_tokens(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                        temperature: float, stops: Sequence[str], pad_id: int, eos_ids: Sequence[int],
                        skip_special: bool = True) -> list[list[int]]:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    stops = [s for s in stops if s]
    tail = max((len(s) for s in stops), default=0) + 4  # a stop string spans at most len(s) tokens

    class _StopStrings(StoppingCriteria):
        def __call__(self, ids: Any, scores: Any, **kwargs: Any) -> Any:
            new = ids[:, width:][:, -tail:]
            decoded = tokenizer.batch_decode(new, skip_special_tokens=skip_special, clean_up_tokenization_spaces=False)
            done = [any(s in t for s in stops) for t in decoded]
            return torch.tensor(done, dtype=torch.bool, device=ids.device)

    kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "pad_token_id": int(pad_id),
                              "eos_token_id": list(eos_ids)}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    if stops:
        kwargs["stopping_criteria"] = StoppingCriteriaList([_StopStrings()])
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
    return [list(row) for row in out[:, width:].tolist()]
