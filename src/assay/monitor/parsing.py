"""The API's JSON bodies: requests read and checked field by field into plain values (an APIError names
the first bad field), and verdicts shaped into results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from assay.models.chat import CHAT_ROLES
from assay.monitor.api_errors import APIError
from assay.monitor.batcher import MESSAGES, TEXT

if TYPE_CHECKING:
    from fastapi import Request

CATEGORY = "harmful_intent"
BODY_TIMEOUT_S = 30.0  # a request body arrives within this, or the request gets a 408

def json_type(value: Any) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array",
             dict: "object"}
    return names.get(type(value), type(value).__name__)


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, or an APIError that says what is wrong with it. Only a
    body declared `application/json`: a browser sends `text/plain` cross-origin without asking
    first, so accepting any type would let any web page a user opens drive the server. A body not
    received within `BODY_TIMEOUT_S` is a 408: a client trickling bytes must not hold a connection
    and a handler for good."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise APIError(415, f"send the body as JSON with `Content-Type: application/json` (got "
                       f"{media or 'no content type'!r})", code="unsupported_media_type")
    declared = request.headers.get("content-length", "")
    too_big = APIError(413, f"request body is over the {max_bytes}-byte limit; send fewer or shorter inputs "
                       "per request", code="body_too_large")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for chunk in request.stream():  # streamed: an oversized body is refused without holding it all
                body += chunk
                if len(body) > max_bytes:
                    raise too_big
    except TimeoutError:
        raise APIError(408, f"request body not received within {BODY_TIMEOUT_S:g} s; send it at once",
                       code="body_timeout") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(400, f"request body is not valid UTF-8 (bad byte at offset {err.start}); "
                       "send JSON encoded as UTF-8", code="invalid_encoding") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise APIError(400, f"request body is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                       "send a JSON object", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "request body nests JSON too deeply; send a flat object", code="invalid_json") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise APIError(400, f"request body holds a value JSON parsing refused ({err}); send a plain object",
                       code="invalid_json") from None
    if not isinstance(value, dict):
        raise APIError(400, f"request body must be a JSON object, got {json_type(value)}", code="invalid_request")
    return value


def parse_texts(body: dict[str, Any], key: str, max_items: int) -> list[str]:
    """`body[key]` as a non-empty list of non-empty strings (a single string is a list of one)."""
    if key not in body:
        raise APIError(400, f"missing `{key}`: send a string or an array of strings", code="missing_input", param=key)
    value = body[key]
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        raise APIError(400, f"`{key}` must be a string or an array of strings, got {json_type(value)}",
                       code="invalid_input", param=key)
    if not value:
        raise APIError(400, f"`{key}` is an empty array; send at least one string", code="empty_input", param=key)
    _check_count(len(value), key, max_items)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise APIError(400, f"`{key}[{i}]` must be a string, got {json_type(item)} (only text input is "
                           "supported; nested arrays and multi-modal parts are not)", code="invalid_input",
                           param=f"{key}[{i}]")
        if not item:
            raise APIError(400, f"`{key}[{i}]` is an empty string; send text to score", code="empty_input",
                           param=f"{key}[{i}]")
        _check_text(item, f"{key}[{i}]")
    return value


def _check_text(text: str, where: str) -> None:
    """A string JSON allows but no tokenizer encodes: a lone UTF-16 surrogate escape (`"\\ud800"`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise APIError(400, f"`{where}` holds a lone surrogate escape at character {err.start}, which is not text; "
                       "send valid Unicode", code="invalid_input", param=where) from None


def parse_conversation(value: Any, where: str) -> list[dict[str, str]]:
    """One chat: a non-empty array of {"role", "content"} objects, copied to plain dicts."""
    if not isinstance(value, list) or not value:
        got = "an empty array" if value == [] else json_type(value)
        raise APIError(400, f"`{where}` must be a non-empty array of {{\"role\", \"content\"}} objects, got {got}",
                       code="invalid_messages", param=where)
    out = []
    for j, message in enumerate(value):
        at = f"{where}[{j}]"
        if not isinstance(message, dict):
            raise APIError(400, f"`{at}` must be an object with `role` and `content`, got {json_type(message)}",
                           code="invalid_messages", param=at)
        extra = sorted(set(message) - {"role", "content"})
        if extra:  # dropping fields silently would score something other than what the caller sent
            raise APIError(400, f"`{at}` has unsupported fields {extra}; send only `role` and `content`",
                           code="invalid_messages", param=at)
        if message.get("role") not in CHAT_ROLES:
            raise APIError(400, f"`{at}.role` must be one of {list(CHAT_ROLES)}, got {message.get('role')!r}",
                           code="invalid_role", param=f"{at}.role")
        if not isinstance(message.get("content"), str):
            raise APIError(400, f"`{at}.content` must be a string, got {json_type(message.get('content'))}",
                           code="invalid_messages", param=f"{at}.content")
        _check_text(message["content"], f"{at}.content")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def parse_score_request(body: dict[str, Any], max_items: int) -> tuple[str, list[Any], str]:
    """(kind, payloads, name used in messages) from a /v1/score body holding exactly one input field."""
    given = [k for k in ("input", "messages", "conversations") if k in body]
    unknown = sorted(set(body) - {"input", "messages", "conversations", "model"})
    if unknown:
        raise APIError(400, f"unknown fields {unknown}; send one of `input`, `messages` or `conversations`",
                       code="invalid_request", param=unknown[0])
    if len(given) != 1:
        raise APIError(400, "send exactly one of `input` (texts), `messages` (one chat) or `conversations` "
                       f"(an array of chats); got {given or 'none'}", code="invalid_request")
    key = given[0]
    if key == "input":
        return TEXT, parse_texts(body, "input", max_items), "input"
    if key == "messages":
        return MESSAGES, [parse_conversation(body["messages"], "messages")], "messages"
    chats = body["conversations"]
    if not isinstance(chats, list) or not chats:
        raise APIError(400, "`conversations` must be a non-empty array of chats (each an array of messages)",
                       code="invalid_messages", param="conversations")
    _check_count(len(chats), "conversations", max_items)
    return MESSAGES, [parse_conversation(c, f"conversations[{i}]") for i, c in enumerate(chats)], "conversations"


def _check_count(n: int, key: str, max_items: int) -> None:
    if n > max_items:
        raise APIError(413, f"`{key}` has {n} items, over this server's limit of {max_items} per request; "
                       "split it into several requests", code="too_many_items", param=key)


def length_limit(monitor: Any, kind: str) -> int:
    """The longest item of `kind` a monitor takes: its server's limit; for a conversation also its
    probe's (a text over that is cut, as its calibration prompts were; a conversation is refused)."""
    conversation = monitor.token_limit if kind == MESSAGES else None
    return min(monitor.max_tokens, conversation) if conversation else monitor.max_tokens


def check_lengths(counts: Sequence[int], key: str, limit: int, single: bool = False,
                  request_limit: int | None = None) -> None:
    for i, n in enumerate(counts):
        if n > limit:
            at = key if single else f"{key}[{i}]"
            raise APIError(413, f"`{at}` (item {i}) is {n} tokens long, over this monitor's limit of {limit} "
                           "tokens; shorten or split it", code="too_many_tokens", param=at)
    if request_limit is not None and sum(counts) > request_limit:
        raise APIError(413, f"`{key}` totals {sum(counts)} tokens, over this server's limit of {request_limit} per "
                       "request; send fewer or shorter items per request", code="too_many_tokens", param=key)


# -- responses ------------------------------------------------------------------------------------
def moderation_result(verdict: Any, threshold: str) -> dict[str, Any]:
    flagged = bool(verdict.flagged[threshold])
    return {
        "flagged": flagged,
        "categories": {CATEGORY: flagged},
        "category_scores": {CATEGORY: float(verdict.probability)},
        "category_applied_input_types": {CATEGORY: ["text"]},
        "assay": {"score": float(verdict.score), "threshold": threshold, "n_tokens": int(verdict.n_tokens),
                  "flagged": {k: bool(v) for k, v in verdict.flagged.items()}},
    }


def score_result(verdict: Any) -> dict[str, Any]:
    out = {"score": float(verdict.score), "probability": float(verdict.probability),
           "flagged": {k: bool(v) for k, v in verdict.flagged.items()}, "n_tokens": int(verdict.n_tokens)}
    if verdict.token_scores is not None:
        out["token_scores"] = [float(s) for s in verdict.token_scores]
        out["tokens"] = verdict.tokens
    return out


# -- chat completion requests ---------------------------------------------------------------------
CHAT_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
               "stream", "stream_options", "n", "user"}
