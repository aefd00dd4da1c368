"""Where the request sits in each prompt, token by token: what a token-level probe is taught.

The benchmark wraps each request itself (`assay.data.jailbreaks`), so it knows which characters of a
wrapped prompt are the request and which are the template. A token-level probe labels the request's
tokens with the prompt's label and the template's as benign (the same templates wrap benign requests
too), so it learns the intent rather than the wrapper. Rows that are not wrapped (plain, transformed,
or any row of a user's own file) are all request.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from assay.models.chat import Role

log = logging.getLogger(__name__)


def request_span(text: str, request: str) -> tuple[int, int] | None:
    """Character span of `request` inside the wrapped `text`, as `fill_template` may have put it
    (first letter lowered mid-sentence, final punctuation dropped); None where it is not there."""
    from assay.data.normalize import lower_first, strip_final_punct

    for cand in dict.fromkeys((request, lower_first(request), strip_final_punct(request),
                               lower_first(strip_final_punct(request)))):
        if cand and (k := text.find(cand)) >= 0:
            return k, k + len(cand)
    return None


def request_token_masks(ds: Any, tokenizer: Any) -> list[np.ndarray]:
    """Per example, a bool array over its user-text tokens (tokenised as `format_prompts` does):
    True on the request's tokens. Wrapped benchmark rows mark the request inside the template;
    every other row is all request, as is a wrapped row whose request is not found (counted in a log line)."""
    texts = [e.text for e in ds.examples]
    enc = tokenizer(texts, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    wrapped = [i for i, e in enumerate(ds.examples) if getattr(e, "family", "none") not in ("none", "")]
    out = [np.ones(len(ids), dtype=bool) for ids in enc["input_ids"]]
    if not wrapped:
        return out
    from assay.data.benchmark_requests import request_texts
    from assay.data.dataset import Dataset

    requests = request_texts(Dataset([ds.examples[i] for i in wrapped]))
    missed = 0
    for i in wrapped:
        span = request_span(texts[i], requests.get(ds.examples[i].behaviour_id, ""))
        if span is None:
            missed += 1
            continue
        a, b = span
        out[i] = np.array([s < b and t > a for s, t in enc["offset_mapping"][i]], dtype=bool)
    if missed:
        log.warning("%d of %d wrapped prompts: request not found in the text; all their tokens carry the label",
                    missed, len(wrapped))
    return out


def label_carrying_tokens(roles: torch.Tensor, request: np.ndarray) -> torch.Tensor:
    """Which stored tokens (roles `[t]`, BOS dropped) are the request: the user tokens `request`
    marks (it covers the user's text before any truncation). The template around the request and
    the chat template's own tokens are not."""
    user = (roles == Role.USER).nonzero().flatten()
    out = torch.zeros(len(roles), dtype=torch.bool)
    if len(user):
        out[user] = torch.as_tensor(request[: len(user)], dtype=torch.bool) if len(request) >= len(user) else True
    return out