MAX_STOP = 4  # OpenAI's limit on stop strings


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN != NaN


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(key)
    if value is None:  # OpenAI accepts null for "use the default"
        return default
    if not (_is_number(value) and (value > lo if lo_open else value >= lo) and value <= hi):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise APIError(400, f"`{key}` must be a number in {bound}, got {value!r}", code=f"invalid_{key}", param=key)
    return float(value)


def _max_tokens(body: dict[str, Any], cap: int) -> int:
    given = [k for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
    if len(given) == 2 and body["max_tokens"] != body["max_completion_tokens"]:
        raise APIError(400, "`max_tokens` and `max_completion_tokens` differ; send one of them",
                       code="invalid_max_tokens", param="max_tokens")
    if not given:
        return cap
    key, value = given[0], body[given[0]]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
        raise APIError(400, f"`{key}` must be an integer from 1 to this server's cap of {cap}, got {value!r}",
                       code="invalid_max_tokens", param=key)
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or len(stops) > MAX_STOP
            or not all(isinstance(s, str) and s for s in stops)):
        raise APIError(400, f"`stop` must be a non-empty string or an array of at most {MAX_STOP} non-empty "
                       f"strings, got {value!r:.80}", code="invalid_stop", param="stop")
    return tuple(stops)


def parse_chat_request(body: dict[str, Any], max_new_tokens: int) -> ChatRequest:
    """A /v1/chat/completions body, checked field by field; an APIError names the first bad one."""
    unknown = sorted(set(body) - CHAT_FIELDS)
    if unknown:  # ignoring e.g. `tools` or `logprobs` would answer something other than what was asked
        raise APIError(400, f"unsupported fields {unknown}; this server reads {sorted(CHAT_FIELDS)}",
                       code="unsupported_parameter", param=unknown[0])
    for key in ("model", "user"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise APIError(400, f"`{key}` must be a string, got {json_type(body[key])}", code=f"invalid_{key}",
                           param=key)
    if "messages" not in body:
        raise APIError(400, "missing `messages`: send an array of {\"role\", \"content\"} objects",
                       code="missing_messages", param="messages")
    if body.get("n") not in (None, 1):
        raise APIError(400, f"`n` must be 1 (one choice per request), got {body['n']!r}", code="unsupported_n",
                       param="n")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, f"`seed` must be an integer, got {seed!r}", code="invalid_seed", param="seed")
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise APIError(400, f"`stream` must be a boolean, got {stream!r}", code="invalid_stream", param="stream")
    return ChatRequest(messages=parse_conversation(body["messages"], "messages"),
                       max_tokens=_max_tokens(body, max_new_tokens),
                       temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                       top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
                       stop=_stop(body.get("stop")), seed=seed, stream=bool(stream),
                       include_usage=_include_usage(body.get("stream_options"), bool(stream)))


def _include_usage(options: Any, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise APIError(400, "`stream_options` is only allowed with `stream: true`", code="invalid_stream_options",
                       param="stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"} or \
            not isinstance(options.get("include_usage", False), bool):
        raise APIError(400, "`stream_options` must be {\"include_usage\": true|false}", code="invalid_stream_options",
                       param="stream_options")
    return bool(options.get("include_usage", False))

