#!/usr/bin/env python3
"""chat.py - a console chat client for the OpenAI Chat Completions API.

One file, standard library only, Python 3.6+ or PyPy 3.  Works with
api.openai.com and any OpenAI-compatible server (Ollama, vLLM, llama.cpp,
LM Studio, OpenRouter, Groq, DeepSeek, Azure-style gateways).  From the
shell, `chat.py --help` is the summary and `chat.py --manual` the manual.

From Python (every option after the first arguments is keyword-only):

    import chat
    client = chat.Client("http://localhost:8080/v1")       # api_key=... for others
    conversation = chat.Chat(client, "gemma", system="Answer in one line.")
    completion = conversation.send("What is SSE?")         # the chat.completion dict
    print(completion["choices"][0]["message"]["content"])

    class Show(chat.Printer):                              # the reply as it streams
        def chunk(self, chunk):
            for choice in chunk["choices"]:
                print((choice.get("delta") or {}).get("content") or "", end="", flush=True)
        def finish(self, completion):
            print()
    conversation.send("And WebSockets?", Show())
    # conversation.messages is the history; conversation.body() the request
    # body that --save writes.

The reference client is the first part of this file, up to and including
Chat; it uses nothing after it, so the file cut there still streams (and
runs the example above).  The application (the keep-alive connection
layer, terminal, files, tools, MCP, console, settings, main) follows.

One turn, and where each step lives (the reading path: the definitions
named here are what a reader follows; each hardening step is a named piece
the path calls, listed after it).

    Chat.send(text)             the user message joins a copy of the history
      Chat._exchange            one turn; the history changes only if it succeeds
        ChatAccumulator         each chunk checked for shape, then merged
          merge_delta           into a message per choice
        Chat._request           the request body sent, the reply read
          build_payload         {"model", "messages", "stream": true, ...}
          Client.stream         POST {base}/chat/completions, the answer read
            Client.request      the request sent; resent where that may work
            Client.reads        the body's bytes as they come
            iter_chunks         bytes -> chunk dicts, until [DONE]
              LineDecoder       bytes -> text lines (CRLF, LF or CR)
              SSEDecoder        lines -> events (event, data, id, retry)
              parse_event       event -> chunk dict; an error event raises
          Printer.chunk         each chunk shown as it arrives
        Chat._record            the reply joins the history
          history_message       the reply as the API takes it back

    What hardens it, each a piece of its own that the path calls:
      fit_context               the oldest exchanges dropped to fit the context
      conform_chunk             the typed boundary: a field of the wrong type
                                is left out, and said (Chat._report)
      Client._failure           a failed request -> the ChatError that says
                                what to do; retry_delay, how long to wait
      StaleConnection           a kept connection found closed: sent again
      MAX_BODY, MAX_LINE_BYTES  the bounds on an answer and on one line
      Redactor                  a key the server echoes, blanked from what
                                is kept
      Chat._recover             a refusal a change can fix, sent again changed

    An error (an HTTP status, an error event, a broken stream): the history
      is as it was, but for text already shown, kept as a cut-short reply.
    A cut-off (finish_reason "length", or Ctrl-C): the reply is kept and
      Chat.cut_short is set; Chat.continue_reply() asks for the rest.
    A refusal a change can fix (max_tokens where max_completion_tokens is
      wanted; a context too long): Chat._recover changes the request and it
      is sent once more, once per kind of fix.
"""
import base64
import io
import ipaddress
import json
import math
import random
import re
import shlex
import sys
import time
import urllib.parse
from collections import namedtuple
from urllib.parse import urlsplit, urlunsplit
# The network modules (http.client, socket, ssl, urllib.request, email) are
# imported by _import_network(), before the first request: they take about
# 35 ms, which --help, --version, --manual, --list, --show, --reply and a
# usage error never need.  The application's own imports follow the
# reference client, where the application starts.

__version__ = "0.1.0"
__all__ = [   # the reference client's; the application adds its own
    "ChatError", "UsageError", "APIError", "AuthenticationError", "RateLimitError",
    "APIConnectionError", "APITimeoutError", "StreamError", "IncompleteStreamError",
    "OutputError", "LineDecoder", "SSEDecoder", "ServerSentEvent", "iter_chunks",
    "ChatAccumulator", "merge_delta", "check_params", "fit_context", "Client", "Chat",
    "Printer", "StaleConnection", "may_carry_credentials",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_TIMEOUT = 60.0          # seconds to connect, and to wait for each next byte
DEFAULT_RETRIES = 2
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}   # worth asking again later
MAX_RETRY_WAIT = 60.0           # seconds, whatever Retry-After asks for
READ_SIZE = 65536               # bytes asked of the socket per read
MAX_LINE_BYTES = 16 * 2**20     # one SSE line (or one event's data) longer than this is an error
MAX_ERROR_BODY = 2**20          # bytes of an error response worth reading
MAX_BODY = 64 * 2**20           # a whole answer (JSON or stream) or file larger than this is an error
MAX_LIST_ITEMS = 1024           # tool calls (or other indexed items) in one reply
MAX_NESTING = 64                # levels of lists and objects a streamed field may nest
SHOWN_UPLOAD = 2**20            # a request body this large says how much of it is sent
MAX_TIMEOUT = 86400             # seconds: the longest --timeout or --tool-timeout
CHARS_PER_TOKEN = 4             # the estimate for text the server has not counted yet
TOKENS_PER_MESSAGE = 4          # what each message costs beyond its text
MAX_SHOWN_NAME = 100            # characters of a name the consent question shows
MIN_SECRET = 8                  # a run of a secret this long is never shown
LIST_LIMIT = 100                # conversations --list shows at the most
PASTE_WAIT = 0.02               # seconds: lines closer together than this were pasted
COMMAND_WAIT = 0.25             # and after a /command: a slow paste is not one
MAX_IMAGE_BYTES = 20 * 2**20    # the API's own limit for one image
MAX_AUDIO_BYTES = 20 * 2**20    # and for one recording
MAX_FILE_BYTES = 32 * 2**20     # and for one PDF
MAX_CONFIG_BYTES = 2**20        # a config file larger than this is refused
KEY_COMMAND_TIMEOUT = 30.0      # seconds api_key_command may take
MAX_KEY_OUTPUT = 2**16          # bytes of api_key_command's output read at the most
MAX_TOOL_OUTPUT = 2**20         # bytes of a tool command's output sent back at the most
DEFAULT_TOOL_TIMEOUT = 60.0     # seconds a --tool-exec command may run
DEFAULT_TOOL_ROUNDS = 8         # rounds of tool calls and results in one turn
DEFAULT_VOICE = "alloy"         # the voice a spoken reply is asked in
CONTINUE_PROMPT = ("Continue your last reply exactly where it stopped, without repeating "
                   "anything or adding an introduction.")
_IMAGE_MAGIC = [(b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
                (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif")]


# ---------------------------------------------------------------------------
# Errors: one class per failure the user can act on.
# Lifting: needs nothing.
# ---------------------------------------------------------------------------

class ChatError(Exception):
    """Base class of every error chat.py reports; str() is the one line shown.
    fix names the setting that would mend it ("timeout", "base_url", "key",
    "no_key", "withheld"), for an application to say how it is set."""
    exit_code = 1

    def __init__(self, message, *, fix=None):
        super().__init__(message)
        self.fix = fix


class UsageError(ChatError):
    """The command line or the settings are wrong; nothing was sent."""
    exit_code = 2


class APIError(ChatError):
    """The server answered with an error (an HTTP status or an error event)."""

    def __init__(self, message, status=None, type=None, code=None, body=None, *,
                 headers=None, found=None, fix=None):
        super().__init__(message, fix=fix)
        self.status, self.type, self.code, self.body = status, type, code, body
        self.headers = headers or {}     # the answer's headers, where there was one
        self.found = found or message    # what the server said, without advice


class AuthenticationError(APIError):
    """The server refused the API key (401) or its permissions (403)."""


class RateLimitError(APIError):
    """The server said too many requests or no quota left (429)."""


class APIConnectionError(ChatError):
    """No HTTP answer: refused, unresolvable, TLS failure, reset."""


class APITimeoutError(APIConnectionError):
    """The server did not send anything for the timeout's seconds."""


class StreamError(ChatError):
    """The response stream was malformed or ended too early."""


class IncompleteStreamError(StreamError):
    """The stream closed before [DONE]; fine if every choice had finished."""


class OutputError(ChatError):
    """Writing failed: stdout (a full disk, a closed descriptor) or a saved file."""


class StdoutError(OutputError):
    """stdout cannot be written to; nothing more should be tried there."""


class FileTooLarge(OutputError):
    """A file would be larger than chat.py reads back; it was left as it was."""


class StdoutClosed(StdoutError):
    """The reader of stdout went away (a pipe into `head` closed): its
    choice, not a failure, so nothing is said and the exit status is 0."""
    exit_code = 0


# ---------------------------------------------------------------------------
# Server-Sent Events: bytes -> lines -> events.  Pure, no I/O.
# https://html.spec.whatwg.org/multipage/server-sent-events.html
# Lifting: needs StreamError and the MAX_LINE_BYTES constant.
# ---------------------------------------------------------------------------

class LineDecoder:
    """Split a byte stream into text lines at CRLF, LF or a lone CR.

    Bytes become text one complete line at a time, so a UTF-8 character split
    across network reads survives.  A leading byte order mark is dropped.  An
    unfinished line is kept as the pieces that arrived and joined once, when
    its line ending comes, so a long line costs what its bytes cost.
    """

    def __init__(self, max_line=MAX_LINE_BYTES):
        self.max_line = max_line
        self._pieces = []        # bytes of the unfinished last line
        self._size = 0           # their total length
        self._skip_lf = False    # the last byte was a CR: an LF next ends the same line
        self._started = False    # a first line was returned (the BOM rule)

    def feed(self, data):
        """Return the lines completed by data, without their line endings."""
        if self._skip_lf and data:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        end = len(data)                                    # just past the last line ending:
        if data[-1:] not in (b"\n", b"\r"):                # usually the last byte
            end = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
            if end == 0:                                   # no line ends here
                if data:
                    self._keep(data)
                return []
        complete = data[:end]   # (data itself, when it ends with a line ending)
        if self._pieces:
            self._pieces.append(complete)
            complete = b"".join(self._pieces)
            self._pieces, self._size = [], 0
        if end < len(data):
            self._keep(data[end:])
        else:   # a CR as the very last byte: the LF of its CRLF may open the next read
            self._skip_lf = data[-1] == 13
        try:
            # Decoding whole lines at once is safe: CR and LF never occur inside
            # a UTF-8 multi-byte character.
            text = complete.decode("utf-8")
        except UnicodeDecodeError:
            raise StreamError("the server sent text that is not UTF-8") from None
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        lines.pop()   # the empty string after the last line ending
        if not self._started:
            self._started = True
            if lines[0][:1] == "\ufeff":
                lines[0] = lines[0][1:]
        return lines

    def _keep(self, data):
        """Keep the bytes of an unfinished line, up to max_line of them."""
        self._pieces.append(data)
        self._size += len(data)
        if self._size > self.max_line:
            raise StreamError("the server sent a line longer than %d MiB; giving up"
                              % (self.max_line >> 20))
ServerSentEvent = namedtuple("ServerSentEvent", "event data id retry")
ServerSentEvent.__doc__ = "One dispatched event: type, data, last event ID, retry (ms or None)."
_tuple_new = tuple.__new__   # builds a ServerSentEvent without a Python-level call


class SSEDecoder:
    """Turn lines into ServerSentEvents by the WHATWG "interpreting an event
    stream" rules.  Feed every line, empty ones included, to decode().
    max_event bounds one event's data lines (each counted with its 64 bytes
    of keeping), so an event that never ends cannot take all memory."""

    def __init__(self, max_event=MAX_LINE_BYTES):
        self.max_event = max_event
        self._event = ""
        self._data = []
        self._size = 0           # what this event's data lines cost so far
        self._last_id = ""       # persists across events, as the spec says
        self._retry = None

    def decode(self, line):
        """Take one line; return the event it completes, or None."""
        if not line:                             # dispatch the event
            data, event = self._data, self._event or "message"
            self._data, self._event, self._size = [], "", 0
            if not data:                         # no data: dropped, type and all
                return None
            return _tuple_new(ServerSentEvent, (event, "\n".join(data), self._last_id,
                                                self._retry))
        if line[0] == ":":                       # a comment, e.g. a keep-alive
            return None
        field, _, value = line.partition(":")    # no colon: the value is ""
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._size += len(value) + 64
            if self._size > self.max_event:
                raise StreamError("the server sent an event over %d MiB; giving up"
                                  % (self.max_event >> 20))
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:                # the spec ignores such an id
                self._last_id = value
        elif field == "retry":
            # ASCII digits only; a length check first, as int() of a huge
            # string costs time that grows with its square.
            if value and len(value) <= 10 and not value.strip("0123456789"):
                self._retry = int(value)
        return None                              # any other field is ignored


# ---------------------------------------------------------------------------
# The Chat Completions protocol: the request body, the chunks of a reply
# merged into a message, errors in words, the history.  Pure, no I/O.
# Lifting: needs the errors above and the SSE decoders.
# ---------------------------------------------------------------------------

def build_payload(model, messages, stream=True, params=None):
    """Return the request body for POST /chat/completions."""
    payload = {"model": model, "messages": messages}
    payload.update(params or {})
    payload["stream"] = stream
    return payload


def _is_number(value, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def _is_whole(value, low=None, high=None):
    return isinstance(value, int) and _is_number(value, low, high)


def _is_tool_choice(value):
    return value in ("auto", "none", "required") or isinstance(value, dict)


def _is_function_list(value, wrapped):
    """A list of tool definitions, each with a name: functions, or (wrapped,
    as "tools" has them) custom tools, which take free text."""
    def named(item):
        if not isinstance(item, dict):
            return False
        inner = item if not wrapped else item.get(
            "custom" if wrapped and item.get("type") == "custom" else "function")
        return isinstance(inner, dict) and isinstance(inner.get("name"), str)
    return isinstance(value, list) and all(named(item) for item in value)
# Body field: (what it must be, the test).  Fields not listed here are sent
# as they are.
PARAM_RULES = {
    "temperature": ("a number from 0 to 2", lambda v: _is_number(v, 0, 2)),
    "top_p": ("a number from 0 to 1", lambda v: _is_number(v, 0, 1)),
    "n": ("a whole number, 1 or more", lambda v: _is_whole(v, 1)),
    "max_tokens": ("a whole number, 1 or more", lambda v: _is_whole(v, 1)),
    "max_completion_tokens": ("a whole number, 1 or more", lambda v: _is_whole(v, 1)),
    "stop": ("a string, or at most 4 of them",
             lambda v: isinstance(v, str) or isinstance(v, list) and len(v) <= 4
             and all(isinstance(s, str) for s in v)),
    "presence_penalty": ("a number from -2 to 2", lambda v: _is_number(v, -2, 2)),
    "frequency_penalty": ("a number from -2 to 2", lambda v: _is_number(v, -2, 2)),
    "logit_bias": ("token IDs each mapped to a number from -100 to 100",
                   lambda v: isinstance(v, dict) and all(
                       k.isdigit() and _is_number(b, -100, 100) for k, b in v.items())),
    "logprobs": ("true or false", lambda v: isinstance(v, bool)),
    "top_logprobs": ("a whole number from 0 to 20", lambda v: _is_whole(v, 0, 20)),
    "seed": ("a whole number", _is_whole),
    "user": ("a string", lambda v: isinstance(v, str)),
    "service_tier": ("a string", lambda v: isinstance(v, str)),
    "response_format": ('an object such as {"type": "json_object"}',
                        lambda v: isinstance(v, dict) and isinstance(v.get("type"), str)),
    "tools": ("a list of tool definitions, each with a name",
              lambda v: _is_function_list(v, wrapped=True)),
    "tool_choice": ("auto, none, required or a tool", _is_tool_choice),
    "parallel_tool_calls": ("true or false", lambda v: isinstance(v, bool)),
    "functions": ("a list of function definitions, each with a name",
                  lambda v: _is_function_list(v, wrapped=False)),
    "function_call": ("auto, none or a function",
                      lambda v: v in ("auto", "none") or isinstance(v, dict)),
    "stream_options": ("an object", lambda v: isinstance(v, dict)),
    "reasoning_effort": ("a level such as low, medium or high",
                         lambda v: isinstance(v, str) and v.isalpha() and v.islower()),
    "modalities": ('a list such as ["text", "audio"]',
                   lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v)),
    "audio": ("an object with a voice and a format",
              lambda v: isinstance(v, dict) and isinstance(v.get("voice"), str)
              and isinstance(v.get("format"), str)),
}


def check_params(params, names=None):
    """Raise UsageError if a field is off, naming it and what it takes: as
    names gives it (field -> how the user set it, a flag say), else by its
    name as sent."""
    def named(key):
        return (names or {}).get(key) or json.dumps(key)
    for key, value in params.items():
        what, test = PARAM_RULES.get(key, (None, None))
        if test is not None and not test(value):
            if isinstance(value, float) and value.is_integer():
                value = int(value)   # the user typed 5, not 5.0
            raise UsageError("%s must be %s, not %s" % (named(key), what, json.dumps(value)))
    if "top_logprobs" in params and params.get("logprobs") is not True:
        raise UsageError("%s needs %s" % (named("top_logprobs"), named("logprobs") if names
                                          else '"logprobs": true'))


def parse_json(text):
    """json.loads, where nesting too deep to parse is a ValueError like any
    other bad JSON rather than a RecursionError (a hostile server or file
    can nest 200,000 deep)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise TooDeep("nested too deeply") from None


class TooDeep(ValueError):
    """JSON nested deeper than Python's recursion allows."""


def parse_value(text):
    """A value the user typed: JSON when it parses, else the text itself."""
    try:
        return parse_json(text)
    except TooDeep:
        raise UsageError("that value is JSON nested too deeply to send") from None
    except ValueError:
        return text


def user_content(text, parts=()):
    """A user message's content: the text, with text parts (files) after it;
    or, where there are other parts (images, audio, PDFs), a list of parts."""
    texts = [p["text"] for p in parts if p.get("type") == "text"]
    others = [p for p in parts if p.get("type") != "text"]
    text = "\n\n".join([text] + texts) if text else "\n\n".join(texts)
    if not others:
        return text
    return [{"type": "text", "text": text}] + others


# The typed boundary: the shape of every field chat.py reads from a server.
# A shape is a type, a tuple of types, an object (a dict: key -> shape), a
# list of one shape ([shape]) or a function that converts a value (or
# returns _WRONG).  A field the table names and the value does not fit is
# left out, and said so; what the table does not name passes as it came,
# and keeps the JSON type it first came with (merge_delta): a later value of
# another type is left out the same way.  Null is absent, wherever it is.
# Past conform(), nothing meets a type it did not expect.

_WRONG = object()


def _arguments(value):
    """A tool call's arguments: text, as the API sends them; some servers send
    the object itself, which becomes its JSON text."""
    if type(value) is str:
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return _WRONG


_USAGE = {"prompt_tokens": int, "completion_tokens": int, "total_tokens": int,
          "prompt_tokens_details": {"cached_tokens": int, "audio_tokens": int},
          "completion_tokens_details": {
              "reasoning_tokens": int, "audio_tokens": int,
              "accepted_prediction_tokens": int, "rejected_prediction_tokens": int}}
_FUNCTION = {"name": str, "arguments": _arguments}
_TOKEN = {"token": str, "logprob": (int, float), "bytes": [int]}
_LOGPROBS = {"content": [dict(_TOKEN, top_logprobs=[_TOKEN])],
             "refusal": [dict(_TOKEN, top_logprobs=[_TOKEN])]}
_MESSAGE = {
    "role": str, "content": str, "refusal": str, "reasoning_content": str, "reasoning": str,
    "reasoning_details": [dict], "function_call": _FUNCTION,
    "tool_calls": [{"index": int, "id": str, "type": str, "function": _FUNCTION,
                    "custom": {"name": str, "input": str}}],
    "audio": {"id": str, "data": str, "transcript": str, "expires_at": (int, float)},
    "annotations": [{"type": str, "url_citation": {
        "url": str, "title": str, "start_index": int, "end_index": int}}]}
_CHOICE = {"index": int, "finish_reason": str, "delta": _MESSAGE, "message": _MESSAGE,
           "logprobs": _LOGPROBS}
CHUNK_SHAPE = {"id": str, "object": str, "created": (int, float), "model": str,
               "system_fingerprint": str, "service_tier": str, "usage": _USAGE,
               "choices": [_CHOICE]}
MODELS_SHAPE = {"data": [{"id": str}]}


def _history_content(value):
    """A kept message's content: text, or content parts whose text is text."""
    if type(value) is str:
        return value
    if type(value) is list and all(
            type(part) is dict and type(part.get("type")) is str
            and (part["type"] != "text" or type(part.get("text")) is str) for part in value):
        return value
    return _WRONG


# A message of a kept or loaded conversation: what chat.py reads of it.
HISTORY_SHAPE = {"role": str, "content": _history_content, "name": str, "refusal": str,
                 "tool_call_id": str, "function_call": _FUNCTION,
                 "tool_calls": [{"id": str, "type": str, "function": _FUNCTION}]}


def conform(value, shape, dropped, path=""):
    """value made to fit shape (see the table above), in place where it can
    be; the path of each field left out is appended to dropped.  Returns
    _WRONG if value itself does not fit."""
    kind = type(shape)
    if kind is dict:
        return _conform_object(value, shape, dropped, path) if type(value) is dict else _WRONG
    if kind is list:
        return _conform_list(value, shape[0], dropped, path) if type(value) is list else _WRONG
    if kind is tuple:
        return value if isinstance(value, shape) and type(value) is not bool else _WRONG
    if kind is type:
        return value if type(value) is shape else _WRONG
    return shape(value)


def _conform_object(value, shape, dropped, path):
    if shape is _MESSAGE and type(value.get("content")) is list:
        _content_parts(value)
    wrong = None
    for key, item in value.items():
        inner = shape.get(key)
        if inner is None or item is None or type(item) is inner:
            continue   # the usual case: not named, or of the named type
        fitted = conform(item, inner, dropped, path + "." + key)
        if fitted is _WRONG and key == "choices":   # without them, nothing to read
            return _WRONG
        if fitted is _WRONG:
            dropped.append("%s.%s (%s)" % (path, key, type(item).__name__))
            wrong = (wrong or []) + [key]
        elif fitted is not item:
            value[key] = fitted
    for key in wrong or ():   # (not while the dict is being iterated)
        del value[key]
    return value


def _conform_list(value, inner, dropped, path):
    kept = []
    for item in value:
        fitted = item if type(item) is inner else conform(item, inner, dropped, path + "[]")
        if fitted is _WRONG:
            dropped.append("%s[] (%s)" % (path, type(item).__name__))
        else:
            kept.append(fitted)
    return kept if len(kept) != len(value) else value


def conform_chunk(chunk, dropped):
    """conform(chunk, CHUNK_SHAPE), with the chunk nearly every stream is
    made of (one choice, a delta of content alone, nothing else) told in a
    few tests, as this runs for every chunk.  The top-level fields (id,
    model...) are read once a reply, and conformed there (ChatAccumulator)."""
    choices = chunk.get("choices")
    if type(choices) is list and len(choices) == 1:
        choice = choices[0]
        if (type(choice) is dict and type(choice.get("index", 0)) is int
                and choice.get("finish_reason") is None and choice.get("logprobs") is None):
            delta = choice.get("delta")
            if (type(delta) is dict and len(delta) == 1 and type(delta.get("content")) is str
                    and chunk.get("usage") is None):
                return chunk
    return conform(chunk, CHUNK_SHAPE, dropped)


def _content_parts(message):
    """Content sent as a list of parts (Mistral): its text parts become the
    content, its thinking parts (magistral) the reasoning."""
    text, thinking = [], []
    for part in message["content"]:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            text.append(part["text"])
        elif part.get("type") == "thinking":
            inner = part.get("thinking")
            inner = inner if isinstance(inner, list) else [{"type": "text", "text": inner}]
            thinking += [p["text"] for p in inner
                         if isinstance(p, dict) and isinstance(p.get("text"), str)]
    message["content"] = "".join(text)
    if thinking:
        before = message.get("reasoning")
        message["reasoning"] = (before if isinstance(before, str) else "") + "".join(thinking)


_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def mend_surrogates(text, keep_halves=False):
    """text with each surrogate pair (JSON's way to escape an emoji) made the
    character it stands for, and each lone surrogate U+FFFD, so that it can
    be encoded; keep_halves: a high surrogate at the very end and a low one
    at the very start are kept, as halves of a pair cut between pieces."""
    if _SURROGATE.search(text) is None:
        return text
    head = tail = ""
    if keep_halves and "\ud800" <= text[-1] <= "\udbff":
        text, tail = text[:-1], text[-1]
    if keep_halves and text and "\udc00" <= text[0] <= "\udfff":
        head, text = text[0], text[1:]
    return head + text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace") + tail


def _mend_all(value, keep_halves=True):
    """value (parsed JSON) with every string mended by mend_surrogates."""
    if isinstance(value, str):
        return mend_surrogates(value, keep_halves)
    if isinstance(value, dict):
        return {mend_surrogates(k): _mend_all(v, keep_halves) for k, v in value.items()}
    if isinstance(value, list):
        return [_mend_all(v, keep_halves) for v in value]
    return value


def decode_base64_pieces(data):
    """The bytes of base64 text that was sent in pieces each encoded on its
    own (streamed audio): each padded piece is decoded by itself."""
    return b"".join(base64.b64decode(piece) for piece in re.findall(r"[^=]+=*", data))


def iter_chunks(reads):
    """Yield the chunk dicts of an event stream given as byte strings, until [DONE].

    Raises APIError for an error the server sends inside the stream,
    StreamError for a stream that is not one, and IncompleteStreamError
    (after the last chunk) when the bytes end before [DONE].  The chunks are
    JSON objects, not yet checked for shape: ChatAccumulator.add() does that.
    """
    decoder, events = LineDecoder(), SSEDecoder()
    first, last = None, ()   # the first line and the last lines: to explain an ending
    for data in reads:
        lines = decoder.feed(data)
        if lines:
            first, last = lines[0] if first is None else first, lines
        for line in lines:
            event = events.decode(line)
            if event is None:
                continue
            if event.data == "[DONE]":
                return
            yield parse_event(event)
    raise _early_end(first, last)


def _early_end(first, last):
    """The error for an event stream whose bytes ended before [DONE], given
    its first line and its last lines; raises an error the server sent."""
    for line in reversed(last):
        if line.startswith("error:"):
            # llama.cpp's server reports a failure as an "error:" field, which
            # the SSE rules ignore; it is the best explanation of the ending.
            parse_event(ServerSentEvent("error", line[6:].strip(), "", None))
    if first and first.partition(":")[0] not in ("", "data", "event", "id", "retry"):
        return StreamError("the answer is not an event stream: %s" % _first_line(first))
    return IncompleteStreamError("the server closed the stream before the reply was complete")


_JSON = json.JSONDecoder()


def parse_event(event):
    """Return the chunk dict an event carries; raise APIError if it carries an error."""
    data = event.data
    try:
        # The usual data, one JSON object and nothing around it, goes to
        # raw_decode: json.loads' own wrapping costs as much as the parse.
        # Anything else goes to json.loads, errors and all.
        chunk, end = _JSON.raw_decode(data) if data[:1] == "{" else (None, -1)
        if end != len(data):
            chunk = json.loads(data)   # (not parse_json(): the hot path; see except)
    except (ValueError, RecursionError):   # RecursionError: nested 200,000 deep
        chunk = None
    if type(chunk) is dict and "error" not in chunk and event.event == "message":
        if "\\u" in data and _ESCAPED_SURROGATE.search(data):
            chunk = _mend_all(chunk)   # an emoji escaped, maybe cut in two
        return chunk   # the usual case, decided in one test
    if event.event == "error" or isinstance(chunk, dict) and chunk.get("error"):
        message, type_, code = error_message(event.data if chunk is None else chunk)
        raise APIError("the server reported an error: " + message,
                       None, type_, code)
    if not isinstance(chunk, dict):
        raise StreamError("the server sent data that is not a JSON object: %r"
                          % event.data[:200])
    return chunk


def completion_to_chunk(completion):
    """Recast a whole chat.completion as one chunk, so one path shows both."""
    chunk = {k: v for k, v in completion.items() if k != "choices"}
    try:
        chunk["choices"] = [
            {"index": c.get("index", 0), "delta": c.get("message") or {},
             "finish_reason": c.get("finish_reason"), "logprobs": c.get("logprobs")}
            for c in completion.get("choices") or ()]
    except (AttributeError, TypeError):
        raise StreamError("the server's answer has choices this client cannot read: %s"
                          % _one_line(json.dumps(completion))[:200]) from None
    return chunk


class _TextBuilder(list):
    """A string built from many small pieces: a list of the latest pieces,
    the rest already joined into one string (head), so a long reply costs
    about its own size rather than 50 bytes a token."""

    __slots__ = ("head",)

    def __init__(self, first=""):
        super().__init__()
        self.head = first

    def compact(self):
        """Join the waiting pieces onto the head."""
        if len(self):
            # With the only reference in a local, CPython grows the string in
            # place instead of copying it: the text is held once, not twice.
            head, self.head = self.head, ""
            head += "".join(self)
            self.head = head
            self.clear()

    def add(self, piece):
        """Append a piece, compacting every 256 of them."""
        self.append(piece)
        if len(self) >= 256:
            self.compact()

    def __bool__(self):
        return bool(self.head) or len(self) > 0

    def __str__(self):
        self.compact()
        return self.head


# Strings that name a thing rather than carry its text: set, never joined.
_LABELS = frozenset(("role", "id", "type", "format", "object", "model"))


class _Indexed(dict):
    """A list streamed as objects that carry an "index" (tool_calls): index ->
    the object merged so far, plus the ids seen, so that a fragment without an
    index (some servers leave it out) finds its call in constant time."""

    __slots__ = ("ids", "last")

    def __init__(self):
        super().__init__()
        self.ids, self.last = {}, None

    def merge(self, items, dropped, path):
        """Merge a list's items by index; an item that is not an object, or
        an index that is not a whole number, is left out (see merge_delta)."""
        for item in items:
            if type(item) is not dict:
                dropped.append("%s[] (%s)" % (path, type(item).__name__))
                continue
            index = item.get("index")
            if index is not None and type(index) is not int:   # (bool is not an index)
                dropped.append("%s[].index (%s)" % (path, type(index).__name__))
                item = {k: v for k, v in item.items() if k != "index"}
                index = None
            if index is None:   # a new id is a new item; no id continues the last one
                new_id = item.get("id")
                index = self.ids.get(new_id) if new_id else self.last
                if index is None:
                    index = max(self) + 1 if self else 0
            into = self.get(index)
            if into is None:
                if len(self) >= MAX_LIST_ITEMS:
                    raise StreamError("the server sent more than %d items in one list"
                                      % MAX_LIST_ITEMS)
                into = self[index] = {}
            merge_delta(into, item, dropped, path + "[]")
            if type(item.get("id")) is str:
                self.ids[item["id"]] = index
            if self.last is None or index > self.last:
                self.last = index


# The JSON type of a merged value: a field keeps the type it first came with.
_JSON_TYPES = {str: "string", _TextBuilder: "string", dict: "object", list: "array",
               _Indexed: "array", int: "number", float: "number", bool: "boolean"}


def _nested_past(value, limit):
    """Whether value nests lists and objects more than limit levels deep
    (found without recursion: a server's JSON may nest 900 levels)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((inner, depth + 1) for inner in (
                item.values() if isinstance(item, dict) else item))
    return False


def merge_delta(into, delta, dropped, path=""):
    """Merge one streamed delta dict into what arrived before it, by the API's
    shapes: strings are joined (labels such as id, type and role are set;
    a name repeated whole is kept once); objects are merged key by key by the
    same rule; lists of objects that carry an "index" are merged by index;
    other lists are extended; numbers are set; null never erases anything.
    A field keeps the JSON type it first came with: a value of another type
    is left out, its path (path.key) appended to dropped, as conform() does."""
    for key, value in delta.items():
        old = into.get(key)
        if type(value) is str and type(old) is _TextBuilder and key != "name":
            old.add(value)   # the usual case: the next piece of a text
        elif value is None:
            continue
        elif old is None or type(old) is list and not old and type(value) is list:
            # the first value (an empty list is decided by the items that follow
            # it: OpenRouter starts tool_calls with [])
            first = _first_value(key, value, dropped, path + "." + key)
            if first is not _WRONG:
                into[key] = first
        elif _JSON_TYPES.get(type(old)) != _JSON_TYPES.get(type(value)):
            dropped.append("%s.%s (%s)" % (path, key, type(value).__name__))
        elif type(value) is dict:
            merge_delta(old, value, dropped, path + "." + key)
        elif type(old) is _Indexed:
            old.merge(value, dropped, path + "." + key)
        elif type(value) is list:
            if _nested_past(value, MAX_NESTING):
                dropped.append("%s.%s (nested past %d levels)" % (path, key, MAX_NESTING))
            else:
                old.extend(value)
        elif type(old) is _TextBuilder:   # "name": OpenAI sends it once, some servers
            if str(old) != value:         # in every piece; joined only if it differs
                old.add(value)
        elif value != "":   # a number, or a label; "" never erases one (Qwen sends "id": "")
            into[key] = value


def _first_value(key, value, dropped, path):
    """A field's first value as merge_delta keeps it: text to be joined, an
    object merged, a list decided by its items (indexed or not); _WRONG
    for one nested past MAX_NESTING levels, its path appended to dropped
    (what a hostile server nests 900 deep would end in a RecursionError)."""
    if type(value) is str:
        return value if key in _LABELS else _TextBuilder(value)
    if type(value) in (dict, list) and _nested_past(value, MAX_NESTING):
        dropped.append("%s (nested past %d levels)" % (path, MAX_NESTING))
        return _WRONG
    if type(value) is dict:
        merged = {}
        merge_delta(merged, value, dropped, path)
        return merged
    if type(value) is list and (key == "tool_calls" or any(
            type(item) is dict and "index" in item for item in value)):
        indexed = _Indexed()
        indexed.merge(value, dropped, path)
        return indexed
    if type(value) is list:
        return list(value)
    return value


def _finished(value):
    """A merged value as plain JSON: text joined (an emoji cut between two
    pieces made whole), indexed lists in order."""
    if isinstance(value, (_TextBuilder, str)):
        return mend_surrogates(str(value))
    if isinstance(value, _Indexed):
        return [_finished({k: v for k, v in value[i].items() if k != "index"})
                for i in sorted(value)]
    if isinstance(value, dict):
        return {k: _finished(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finished(v) for v in value]
    return value


class ChatAccumulator:
    """Build the finished chat.completion from streamed chunk dicts.

    Every delta field is merged by one rule (merge_delta), so content,
    refusal, reasoning, tool_calls, the legacy function_call, audio and
    annotations all arrive whole; logprobs are merged the same way.  The
    top-level fields take the first non-empty value each; usage comes from a
    final chunk whose choices are empty.  n: the choices asked for; a choice
    at or past it is left out, its index kept in unrequested.
    """

    TOP_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")

    def __init__(self, n=1):
        self.n = n
        self.top = {}
        self.usage = None
        self.choices = {}       # index -> the choice being built
        self.unrequested = None   # the first index past n the server sent
        self._id = ()           # the chunk id whose top-level fields were read
        self.dropped = []       # fields of the wrong type left out (conform, merge_delta)

    def add(self, chunk):
        """Check one chunk's shape (conform_chunk: a field of the wrong type is
        left out, its path kept in dropped) and merge it; raise StreamError if
        it cannot be read at all.  Whoever reads the chunk after this, a
        printer say, meets no type it did not expect."""
        if conform_chunk(chunk, self.dropped) is _WRONG:
            raise StreamError("the server sent a chunk this client cannot read: %s"
                              % _one_line(repr(chunk))[:200])
        if chunk.get("id") != self._id:   # top-level fields: read once per id
            self._id = chunk.get("id")
            for key in self.TOP_FIELDS:
                if key not in self.top and chunk.get(key):
                    self.top[key] = chunk[key]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():   # (conformed: the types are right)
            index = choice.get("index") or 0   # (null, as everywhere, is absent)
            c = self.choices.get(index)
            if c is None:
                if not 0 <= index < self.n:
                    if self.unrequested is None:
                        self.unrequested = index
                    continue
                c = self.choices[index] = {"message": {}, "logprobs": {}, "finish_reason": None}
            delta = choice.get("delta")
            if delta:
                merge_delta(c["message"], delta, self.dropped, ".choices[].delta")
            if choice.get("logprobs"):
                merge_delta(c["logprobs"], choice["logprobs"], self.dropped, ".choices[].logprobs")
            if choice.get("finish_reason"):
                c["finish_reason"] = choice["finish_reason"]

    @property
    def finished(self):
        """True when at least one choice arrived and every choice has finished."""
        return bool(self.choices) and all(
            c["finish_reason"] for c in self.choices.values())

    def text(self, index=0):
        """The content received so far for one choice."""
        c = self.choices.get(index)
        return mend_surrogates(str(c["message"].get("content") or "")) if c else ""

    def result(self):
        """Return the reply in the shape of a non-streamed chat.completion."""
        choices = []
        for index in sorted(self.choices):
            c = self.choices[index]
            message = {"role": "assistant", "content": None}
            message.update(_finished(c["message"]))
            for call in message.get("tool_calls") or ():
                _whole_call(call)
            choices.append({"index": index, "message": message,
                            "logprobs": _finished(c["logprobs"]) or None,
                            "finish_reason": c["finish_reason"]})
        completion = {"id": self.top.get("id"), "object": "chat.completion",
                      "created": self.top.get("created"), "model": self.top.get("model")}
        for key in ("system_fingerprint", "service_tier"):
            if key in self.top:
                completion[key] = self.top[key]
        completion["choices"] = choices
        completion["usage"] = self.usage
        completion = _finished(completion)   # every string mended, the top fields too
        conform(completion, CHUNK_SHAPE, self.dropped)   # top fields: see conform_chunk
        return completion
def _whole_call(call):
    """Give a tool call the fields a sparse stream left out (an id, a type,
    a name, arguments or a custom tool's input), so whoever reads it finds
    them all."""
    call.setdefault("id", None)
    call.setdefault("type", "custom" if "custom" in call else "function")
    if call["type"] == "custom":   # free text in (a custom tool's input)
        call.setdefault("custom", {}).setdefault("input", "")
        return
    function = call.setdefault("function", {})
    function.setdefault("name", "")
    function.setdefault("arguments", "")


REASONING_FIELDS = ("reasoning_content", "reasoning", "reasoning_details")


def history_message(message):
    """The assistant message to keep in history: only fields the API accepts back.

    Reasoning stays only on a message that made tool calls: DeepSeek's
    thinking mode answers 400 without it there (and ignores it elsewhere),
    OpenRouter wants reasoning_details back with the calls.  A spoken reply
    is kept as its transcript; Chat refers to its audio by id while it lives.
    """
    kept = {"role": "assistant", "content": message.get("content")}
    for key in ("tool_calls", "function_call", "refusal"):
        if message.get(key):
            kept[key] = message[key]
    calls = "tool_calls" in kept or "function_call" in kept
    if calls:
        kept.update((key, message[key]) for key in REASONING_FIELDS if message.get(key))
    audio = message.get("audio")
    if kept["content"] is None and isinstance(audio, dict) and audio.get("transcript"):
        kept["content"] = audio["transcript"]
    if kept["content"] is None and not calls:
        kept["content"] = ""
    return kept


def tool_calls(message):
    """The calls a reply makes: its tool_calls, or a legacy function_call as one."""
    calls = list(message.get("tool_calls") or ())
    if not calls and message.get("function_call"):
        calls = [{"id": None, "type": "function", "function": message["function_call"]}]
    return calls


def tool_result(call, content):
    """The message that answers a call: role tool with the call's id, or role
    function for a legacy function_call."""
    if call.get("id") is None:
        return {"role": "function", "name": (call.get("function") or {}).get("name"),
                "content": content}
    return {"role": "tool", "tool_call_id": call["id"], "content": content}


def error_message(body):
    """Return (message, type, code) from an error body: the API's JSON or not."""
    data = body
    if isinstance(body, (bytes, str)):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            data = parse_json(text)
        except ValueError:
            return _first_line(text) or "(empty body)", None, None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or error.get("msg")
            if isinstance(message, list):      # FastAPI's validation errors
                message = "; ".join(str(m.get("msg", m)) if isinstance(m, dict)
                                    else str(m) for m in message)
            if message:
                return _server_words(message), error.get("type"), error.get("code")
        elif isinstance(error, str) and error:
            return _server_words(error), None, None
    return _one_line(json.dumps(data))[:300], None, None


def _server_words(message):
    """A server's message on one line, without the Python traceback some
    servers (llama-cpp-python among them) append to it."""
    return _one_line(re.split(r"\n\s*(?:Traceback \(most recent call last\)|File \")",
                              str(message), maxsplit=1)[0])


def _one_line(text):
    return " ".join(text.split())


def _first_line(text):
    """The most telling line of a non-JSON body: an HTML title, else the first."""
    lower = text.lower()
    start = lower.find("<title>")
    if start >= 0:
        end = lower.find("</title>", start)
        title = _one_line(text[start + 7:end if end > 0 else None])
        if title:
            return title[:200]
    for line in text.splitlines():
        if line.strip():
            return _one_line(line)[:200]
    return ""


def parse_conversation(data):
    """Return (model or None, messages, params) from a saved conversation.

    Accepts a Chat Completions request body or a bare list of messages;
    raises UsageError for anything else.
    """
    if isinstance(data, list):
        data = {"messages": data}
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise UsageError("it is not a conversation: expected a request body with a "
                         "\"messages\" list, or a list of messages")
    for i, message in enumerate(data["messages"]):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), (str, list, type(None)))):
            raise UsageError("message %d is not a message: each needs a \"role\" and a "
                             "\"content\"" % (i + 1))
        wrong = []
        conform(dict(message), HISTORY_SHAPE, wrong)
        if wrong:   # a file is not trusted either: the same checks as a server's chunks
            raise UsageError("message %d is not well formed: %s" % (i + 1, wrong[0].lstrip(".")))
    model = data.get("model")
    params = {k: v for k, v in data.items()
              if k not in ("model", "messages", "stream", "stream_options")}
    return (model if isinstance(model, str) and model else None), data["messages"], params


def renamed_max_tokens(params, exc):
    """params with max_tokens renamed to max_completion_tokens if exc is the
    server refusing max_tokens for that reason (newer OpenAI models do); else None."""
    text = str(exc)
    if ("max_tokens" not in params or getattr(exc, "status", None) != 400
            or "max_tokens" not in text or "max_completion_tokens" not in text):
        return None
    renamed = dict(params)
    renamed["max_completion_tokens"] = renamed.pop("max_tokens")
    return renamed


def _system_count(messages):
    """How many system or developer messages open the conversation."""
    n = 0
    while n < len(messages) and messages[n].get("role") in ("system", "developer"):
        n += 1
    return n


def _chars(message):
    """Characters of a message that count toward its tokens (~85 an image)."""
    chars = 0
    content = message.get("content")
    if isinstance(content, list):   # content parts: count the text
        chars += sum(len(p.get("text") or "") if p.get("type") == "text" else 340
                     for p in content if isinstance(p, dict))
    elif isinstance(content, str):
        chars += len(content)
    if message.get("tool_calls"):
        chars += len(json.dumps(message["tool_calls"]))
    return chars


def _token_estimate(chars, count):
    """Tokens for count messages of chars characters in all: CHARS_PER_TOKEN
    characters a token, plus TOKENS_PER_MESSAGE a message."""
    return chars // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * count


def estimate_tokens(messages):
    """About how many tokens messages take, by _token_estimate."""
    return _token_estimate(sum(_chars(m) for m in messages), len(messages))


def fit_context(messages, limit, tokens=None):
    """(messages without their oldest exchanges, so that they fit in limit
    tokens; how many messages were dropped).

    tokens: what messages take, where it is known better than the estimate
    (the server's own count).  Never drops the system messages that open
    the conversation or the last user message; a conversation that is only
    its last exchange goes as it is.  Returns the very same list when
    nothing had to go.  Linear in the messages: each is measured once.
    """
    if not limit or (estimate_tokens(messages) if tokens is None else tokens) <= limit:
        return messages, 0
    start = _system_count(messages)
    sizes = [_chars(m) for m in messages]
    chars, count = sum(sizes), len(messages)   # once cut, our own estimate counts
    cut = start   # messages[start:cut] are dropped
    for i in range(start + 1, len(messages)):
        if cut > start and _token_estimate(chars, count) <= limit:
            break
        if messages[i].get("role") == "user":   # drop everything before it
            chars -= sum(sizes[cut:i])
            count -= i - cut
            cut = i
    if cut == start:
        return messages, 0
    return messages[:start] + messages[cut:], cut - start


def _context_error(exc):
    """True if the server says the request does not fit its context."""
    text = "%s %s %s" % (exc, exc.type, exc.code)
    return any(word in text.lower() for word in (
        "context_length_exceeded", "context length", "context window", "context size",
        "exceed_context_size", "maximum context", "too many tokens", "prompt is too long"))


def _context_numbers(exc):
    """(context size, tokens the server counted) as a context error states them;
    None for what it does not say."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else body
    if isinstance(error.get("n_ctx"), int):   # llama.cpp says it in fields
        counted = error.get("n_prompt_tokens")
        return error["n_ctx"], counted if isinstance(counted, int) else None
    limit = re.search(r"(?:maximum context length|context (?:length|window|size))"
                      r"[^0-9]{0,40}(\d{2,8})", str(exc))
    counted = re.search(r"(?:resulted in|requested|you requested|prompt has) (\d{2,8})", str(exc))
    return (int(limit.group(1)) if limit else None,
            int(counted.group(1)) if counted else None)


# ---------------------------------------------------------------------------
# HTTP: the one place that touches the network.
# Lifting: needs the errors, the protocol's stream functions and the constants.
# ---------------------------------------------------------------------------

def _import_network():
    """Import the modules a request needs, once (see the comment at the imports)."""
    global http, socket, ssl, urllib
    import http.client
    import socket
    try:
        import ssl
    except ImportError:   # a Python built without it: http:// still works
        ssl = None
    import urllib.error
    import urllib.request


class StaleConnection(ConnectionError):
    """Raised by a connection layer (Client's connections) when a connection
    kept open from an earlier request proves closed before any byte of the
    answer came: the server never took the request, so Client sends it
    again at once, on a new connection, whatever its retries."""


def normalize_base_url(url):
    """Accept a base URL as people paste it; return scheme://host[:port]/path[?query].

    A missing scheme means http:// for a local host, https:// otherwise; a
    trailing /chat/completions is dropped; a path or query that is not ASCII
    is percent-encoded.  Raises UsageError for what cannot be sent.
    """
    url = url.strip()
    example = "e.g. https://api.openai.com/v1 or localhost:11434/v1"
    try:
        if "://" not in url:
            host = urlsplit("//" + url).hostname or ""
            url = ("http://" if is_local_host(host) else "https://") + url
        parts = urlsplit(url)
        parts.port   # a port that is not a number raises here
        host = parts.hostname
    except ValueError as exc:
        raise UsageError("the base URL %s is not a URL (%s), %s"
                         % (shown_url_safely(url), exc, example)) from None
    if parts.scheme not in ("http", "https") or not host:
        raise UsageError("the base URL %s is not an http(s) URL, %s"
                         % (shown_url_safely(url), example))
    try:
        host.encode("idna")   # a label over 63 characters, or empty, fails here
    except UnicodeError:
        raise UsageError("the base URL %s: %s is not a valid host name"
                         % (shown_url_safely(url), host)) from None
    path = parts.path.rstrip("/")
    if path.endswith("/chat/completions"):
        path = path[:-len("/chat/completions")]
    path = urllib.parse.quote(path, safe="/%:@!$&'()*+,;=-._~")
    query = urllib.parse.quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def shown_url_safely(url):
    """shown_url, for a URL that may not even parse: then what would be its
    user and password, and its secret-looking query values, are masked by
    pattern."""
    try:
        return shown_url(url)
    except ValueError:
        url = re.sub(r"//[^/?#]*@", "//***@", url)
        return re.sub(r"(?i)([?&][^=&]*(?:key|token|sig|secret|passw|auth|credential)[^=&]*=)[^&#]*",
                      r"\1***", url)


def endpoint_url(base_url, path):
    """base_url + path, keeping a query string (Azure's api-version) at the end."""
    base, sep, query = base_url.partition("?")
    return base + path + sep + query
# Query parameters whose values are credentials: shown as ***, in /curl as $NAME.
_SECRET_NAME = re.compile(r"(?i)key|token|sig|secret|passw|auth|credential")
_SECRET_HEADER = re.compile(r"(?i)auth|key|token|secret|cookie")


def is_secret_header(name):
    """True for a header whose value is a credential (Authorization, api-key...)."""
    return bool(_SECRET_HEADER.search(name))


def _query_items(query):
    return [item.partition("=") for item in query.split("&") if item]


def shown_url(url):
    """url as it may be shown anywhere: a user and password in it, and the
    values of secret-looking query parameters (key, api-key, token, sig...),
    replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(name + equals + ("***" if equals and _SECRET_NAME.search(name) else value)
                     for name, equals, value in _query_items(parts.query))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def basic_credentials(url):
    """("user:password" as a URL carries them, or None; the URL without them)."""
    parts = urlsplit(url)
    if parts.username is None:
        return None, url
    return ("%s:%s" % (urllib.parse.unquote(parts.username),
                       urllib.parse.unquote(parts.password or "")),
            urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])))


def basic_authorization(credentials):
    """The Authorization value for "user:password"."""
    return "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")


def url_secrets(url):
    """The credentials a URL carries: its user and password, and the values
    of its secret-looking query parameters."""
    parts = urlsplit(url)
    found = [parts.username, parts.password]
    found += [value for name, equals, value in _query_items(parts.query)
              if equals and _SECRET_NAME.search(name)]
    return [urllib.parse.unquote(secret) for secret in found if secret]


def proxies_for(host, environ):
    """The proxies to reach host with, from environ as urllib reads them
    (lower-case names win, NO_PROXY honoured); none at all for this machine,
    so that nothing meant for localhost ever passes through a proxy."""
    proxies = {}
    for name, value in environ.items():
        lower = name.lower()
        if value and lower.endswith("_proxy") and (name == lower or lower[:-6] not in proxies):
            proxies[lower[:-6]] = value
    _import_network()
    if is_loopback_host(host) or urllib.request.proxy_bypass_environment(host, proxies):
        return {}
    proxies.pop("no", None)
    return proxies


def url_origin(url):
    """(scheme, host, port) of url: the origin a credential is given for."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"https": 443}.get(scheme, 80)


def origin_text(url):
    """url's origin as it may be shown: scheme://host[:port]."""
    scheme, host, port = url_origin(url)
    default = port == {"https": 443}.get(scheme, 80)
    return "%s://%s%s" % (scheme, host, "" if default else ":%d" % port)


def in_clear_text(url):
    """True when a request to url crosses the network unencrypted: plain http
    to a host that is not this machine (a credential must not go so)."""
    parts = urlsplit(url)
    return parts.scheme == "http" and not is_loopback_host(parts.hostname)


def may_carry_credentials(url, given_for):
    """The one rule for every credential (a key, a token, a password, a
    proxy's): a request to url may carry one given for the URL given_for
    only if both have the same origin, scheme, host and port (RFC 6454), so
    none travels to a host it was not given for."""
    return url_origin(url) == url_origin(given_for)


def _ip_address(host):
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback_host(host):
    """True for this machine: localhost, 127.0.0.0/8, ::1."""
    host = (host or "").lower()
    address = _ip_address(host)
    if address is None:
        return host == "localhost" or host.endswith(".localhost")
    return address.is_loopback


def is_local_host(host):
    """True for hosts that may serve without a key: loopback, private, bare names."""
    host = (host or "").lower()
    address = _ip_address(host)
    if address is None:
        return "." not in host or host.endswith(
            (".localhost", ".local", ".internal", ".lan", ".home.arpa"))
    return address.is_loopback or address.is_private or address.is_link_local


def retry_delay(attempt, headers, now=None, jitter=None):
    """Seconds to wait before retry number attempt+1: the server's
    retry-after-ms or Retry-After (seconds or an HTTP date) if it sent one,
    else exponential backoff with jitter; never over MAX_RETRY_WAIT."""
    headers = headers or {}
    milliseconds, after = headers.get("retry-after-ms"), headers.get("Retry-After")
    try:
        if milliseconds:
            seconds = float(milliseconds) / 1000
        elif after:
            try:
                seconds = float(after)
            except ValueError:
                from email.utils import parsedate_to_datetime   # (imported by urllib already)
                seconds = parsedate_to_datetime(after).timestamp() - (now or time.time())
        else:
            seconds = None
        if seconds is not None and math.isfinite(seconds):   # "nan" is a float too
            return min(max(seconds, 0.0), MAX_RETRY_WAIT)
    except (TypeError, ValueError, OverflowError):
        pass   # an unreadable header: fall back to backoff
    if jitter is None:
        jitter = random.random()
    return min(0.5 * 2 ** attempt, MAX_RETRY_WAIT) * (1 - 0.25 * jitter)


class _Upload(io.BytesIO):
    """A request body that http.client reads in blocks, telling on_wait how
    much of it was sent (a large attachment takes a while)."""

    def __init__(self, data, on_wait):
        super().__init__(data)
        self._total, self._on_wait = len(data), on_wait

    def read(self, size=-1):
        block = super().read(size)
        self._on_wait("sending", progress="%.1f of %.1f MB" % (self.tell() / 1e6, self._total / 1e6))
        return block


class Redactor:
    """Blanks the secrets (the key, credential headers, a password) out of
    text: every stretch made of runs of MIN_SECRET or more of a secret's
    characters becomes ***, so an echo cut off mid-key shows nothing of it
    either.  A secret shorter than MIN_SECRET (a local server's key "x") is
    left alone: blanking it would blank every x.  False when it has nothing
    to blank."""

    def __init__(self, secrets=()):
        secrets = [s for s in secrets if s and len(s) >= MIN_SECRET]
        self._runs = frozenset(s[i:i + MIN_SECRET] for s in secrets
                               for i in range(len(s) - MIN_SECRET + 1))
        self._search = re.compile("|".join(map(re.escape, sorted(self._runs)))).search \
            if self._runs else None
        self._all = "\0".join(secrets)   # for the tail that may begin one
        self._held = ""          # that tail: written once it cannot be one
        self._stretch = ""       # the secret text the last *** written stands for

    def __bool__(self):
        return self._search is not None

    def redact(self, text):
        """text with every secret stretch blanked."""
        return self._blank(text)[0]

    def _blank(self, text):
        """(text redacted, the secret stretch its last *** stands for if the
        text ends in it, else "")."""
        match = self._search and len(text) >= MIN_SECRET and self._search(text)
        if not match:
            return text, ""
        runs, out, start, i, last = self._runs, [], 0, match.start(), len(text) - MIN_SECRET
        stretch = ""
        while i <= last:
            if text[i:i + MIN_SECRET] in runs:
                end = i + MIN_SECRET
                while end < len(text) and text[end - MIN_SECRET + 1:end + 1] in runs:
                    end += 1
                out.append(text[start:i])
                out.append("***")
                stretch = text[i:end] if end == len(text) else ""
                start = i = end
            else:
                i += 1
        out.append(text[start:])
        return "".join(out), stretch

    def redact_all(self, value):
        """value (parsed JSON) with every string redacted."""
        if not self or isinstance(value, (int, float, type(None))):
            return value
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.redact_all(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact_all(v) for v in value]
        return value

    def feed(self, text):
        """For text that streams: what of it may be written now, redacted.
        The longest tail that could begin a secret waits for the next piece
        (or release()), and what continues a secret just blanked is blanked
        with it."""
        if not self:
            return text
        if self._stretch:   # the piece may go on with the secret blanked last
            k = 0
            while k < len(text) and self._stretch + text[:k + 1] in self._all:
                k += 1
            self._stretch += text[:k]
            text = text[k:]
            if not text:
                return ""
            self._stretch = ""
        text, self._stretch = self._blank(self._held + text)
        held = 0
        while not self._stretch and held < len(text) and text[len(text) - held - 1:] in self._all:
            held += 1
        self._held = text[len(text) - held:] if held else ""
        return text[:len(text) - held]

    def release(self):
        """What feed() still holds, redacted."""
        held, self._held, self._stretch = self._held, "", ""
        return self.redact(held)


def path_hint(base_url):
    """If base_url looks like a common mistake, how to fix it; else "".
    Pure: it sends nothing (--check probes the server itself)."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    root = shown_url("%s://%s" % (parts.scheme, parts.netloc))
    if path.endswith(("/api", "/api/chat", "/api/generate")):
        return "that is Ollama's own API; its OpenAI API is at %s/v1" % root
    if parts.port == 11434 and not path.endswith("/v1"):
        return "Ollama's OpenAI API is at %s/v1" % root
    if not path.endswith("/v1") and "/openai/" not in path + "/":
        return "the API is usually at a path ending in /v1, e.g. %s/v1" % shown_url(base_url)
    return ""


def _shell_variable(name):
    return "$" + re.sub(r"\W", "_", name).upper()


def _double_quoted(text):
    return '"%s"' % re.sub(r'(["\\`$])', r"\\\1", text)


class Client:
    """Sends requests to one OpenAI-compatible server.

    base_url: normalized base URL; a user and password in it are sent as
    HTTP Basic authentication instead of the key.  api_key: sent as a Bearer
    token if given.  proxies: scheme -> proxy URL (None: urllib's own choice
    from the environment; {}: none).
    organization, project: the OpenAI-Organization / OpenAI-Project headers.
    redactor: the Redactor for what the server may echo (default: one of
    this client's own secrets).
    headers: extra (name, value) pairs, overriding the defaults by name.
    timeout: seconds for connecting and for each wait for the next byte.
    retries: how often to retry a request the server may take later (see
    RETRY_STATUSES); on_retry(text) hears of each; sleep waits between them.
    on_wait(what, until=None, progress=None) hears what a request waits for
    as it goes (a connection, an upload, the model's answer, a retry's
    back-off until a time.monotonic()), and None when it no longer waits.
    connections: the urllib.request handler that opens the connections, for
    http and https (default: urllib's own, a new connection per request;
    main() gives keep_alive(), which keeps one open for the whole chat).  It
    raises StaleConnection for a kept connection found closed, and its
    responses may have finish(), which reads the body's end after a stream's
    last event so the connection can take the next request.
    key_for: the URL api_key was given for (default: base_url); where its
    origin is not base_url's, the key is not sent (withheld says for which
    origin it was), by the one rule of may_carry_credentials.
    """

    def __init__(self, base_url, *, api_key=None, organization=None, project=None,
                 headers=(), timeout=DEFAULT_TIMEOUT, retries=DEFAULT_RETRIES,
                 proxies=None, on_retry=None, sleep=None, on_wait=None, connections=None,
                 key_for=None, redactor=None):
        basic, base_url = basic_credentials(base_url)   # sent as HTTP Basic, not in the URL
        self.base_url = base_url
        self.shown_url = shown_url(base_url)   # the one to put in messages
        self.withheld = None
        if api_key and key_for and not may_carry_credentials(base_url, key_for):
            self.withheld, api_key = origin_text(key_for), None
        self.api_key = None if basic else api_key
        self.proxies = proxies
        self.timeout = timeout
        self.retries = retries
        self.on_retry = on_retry or (lambda text: None)
        self.sleep = sleep or time.sleep
        self.connections = connections
        self._urlopener = None   # made at the first request
        self.on_wait = on_wait or (lambda what, until=None, progress=None: None)
        self.headers = {
            "Content-Type": "application/json",
            "User-Agent": "chat.py/%s (Python %d.%d)" % ((__version__,) + sys.version_info[:2]),
        }
        if basic:
            self.headers["Authorization"] = basic_authorization(basic)
        elif api_key:
            self.headers["Authorization"] = "Bearer " + api_key
        if organization:
            self.headers["OpenAI-Organization"] = organization
        if project:
            self.headers["OpenAI-Project"] = project
        for name, value in headers:
            self.headers = _with_headers(self.headers, [(name, value)])
        # What the server may echo back and must never be shown or kept.
        self.redactor = redactor if redactor is not None else Redactor(
            [api_key, basic] + url_secrets(base_url) + [
                value.split(" ")[-1] for name, value in self.headers.items()
                if is_secret_header(name)] + (basic or "").split(":"))

    def request(self, method, path, payload=None, probe=False, *, headers=(), timeout=None):
        """Send one request, retrying what may work later; return the open response.

        Only failures before any response byte are retried, so no text is ever
        shown twice.  Raises the ChatError that says what went wrong.  A probe
        (a diagnosis of its own) is neither retried nor explained.  headers:
        (name, value) pairs for this request alone, over the client's by
        name; timeout: this request's, in place of the client's.
        """
        headers = _with_headers(self.headers, headers)
        timeout = timeout or self.timeout
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        if payload is None:
            del headers["Content-Type"]
        elif payload.get("stream"):
            headers.setdefault("Accept", "text/event-stream")
        data = self._uploading(data, headers)
        opener = self._opener()
        request = urllib.request.Request(endpoint_url(self.base_url, path), data=data,
                                         headers=headers, method=method)
        request.waiting = ("waiting for the model" if path == "/chat/completions" else
                           "waiting for %s" % urlsplit(self.base_url).hostname)
        retries = 0 if probe else self.retries
        attempt, resent = 0, False
        while True:
            if isinstance(data, _Upload):
                data.seek(0)   # every attempt sends the whole body
            self.on_wait(request.waiting)
            try:
                response = opener.open(request, timeout=timeout)
                if path != "/chat/completions":   # a reply waits on, till its first word
                    self.on_wait(None)
                return response
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                if isinstance(getattr(exc, "reason", exc), StaleConnection) and not resent:
                    resent = True   # the server never took it: once more, silently
                    continue
                cause = exc
                error, why, retry_headers = self._failure(exc, probe)
            if why is None or attempt == retries:
                self.on_wait(None)
                raise error from cause
            attempt += 1
            self._back_off(attempt, retries, why, retry_headers)

    def _uploading(self, data, headers):
        """data as sent: a body larger than SHOWN_UPLOAD in a file that says
        how much of it is sent (on_wait), of a length headers give."""
        if data is None or len(data) <= SHOWN_UPLOAD:
            return data
        headers["Content-Length"] = str(len(data))
        return _Upload(data, self.on_wait)

    def _back_off(self, attempt, retries, why, headers):
        """Wait before retry number attempt (of retries), saying so."""
        delay = retry_delay(attempt - 1, headers)
        self.on_retry("%s; retry %d of %d in %.1fs" % (why, attempt, retries, delay))
        self.on_wait("retry %d of %d" % (attempt, retries), until=time.monotonic() + delay)
        self.sleep(delay)

    def _failure(self, exc, probe):
        """(the ChatError for what opening a request raised, why it may be
        retried or None, the answer's headers)."""
        if isinstance(exc, urllib.error.HTTPError):
            try:
                body = exc.read(MAX_ERROR_BODY)
            except (OSError, http.client.HTTPException, AttributeError):
                body = b""
            finally:
                exc.close()
            why = "HTTP %d" % exc.code if exc.code in RETRY_STATUSES else None
            return self._status_error(exc.code, exc.headers, body, probe), why, exc.headers
        if isinstance(exc, (urllib.error.URLError, OSError)):
            reason = getattr(exc, "reason", exc)
            why = ("connection refused" if isinstance(reason, ConnectionRefusedError) else
                   "connection reset" if isinstance(reason, ConnectionResetError) else None)
            return self._connection_error(reason), why, {}
        reason = _one_line(str(exc)) or type(exc).__name__   # the answer was not HTTP at all
        return APIConnectionError("%s did not answer with valid HTTP (%s)"
                                  % (self.shown_url, reason)), None, {}

    def _opener(self):
        """The one urllib opener of this client, made at its first request."""
        if self._urlopener is None:
            _import_network()
            handlers = [_no_redirect_handler()]
            if self.proxies is not None:
                handlers.append(urllib.request.ProxyHandler(self.proxies))
            if self.connections is not None:
                handlers.append(self.connections)
            self._urlopener = urllib.request.build_opener(*handlers)
        return self._urlopener

    def close(self):
        """Close the connections kept open for the next request, if any."""
        if self.connections is not None:
            self.connections.close()

    def _status_error(self, status, headers, body, probe=False):
        message, type_, code = error_message(body)
        try:
            parsed = parse_json(body)
        except ValueError:
            parsed = None
        label = "HTTP %d" % status
        named = [str(x) for x in (type_, code) if x]
        if named:   # once when they say the same
            label += " (%s)" % ", ".join(sorted(set(named), key=named.index))
        found = "%s: %s" % (label, message)
        hint, fix = self._status_hint(status, headers, parsed is None, type_ or code, probe)
        cls = {401: AuthenticationError, 403: AuthenticationError, 429: RateLimitError}
        return cls.get(status, APIError)(found + (" - " + hint if hint else ""), status, type_,
                                         code, parsed, headers=headers, found=found, fix=fix)

    def _status_hint(self, status, headers, not_json, named, probe):
        """(what to do about an error status, in a few words; the setting
        that mends it, or None).  A probe explains itself: nothing on paths."""
        if status in (301, 302, 303, 307, 308):
            return "the server redirects to %s; use that as the base URL" % headers.get(
                "Location"), "base_url"
        if status == 401 and self.withheld and "Authorization" not in self.headers:
            return ("the server wants a key and none was sent (the key given is for %s)"
                    % self.withheld), "withheld"
        if status == 401 and not self.api_key and "Authorization" not in self.headers:
            return "the server wants a key and none was sent", "no_key"
        if status == 401:
            return "the key was refused", "key"
        if status == 403:
            return "the key is not allowed to use this model or endpoint", None
        if status in (404, 405, 501) and probe:
            return "", None
        if status in (404, 405, 501):
            hint = path_hint(self.base_url)
            if not hint and not_json:   # a web page, not an API's JSON error
                hint = "this does not look like an OpenAI-compatible API; check the base URL"
            return hint or "check the base URL (usually ends in /v1) and the model", "base_url"
        if status == 429:
            return "rate limited or out of quota; wait, then try again", None
        if status >= 500 and not named:
            return "the server failed; try again later", None   # it did not say why
        return "", None

    def curl(self, payload):
        """A curl command line that sends payload as this client would, minus secrets.

        The key appears as $OPENAI_API_KEY, any other header that looks like a
        credential as a shell variable named after it, and so does a secret
        query parameter of the URL (?api-key=$API_KEY), never as its value.
        """
        first = "curl -N " if payload.get("stream") else "curl "   # -N: show the stream as it comes
        url = endpoint_url(self.base_url, "/chat/completions")
        base, _, query = url.partition("?")
        if any(equals and _SECRET_NAME.search(name) for name, equals, _ in _query_items(query)):
            shown = _double_quoted(base + "?")[:-1] + "&".join(
                _double_quoted(name + equals)[1:-1] + (
                    _shell_variable(name) if _SECRET_NAME.search(name)
                    else _double_quoted(value)[1:-1])
                for name, equals, value in _query_items(query)) + '"'
        else:
            shown = shlex.quote(url)
        parts = [first + shown]
        for name, value in self.headers.items():
            if name.lower() == "authorization" and self.api_key and self.api_key in value:
                parts.append('-H "%s: %s"' % (name, value.replace(self.api_key, "$OPENAI_API_KEY")))
            elif is_secret_header(name):
                parts.append('-H "%s: %s"' % (name, _shell_variable(name)))
            else:
                parts.append("-H " + shlex.quote("%s: %s" % (name, value)))
        parts.append("-d " + shlex.quote(json.dumps(payload, ensure_ascii=False)))
        return " \\\n  ".join(parts)

    def _connection_error(self, reason):
        where = self.shown_url
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return APITimeoutError("no answer from %s within %gs - is the server up?"
                                   % (where, self.timeout), fix="timeout")
        if isinstance(reason, ConnectionRefusedError):
            return APIConnectionError("cannot connect to %s: connection refused - is the "
                                      "server running there?" % where)
        if isinstance(reason, socket.gaierror):
            return APIConnectionError("cannot find the host of %s - check the base URL and "
                                      "your network" % where)
        # Python 3.7 named the certificate error; 3.6 raises its base class.
        if ssl and isinstance(reason, getattr(ssl, "SSLCertVerificationError",
                                              ssl.CertificateError)):
            return APIConnectionError("the TLS certificate of %s is not trusted (%s); for a "
                                      "private CA set SSL_CERT_FILE"
                                      % (where, getattr(reason, "verify_message", None) or reason))
        if ssl and isinstance(reason, ssl.SSLError):
            return APIConnectionError("TLS failed with %s: %s - is it an https server?"
                                      % (where, _one_line(str(reason))))
        return APIConnectionError("cannot connect to %s: %s"
                                  % (where, _one_line(str(reason)) or type(reason).__name__))

    def read_json(self, response):
        """Read a whole JSON answer (bounded); raise a ChatError if it is not one."""
        try:
            body = response.read(MAX_BODY + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise self._read_error(exc) from exc
        if len(body) > MAX_BODY:
            raise StreamError("the server's answer is over %d MiB; giving up" % (MAX_BODY >> 20))
        content_type = response.headers.get("Content-Type") or "no content type"
        try:
            data = parse_json(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise StreamError("the server's answer is not UTF-8 text") from None
        except ValueError:
            raise StreamError("HTTP %d with %s from %s is not JSON: %s" % (
                response.status, content_type, self.shown_url,
                _first_line(body.decode("utf-8")) or "(empty body)")) from None
        if not isinstance(data, dict):
            raise StreamError("the server answered with JSON that is not an object")
        if data.get("error"):
            message, type_, code = error_message(data)
            raise APIError("the server reported an error: " + message,
                           response.status, type_, code)
        return data

    def models(self):
        """The model ids the server lists (GET /models), sorted."""
        with self.request("GET", "/models") as response:
            answer = conform(_mend_all(self.read_json(response), False), MODELS_SHAPE, [])
        if not isinstance(answer.get("data"), list):
            raise StreamError("the server's /models answer has no \"data\" list of models")
        return sorted(m["id"] for m in answer["data"] if m.get("id"))

    def complete(self, payload, dropped=None):
        """Send a non-streamed chat request; return the chat.completion dict,
        conformed to CHUNK_SHAPE (the paths of fields left out go to dropped)."""
        with self.request("POST", "/chat/completions", payload) as response:
            return self.complete_from(response, dropped)

    def stream(self, payload):
        """Send a streamed chat request; yield each chunk dict until [DONE].

        An error inside the stream is raised, never yielded.  A stream that
        closes before [DONE] raises IncompleteStreamError after its last chunk.
        A server that answers a stream request with plain JSON is accepted.
        """
        with self.request("POST", "/chat/completions", payload) as response:
            content_type = (response.headers.get("Content-Type") or "").lower()
            if "json" in content_type or "html" in content_type:   # (a page: an error)
                yield completion_to_chunk(self.complete_from(response))
                return
            yield from iter_chunks(self.reads(response))
            finish = getattr(response, "finish", None)   # (a keep-alive connection's)
            if finish is not None:
                finish()

    def reads(self, response):
        """The stream's bytes as they arrive, at most MAX_BODY of them in all."""
        read1 = response.read1   # returns what has arrived, without waiting for more
        left = MAX_BODY
        while True:
            try:
                data = read1(READ_SIZE)
            except (OSError, http.client.HTTPException) as exc:
                raise self._read_error(exc) from exc
            if not data:
                return
            left -= len(data)
            if left < 0:
                raise StreamError("the reply passed %d MiB, more than any reply should be; "
                                  "it was cut there" % (MAX_BODY >> 20))
            yield data

    def complete_from(self, response, dropped=None):
        """The chat.completion in a JSON answer that is already open, conformed."""
        data = conform(_mend_all(self.read_json(response), False), CHUNK_SHAPE,
                       [] if dropped is None else dropped)
        if not isinstance(data.get("choices"), list):
            raise StreamError("the server's answer has no choices: %s"
                              % _one_line(json.dumps(data))[:200])
        return data

    def _read_error(self, exc):
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return APITimeoutError("the server sent nothing for %gs and the reply was "
                                   "abandoned" % self.timeout, fix="timeout")
        if isinstance(exc, (http.client.IncompleteRead, http.client.RemoteDisconnected,
                            ConnectionResetError)):
            return StreamError("the server closed the connection in the middle of the reply")
        return StreamError("the connection broke during the reply (%s)"
                           % (getattr(exc, "strerror", None) or _one_line(str(exc))
                              or type(exc).__name__))


def _with_headers(headers, pairs):
    """A copy of headers (a dict) with each (name, value) of pairs in place
    of the header of that name, whatever its case."""
    headers = dict(headers)
    for name, value in pairs:
        for existing in [k for k in headers if k.lower() == name.lower()]:
            del headers[existing]
        headers[name] = value
    return headers


def _no_redirect_handler():

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None   # the 3xx then arrives as an HTTPError we explain
    return NoRedirect()


# ---------------------------------------------------------------------------
# The conversation: Chat keeps the history and sends its turns.
# Lifting: needs everything above; cut the file after Chat and it still streams.
# ---------------------------------------------------------------------------

class Printer:
    """Receives a reply as it arrives, and shows nothing: the default for
    Chat.send() from Python.  ReplyPrinter shows replies; a subclass of
    either can show them some other way."""

    def chunk(self, chunk):
        """Take one chat.completion.chunk dict, as it arrives."""

    def end_line(self):
        """The reply stopped early (an error, Ctrl-C): finish what was shown."""

    def finish(self, completion):
        """Take the whole chat.completion once the reply is complete."""


class Chat:
    """A conversation: the API's own messages list plus how to extend it.

    client: the Client to send with.  model: the model name.  system: the
    system message, if any.  params: extra body fields, checked as the flags
    are.  stream: ask for SSE.  max_context: the most tokens a request may
    hold (None: no bound until the server reports one).  notify(text) hears
    of trimming and retries.  system_role: "system", or "developer" as newer
    reasoning models expect.  more_tools(): tool definitions to offer with
    each request besides params' "tools" (an MCP server's), asked anew for
    each request.
    """

    def __init__(self, client, model, *, system=None, params=None, stream=True,
                 max_context=None, notify=None, system_role="system", more_tools=None):
        self.client, self.model, self.stream = client, model, stream
        self.more_tools = more_tools
        self.params = dict(params or {})
        check_params(self.params)
        self.system_role = system_role
        self.messages = [{"role": system_role, "content": system}] if system else []
        self.totals = dict.fromkeys(("requests", "prompt_tokens", "completion_tokens",
                                     "total_tokens"), 0)
        self.max_context = max_context
        self.notify = notify or (lambda text: None)
        self.cut_short = False   # the last reply was cut short (Ctrl-C, error, length)
        self._measured = None    # (n, tokens): the server's count for messages[:n]
        self._audio = {}         # id(message) -> (message, audio id, expires_at)

    def body(self):
        """The conversation as a Chat Completions request body, as saved."""
        body = {"model": self.model, "messages": self.messages}
        body.update(self.params)
        return body

    def load(self, body, *, model=None, params=None):
        """Make the chat what a saved conversation holds (body: the parsed
        JSON of a request body, or a list of messages): its messages, its
        model and its request fields, with model and params, where given,
        winning over the body's.  A body that is not a conversation, or holds
        a field that is off, raises UsageError and leaves the chat as it was."""
        loaded_model, messages, loaded = parse_conversation(body)
        merged = dict(loaded, **(params or {}))
        check_params(merged)
        self.messages, self.params = messages, merged
        self.model = model or loaded_model or self.model
        self.cut_short, self._measured = False, None

    def set_model(self, model):
        """Ask model for the following replies."""
        if not model.strip():
            raise UsageError("a model needs a name")
        self.model = model.strip()

    def set_param(self, key, value):
        """Send key: value in every following request; checked first."""
        if key in ("model", "messages", "stream"):
            raise UsageError("%s is not a request field to set: the chat sets it" % key)
        params = dict(self.params, **{key: value})
        check_params(params)
        self.params = params

    def unset_param(self, key):
        """Stop sending key; refused where the fields left would be off."""
        if key not in self.params:
            raise UsageError("%s is not set" % (key or "that field"))
        params = {k: v for k, v in self.params.items() if k != key}
        try:
            check_params(params)
        except UsageError as exc:
            raise UsageError("%s stays: without it, %s" % (key, exc)) from None
        self.params = params

    def next_payload(self, content=None):
        """The request body that sending content would make; without content,
        the one retry() would send."""
        messages = self.messages
        if content is not None:
            messages = messages + [{"role": "user", "content": content}]
        else:
            last = self._last_user()
            if last is not None and messages[-1].get("role") == "assistant":
                messages = messages[:last + 1]
        return build_payload(self.model, messages, self.stream, self.params)

    def send(self, content, printer=None):
        """Send one user turn; return the chat.completion (printer, if given,
        shows it as it arrives).

        On success the user message and the reply join the history; on any
        error the history is as it was.  Text already shown when Ctrl-C or an
        error ends the reply is kept, so /continue and the next turn see it.
        """
        return self._exchange(self.messages + [{"role": "user", "content": content}], printer)

    def reply(self, printer=None):
        """Ask for the next reply to the conversation as it stands."""
        return self._exchange(self.messages, printer)

    def continue_reply(self, printer=None):
        """Ask for more of a reply that was cut short; append it to that reply."""
        if not (self.cut_short and self.messages
                and self.messages[-1].get("role") == "assistant"):
            raise UsageError("nothing to continue: the last reply was complete")
        cut_reply = self.messages[-1]
        ask = {"role": "user", "content": CONTINUE_PROMPT}
        before = self.messages
        completion = self._exchange(self.messages + [ask], printer)
        more = self.messages[-1]
        joined = dict(more, content=(cut_reply.get("content") or "") + (more.get("content") or ""))
        self.messages = before[:-1] + [joined]   # one reply, as if never cut
        return completion

    def retry(self, printer=None):
        """Send the last user message again, in place of its reply."""
        last = self._last_user()
        if last is None:
            raise UsageError("nothing to retry yet")
        before = self.messages
        self.messages = before[:last]
        try:
            return self.send(before[last]["content"], printer)
        except BaseException:
            if len(self.messages) == last:   # nothing was kept: put the old reply back
                self.messages = before
            raise

    def undo(self):
        """Drop the last exchange: the last user message and all after it."""
        last = self._last_user()
        if last is None:
            raise UsageError("nothing to undo")
        self.messages = self.messages[:last]
        self.cut_short = False

    def reset(self):
        """Forget the conversation, keeping the system message."""
        self.messages = self.messages[:_system_count(self.messages)]
        self.cut_short, self._measured = False, None

    def set_system(self, text):
        """Replace the system message (or add one at the start)."""
        count = _system_count(self.messages)
        role = self.messages[0]["role"] if count else self.system_role
        self.messages = [{"role": role, "content": text}] + self.messages[count:]

    def follow_tools(self, completion, tools, new_printer=Printer):
        """Answer the tool calls of a reply and send the results back, round
        after round, until a reply calls no tool or tools.max_rounds is reached.
        tools.answer(call) gives a result's text, or (text, content parts for
        the model to see: images).  new_printer() gives the printer for each
        reply.  Returns the last chat.completion."""
        for rounds in range(tools.max_rounds + 1):
            choices = completion.get("choices") or [{}]
            calls = tool_calls(choices[0].get("message") or {})
            if not calls:
                break
            if rounds == tools.max_rounds:
                self.notify("stopped after %d rounds of tool calls, the most allowed" % rounds)
                break
            results, seen = [], []
            try:
                for call in calls:
                    answer = tools.answer(call)
                    text, parts = answer if isinstance(answer, tuple) else (answer, ())
                    results.append(tool_result(call, text))
                    seen += parts
            finally:   # every call gets an answer, so the conversation stays valid
                self.messages = self.messages + results + [
                    tool_result(call, "error: cancelled by the user") for call in calls[len(results):]]
            if seen:   # a tool message carries text only: images go in a user message
                self.messages = self.messages + [{"role": "user", "content": [
                    {"type": "text", "text": "(what the tools above returned to look at)"}]
                    + seen}]
            completion = self.reply(new_printer())
        return completion

    def _last_user(self):
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].get("role") == "user":
                return i
        return None

    def _exchange(self, messages, printer):
        """Send messages and show the reply; on success they and the reply
        become the history.  A request the server refuses in a way a change
        can fix (see _recover) is sent again, changed, once per kind of fix."""
        printer = printer or Printer()
        messages = self._fit(messages)
        tried = set()
        while True:
            accumulator = ChatAccumulator(self.params.get("n", 1))
            self.totals["requests"] += 1   # each one sent counts, whatever its answer
            try:
                completion = self._request(messages, printer, accumulator)
                break
            except (ChatError, KeyboardInterrupt) as exc:
                printer.end_line()
                self._report(accumulator)
                fixed = (self._recover(exc, messages, tried)   # (not once text was shown)
                         if isinstance(exc, APIError) and not accumulator.text() else None)
                if fixed is None:
                    self._keep_shown(messages, accumulator)
                    raise
                messages = fixed
        printer.finish(completion)
        self._report(accumulator)   # (after the reply's last line is ended)
        self._record(messages, completion)
        return completion

    def _request(self, messages, printer, accumulator):
        """One request; its reply goes through accumulator and printer.  A
        credential the server echoes is blanked out of what is kept."""
        payload = build_payload(self.model, self._sendable(messages), self.stream, self.params)
        more = self.more_tools() if self.more_tools else ()
        if more:   # (asked for each request: a server's tools may change)
            payload["tools"] = list(payload.get("tools") or ()) + list(more)
        if not self.stream:
            return self._complete(payload, printer, accumulator)
        if self.max_context and "stream_options" not in payload:
            payload["stream_options"] = {"include_usage": True}   # for the real count
        chunks = self.client.stream(payload)
        try:
            for chunk in chunks:
                accumulator.add(chunk)   # first: what Ctrl-C finds shown is in here
                printer.chunk(chunk)
        except IncompleteStreamError:
            if not accumulator.finished:   # some servers never send [DONE]
                raise
        finally:
            chunks.close()   # on Ctrl-C this closes the connection at once
        return self.client.redactor.redact_all(accumulator.result())

    def _complete(self, payload, printer, accumulator):
        """_request's way without a stream: the whole reply in one answer."""
        completion = self.client.complete(payload, accumulator.dropped)
        chunk = completion_to_chunk(completion)
        accumulator.add(chunk)   # checks its shape before it is shown
        completion["choices"] = [c for c in completion["choices"]   # as asked for
                                 if (c.get("index") or 0) in accumulator.choices]
        printer.chunk(chunk)
        return self.client.redactor.redact_all(completion)

    def _sendable(self, messages):
        """messages as sent: a spoken reply refers to its audio by id, as the
        API expects, until the audio expires; then its transcript stands."""
        if not self._audio:
            return messages
        now = time.time()
        for key, (message, _, expires) in list(self._audio.items()):
            if isinstance(expires, (int, float)) and now >= expires:
                del self._audio[key]
        return [{"role": "assistant", "audio": {"id": self._audio[id(m)][1]}}
                if id(m) in self._audio and self._audio[id(m)][0] is m else m
                for m in messages]

    def _report(self, accumulator):
        """What the reply had that was left out: fields of the wrong type
        (conform), a choice that was not asked for."""
        if accumulator.dropped:
            self.notify("the server sent fields of the wrong type, left out: %s"
                        % ", ".join(sorted(set(accumulator.dropped))[:5]))
        if accumulator.unrequested is not None:
            self.notify("the server sent choice %d, which was not asked for (n is %d); "
                        "it was left out" % (accumulator.unrequested + 1, accumulator.n))

    def _recover(self, exc, messages, tried):
        """The messages to send again after the server refused them with exc,
        where a change may help (each kind once); else None."""
        if "rename" not in tried:
            renamed = renamed_max_tokens(self.params, exc)
            if renamed is not None:
                tried.add("rename")
                self.params = renamed
                self.notify("the server wants max_completion_tokens instead of max_tokens; "
                            "sending that from now on")
                return messages
        if "trim" not in tried and _context_error(exc):
            tried.add("trim")
            limit, counted = _context_numbers(exc)
            self.max_context = limit or self.max_context
            # Our count was too low, whatever the limit: cut a quarter at least,
            # and where the server gave its own count, scale ours to match it.
            estimate = self._tokens(messages)
            target = estimate * 3 // 4
            if limit and counted and counted > limit:
                target = min(target, estimate * limit * 9 // (counted * 10))
            elif limit:
                target = min(target, limit)
            shorter = self._fit(messages, max(target, 1))
            if shorter is not messages:
                return shorter
        return None

    def _record(self, messages, completion):
        """A reply arrived whole: keep it, and what the server counted."""
        choices = completion.get("choices") or [{}]
        message = choices[0].get("message") or {}
        kept = history_message(message)
        self.messages = messages + [kept]
        audio = message.get("audio")
        if isinstance(audio, dict) and isinstance(audio.get("id"), str):
            self._audio[id(kept)] = (kept, audio["id"], audio.get("expires_at"))
        self.cut_short = choices[0].get("finish_reason") == "length"
        self._count(completion.get("usage") or {})

    def _count(self, usage):
        """What the server counted: into the session's totals, and as the
        size of the conversation as it now stands."""
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            if isinstance(usage.get(key), int):
                self.totals[key] += usage[key]
        if isinstance(usage.get("prompt_tokens"), int):
            self._measured = (len(self.messages),
                              usage["prompt_tokens"] + (usage.get("completion_tokens") or 0))

    def _keep_shown(self, messages, accumulator):
        shown = self.client.redactor.redact(accumulator.text())
        if shown:   # the user read it: keep it
            self.messages = messages + [{"role": "assistant", "content": shown}]
            self.cut_short = True

    def _tokens(self, messages):
        """Tokens messages would take: the server's own count where it gave one."""
        n, tokens = self._measured or (0, 0)
        if n > min(len(messages), len(self.messages)) or any(
                a is not b for a, b in zip(messages[:n], self.messages[:n])):
            n, tokens = 0, 0   # not the conversation the server counted
        return tokens + estimate_tokens(messages[n:])

    def _fit(self, messages, limit=None):
        """messages fitted to limit (default: max_context) by fit_context."""
        limit = limit or self.max_context
        if not limit:
            return messages
        fitted, dropped = fit_context(messages, limit, self._tokens(messages))
        if dropped:
            self.notify("dropped the %d oldest message%s to stay within %d tokens of context"
                        % (dropped, "" if dropped == 1 else "s", limit))
        return fitted


# ---------------------------------------------------------------------------
# The application starts here; the reference client above needs none of it.
# Its own imports, and the names it adds to __all__.
# ---------------------------------------------------------------------------

import argparse
import atexit
import codecs
import configparser
import contextlib
import difflib
import functools
import glob
import hashlib
import mimetypes
import os
import select
import signal
import stat
import subprocess
import tempfile
import threading
import unicodedata
import wave
try:
    import fcntl     # to lock the kept conversations while one is written
    import termios   # to discard typeahead before a consent question
except ImportError:   # Windows
    fcntl = termios = None
# readline is imported only for a terminal: importing it changes how input()
# reads and may write to the terminal.

__all__ += ["keep_alive", "ReplyPrinter", "Tools", "Console", "main"]


# ---------------------------------------------------------------------------
# One connection for the whole chat: keep_alive() is the connection layer
# main() gives Client (its connections), in place of urllib's own.
# Lifting: needs StaleConnection, url_origin, may_carry_credentials and
# READ_SIZE from the HTTP section.
# ---------------------------------------------------------------------------

MAX_INTERIM = 16   # 1xx interim answers (103 Early Hints...) skipped before one gives up


def keep_alive(on_wait=None):
    """A urllib.request handler for Client's connections that keeps the
    connection to each server open between requests and sends the next
    request on it (HTTP/1.1 keep-alive), for http and https, direct or
    through a proxy's CONNECT tunnel; no connection is shared between hosts.

    A connection is used again only if its last answer was a success read
    to its end without Connection: close (an HTTP/1.0 server, an error, a
    stream cut short, an interrupted reply, anything it did not expect:
    each closes it for good), and if nothing arrived on it while it was
    idle (the server closed it, or wrote what no request asked for).  One
    that proves closed as the next request goes out, before any byte of an
    answer, raises StaleConnection: Client then sends the request again on
    a new one.  1xx interim answers are skipped.  on_wait(what) hears what
    each request waits for: a new connection, then the answer."""
    _import_network()
    on_wait = on_wait or (lambda what: None)

    class Response(http.client.HTTPResponse):
        reusable = False   # set by close(): a success, read to its end
        owner = None       # the connection it came on, until it is closed

        def _read_status(self):
            # RFC 9110 15.2: a client skips the interim answers it does not
            # know; http.client skips only 100 (which begin() handles).
            for _ in range(MAX_INTERIM):
                version, status, reason = super()._read_status()
                if status == 100 or not 101 < status < 200:
                    return version, status, reason
                http.client.parse_headers(self.fp)
            raise http.client.HTTPException("more than %d interim answers" % MAX_INTERIM)

        def close(self):
            owner, self.owner = self.owner, None
            if owner is not None:
                self.reusable = 200 <= self.status < 300 and not self.will_close and (
                    self.fp is None or (not self.chunked and self.length == 0))
            super().close()
            if owner is not None and not self.reusable:
                owner.close()

        def finish(self, wait=0.25, limit=READ_SIZE):
            """Read the rest of the body (after a stream's last event, the end
            of its chunked body), if it is small and comes within wait seconds,
            so that the connection can take the next request."""
            if self.owner is None or self.owner.sock is None:
                return
            self.owner.sock.settimeout(wait)
            try:
                while limit > 0:
                    data = self.read1(limit)
                    if not data:
                        return
                    limit -= len(data)
            except (OSError, http.client.HTTPException):
                pass   # then it is not read to its end, and closes

    tls = [urllib.request.HTTPSHandler] if ssl else []   # (no ssl: http only)

    class KeepAlive(urllib.request.HTTPHandler, *tls):
        def __init__(self):
            for handler in tls:
                handler.__init__(self)   # the default TLS settings
            self.idle = {}   # (hop, tunnel, origin) -> (connection, its last answer)

        def http_open(self, request):
            return self._open(http.client.HTTPConnection, request)

        def https_open(self, request):
            if ssl is None:
                raise urllib.error.URLError("this Python has no ssl module, so no https")
            return self._open(http.client.HTTPSConnection, request)

        def _open(self, connection_class, request):
            # The hop, the tunnel's end, and the origin: none is shared.
            key = (request.host, request._tunnel_host, url_origin(request.full_url))
            connection = self._idle(key)
            reused = connection is not None
            if not reused:
                on_wait("connecting to %s" % urlsplit(request.full_url).hostname)
                connection = connection_class(request.host, timeout=request.timeout)
                connection.response_class = Response
            try:
                response = self._send(connection, request, tunnel=not reused)
            except BaseException as exc:
                connection.close()
                # (RemoteDisconnected is a ConnectionResetError: no status line)
                if reused and isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                    raise StaleConnection("the connection kept open was closed") from None
                if isinstance(exc, OSError):
                    raise urllib.error.URLError(exc) from None
                raise
            response.owner = connection
            if not response.will_close:
                self.idle[key] = (connection, response)
            response.url, response.msg = request.get_full_url(), response.reason
            return response

        def close(self):
            for connection, _ in self.idle.values():
                connection.close()
            self.idle.clear()

        def _idle(self, key):
            """The connection kept for key, if it can take another request."""
            connection, last = self.idle.pop(key, (None, None))
            if connection is None or not last.isclosed():
                return None   # (an answer still being read keeps its connection)
            closed = connection.sock is None or not last.reusable
            if not closed:   # readable while idle: closed by the server, or stale bytes
                closed = bool(select.select([connection.sock], [], [], 0)[0])
            if closed:
                connection.close()
                return None
            return connection

        def _send(self, connection, request, tunnel):
            headers = dict(request.unredirected_hdrs)
            headers.update((k, v) for k, v in request.headers.items() if k not in headers)
            headers = {name.title(): value for name, value in headers.items()}
            hop = "http://" + request.host   # the proxy, when there is one
            proxy_auth = {k: headers.pop(k) for k in list(headers) if k == "Proxy-Authorization"}
            if request._tunnel_host and tunnel:   # CONNECT goes to the proxy
                connection.set_tunnel(request._tunnel_host, headers=proxy_auth)
            elif may_carry_credentials(request.full_url if request._tunnel_host else hop, hop):
                headers.update(proxy_auth)   # (inside a tunnel it would reach the API host)
            connection.timeout = request.timeout
            if connection.sock is not None:
                connection.sock.settimeout(request.timeout)
            connection.request(request.get_method(), request.selector, request.data, headers)
            on_wait(getattr(request, "waiting", None))   # sent: now the answer
            return connection.getresponse()

    return KeepAlive()


# ---------------------------------------------------------------------------
# Text for a terminal: the one sanitizer, the streams chat.py writes to,
# secrets kept off the screen, consent asked on the terminal.
# Lifting: needs the standard library only.
# ---------------------------------------------------------------------------

# What a terminal would act on rather than show: C0 controls but tab and
# newline, DEL, C1 controls, and the bidirectional overrides and isolates;
# and lone surrogates, which no terminal can be sent.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _visible(match):
    code = ord(match.group())
    if code < 0x20:
        return "^" + chr(code + 64)   # ESC shows as ^[, as cat -v and git show it
    if code == 0x7f:
        return "^?"
    return ("\\x%02x" if code <= 0x9f else "\\u%04x") % code


def sanitize(text):
    """text made safe for a terminal: every control character, and the
    escape sequences ESC or CSI would start, shown as visible escapes
    (^[, \\x9b, \\u202e) instead of acted on; newline and tab kept."""
    return text if _UNSAFE.search(text) is None else _UNSAFE.sub(_visible, text)


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # no such method, or a closed stream
        return False


def _write_sanitized(stream, text, style=None):
    """The way to stderr (and to --check's stdout): text through the
    sanitizer, then in color style where the stream shows color, flushed."""
    text = sanitize(text)
    if style and getattr(stream, "color", False):
        body = text.rstrip("\n")   # color the words, not the line ending
        if body:
            text = "\x1b[%sm%s\x1b[0m%s" % (style, body, text[len(body):])
    stream.write(text)
    stream.flush()   # every time: before Python 3.9 a piped stderr is block-buffered


def _stdout_end(out):
    """Write what a redacting stdout still holds back, if it is one."""
    end = getattr(out, "end", None)
    if end is not None:
        end()


def _stdout_show(out, text):
    """Write text that came from the server to stdout: exact into a pipe or a
    file, where it is data; through the sanitizer onto a terminal."""
    _stdout_write(out, sanitize(text) if _is_terminal(out) else text)


def _stdout_write(out, text):
    """Write text to stdout and flush; a write that fails (a full disk, a
    closed descriptor) is a StdoutError that says so, not a traceback; a
    reader that went away is StdoutClosed, and what is written after it
    goes nowhere, so the turn it cut short can still end and be kept."""
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        _silence(out)
        raise StdoutClosed("the reader of stdout went away") from None
    except (OSError, ValueError) as exc:   # ValueError: written after a close
        raise StdoutError("cannot write to stdout: %s"
                          % (getattr(exc, "strerror", None) or exc)) from None


class _ErrorStream:
    """stderr as chat.py writes to it: every secret blanked out of what is
    written (servers quote requests, proxies quote headers, and the key must
    never show), and color, where the terminal should get it."""

    def __init__(self, stream, *, color=False, redactor=None, status=None):
        self._stream, self.color, self.status = stream, color, status
        self.redactor = Redactor() if redactor is None else redactor   # the run's one

    def write(self, text):
        if self.status is not None and text:
            self.status.clear()   # the status line goes before anything is written
        return self._stream.write(self.redactor.redact(text))

    def __getattr__(self, name):   # flush, isatty, fileno, ...
        return getattr(self._stream, name)


class _GuardedStdout:
    """stdout when something must happen at each write (a wrapper costs a
    call a write, so it is used only then): with a redactor, a server that
    echoes the key token by token is blanked too, since the tail that may
    begin a secret waits for what follows it (end() writes what is still
    held); with a status line on the same terminal, the line is erased
    before the reply is written."""

    def __init__(self, stream, *, redactor=None, status=None):
        self._stream, self._redactor, self._status = stream, redactor, status

    def write(self, text):
        if self._status is not None and text:
            self._status.clear()
        if self._redactor is not None:
            text = self._redactor.feed(text)
        return self._stream.write(text)

    def end(self):
        if self._redactor is not None:
            self._stream.write(self._redactor.release())

    def __getattr__(self, name):   # flush, isatty, fileno, ...
        return getattr(self._stream, name)


class StatusLine:
    """One dim line on a terminal saying what chat.py waits for and for how
    long (connecting to HOST... 2s, waiting for the model... 12s, running
    NAME... 3s, retry 2 of 3 in 4s), drawn once a wait passes DELAY seconds
    and redrawn in place every INTERVAL by a thread of its own.  clear()
    erases it without a trace (it never fills the width, so it never wraps)
    and ends the wait: the streams chat.py writes through call it first.
    redactor: blanks the run's secrets out of what it shows (an MCP
    server's progress may quote its token)."""

    DELAY, INTERVAL = 0.5, 0.25

    def __init__(self, stream, *, color=True, clock=time.monotonic, redactor=None):
        self._stream, self._color, self._clock = stream, color, clock
        self._redactor = redactor or Redactor()
        self._lock = threading.Lock()
        self._what = self._since = self._until = self._progress = None
        self._drawn = False
        self._thread = None
        self._holds = 0   # held(): blocks in which nothing is drawn

    def wait(self, what, until=None, progress=None):
        """chat.py now waits for what (None: for nothing more); until: the
        time.monotonic() it ends, to count down to; progress: how far it got.
        The same what again goes on counting from when it began."""
        with self._lock:
            if what != self._what:
                self._erase()
                self._since = self._clock()
            self._what, self._until, self._progress = what, until, progress
            if what is not None and self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()

    def clear(self):
        """Erase the line, if shown, and end the wait."""
        if self._what is not None or self._drawn:   # (nothing to do, nearly always)
            self.wait(None)

    @contextlib.contextmanager
    def held(self):
        """Draw nothing in the block: the cursor is on a line that is not
        the status line's to erase (the prompt, with what was typed)."""
        self.clear()
        with self._lock:
            self._holds += 1
        try:
            yield
        finally:
            with self._lock:
                self._holds -= 1
                self._what = None   # the wait it held ended with it

    def _run(self):
        while True:
            time.sleep(self.INTERVAL)
            with self._lock:
                if self._what is None:   # nothing waits: no wake-ups while idle
                    self._thread = None
                    return
                if self._clock() - self._since >= self.DELAY and not self._holds:
                    self._draw()

    def _draw(self):
        now = self._clock()
        if self._until is not None:
            text = "%s in %ds" % (self._what, max(math.ceil(self._until - now), 0))
        else:
            text = "%s... %ds" % (self._what, now - self._since)
        if self._progress:
            text += ", " + self._progress
        text = _fit_width(sanitize(self._redactor.redact(text)), _columns(self._stream) - 1)
        self._stream.write("\r%s\x1b[K" % ("\x1b[2m%s\x1b[0m" % text if self._color else text))
        self._stream.flush()
        self._drawn = True

    def _erase(self):
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False


def _columns(stream):
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80


def _fit_width(text, width):
    """text cut to width columns of a terminal (East Asian wide characters take two)."""
    used = 0
    for i, char in enumerate(text):
        used += 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if used > width:
            return text[:i]
    return text


def ask_consent(name, arguments, what):
    """Ask on the controlling terminal whether to run what (a command line,
    an MCP server's tool) for the model's call of the tool name with
    arguments (the canonical JSON text it will get); True, False, "always"
    (a: allow the tool for the session), None where there is no terminal.
    Never reads stdin, which may be a script, and discards what was typed
    before the question appeared: only an answer typed after it counts.
    Whatever the screen's height, the lines just above [y/N] name the tool
    and what runs; arguments too long for the screen are cut, and v shows
    them whole.  name and what are each shown on one line, their controls
    escaped (what names a server's tool cut to MAX_SHOWN_NAME: see
    McpTools.describe).  Ctrl-D answers no; Ctrl-C raises KeyboardInterrupt."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return None
    try:
        lines = indented_arguments(arguments).splitlines(True)
        rows, columns = _terminal_size(fd)
        name, what = _shown_name(name), _shown_name(what, None)   # (a command, whole)
        final = "chat.py: run the tool %s, that is %s? [y/N/a/v] " % (name, what)
        height = lambda text: len(sanitize(text)) // columns + 1   # noqa: E731 (wrapped)
        room = max(rows - 3 - height(final) - height("chat.py: the model calls %s" % name), 2)
        shown, used = [], 0
        for line in lines:
            used += height(line.rstrip("\n"))
            if used > room:
                shown.append("  ... %d more lines (v shows them all)\n"
                             % (len(lines) - len(shown)))
                break
            shown.append(line)
        cut = len(shown) < len(lines) or shown != lines
        if not cut:
            final = final.replace("/a/v]", "/a]")
        _discard_typeahead(fd)
        _write_tty(fd, "chat.py: the model calls %s with these arguments:\n%s%s"
                   % (name, "".join(shown), final))
        while True:
            answer = _read_tty_line(fd).lower()
            if answer in ("a", "always"):
                return "always"
            if answer != "v" or not cut:
                return answer in ("y", "yes")
            _write_tty(fd, "".join(lines) + final)
    finally:
        os.close(fd)


def _shown_name(text, limit=MAX_SHOWN_NAME):
    """A name as a question shows it: one line (newline and tab escaped as
    ^J and ^I, like every other control), at most limit characters (None:
    all of it)."""
    text = sanitize(text).replace("\n", "^J").replace("\t", "^I")
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def _terminal_size(fd):
    """(rows, columns) of the terminal fd: 24 by 80 where it does not say."""
    try:
        size = os.get_terminal_size(fd)
        return size.lines or 24, size.columns or 80
    except OSError:
        return 24, 80


def _discard_typeahead(fd):
    """Drop what was typed on the terminal and not yet read (a "yes" meant as
    the next message must not answer a question it was typed before)."""
    if termios is not None:
        try:
            termios.tcflush(fd, termios.TCIFLUSH)
        except termios.error:
            pass


def _write_tty(fd, text):
    os.write(fd, sanitize(text).encode("utf-8", "replace"))


def _read_tty_line(fd):
    """One line typed on the terminal fd, stripped; "" for Ctrl-D."""
    answer = b""
    try:
        answer = os.read(fd, 4096)   # the terminal hands over one whole line
    finally:
        if not answer.endswith(b"\n"):
            os.write(fd, b"\n")   # Ctrl-C or Ctrl-D: leave the question's line
    return answer.decode("utf-8", "replace").strip()


def _prompt(err, text):
    """A prompt for input(), sanitized, in color where err shows color;
    readline wants the color codes between \\001 and \\002 to measure it."""
    text = sanitize(text)
    if not getattr(err, "color", False):
        return text
    return "\001\x1b[1;36m\002%s\001\x1b[0m\002" % text


def _stderr_dim(err, text):
    _write_sanitized(err, text, "2")


# How the setting a ChatError names (its fix) is given to chat.py.
_FIXES = {
    "timeout": " (--timeout sets the limit)",
    "no_key": ": set OPENAI_API_KEY, or pass --api-key or --api-key-file",
    "key": ": check OPENAI_API_KEY, --api-key or --api-key-file",
    "withheld": ": name it with --base-url to give it a key (--api-key, --api-key-file), "
                "or -p NAME for a profile that has one",
    "base_url": " (--base-url sets it; chat.py --check looks for the API there)",
}


def explained(exc):
    """exc's line, with how to give chat.py the setting that mends it."""
    return str(exc) + _FIXES.get(getattr(exc, "fix", None), "")


def _stderr_notice(err, text):
    _write_sanitized(err, "chat.py: %s\n" % text, "31" if text.startswith("error:") else "2")


# ---------------------------------------------------------------------------
# Markdown highlighted as it streams.  Pure: text in, styled text out.
# Lifting: needs the standard library only.
# ---------------------------------------------------------------------------

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r" {0,3}#{1,6}(?: |$)")
_LIST = re.compile(r" *(?:[-*+]|\d{1,9}[.)])(?: |$)")
_QUOTE = re.compile(r" {0,3}>")
# Line starts that may still become one of the above once more text comes.
_UNDECIDED = re.compile(r" *(?:#{1,6}|`{1,}|~{1,}|[-*+]|\d{1,9}[.)]?)?$")
_SPECIAL = re.compile(r"[`*_\]\n]")
_SPECIAL_IN_LINK = re.compile(r"[`*_\])\n]")


_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+")   # CommonMark's line endings


def code_blocks(text):
    """The contents of the fenced code blocks in markdown text, without the
    fences, found in one pass over its lines (CommonMark 4.5): a block
    closes at a fence of its opening's character, at least as long, with
    only spaces after it; one left open runs to the end of the text; the
    opening fence's indentation is taken off each line of its contents."""
    blocks, fence, indent, body = [], None, 0, []
    for match in _LINE.finditer(text):
        line = match.group()
        opening = _FENCE.match(line)
        if fence is None:   # outside a block: a fence opens one
            if opening and not (opening.group(1)[0] == "`" and "`" in line[opening.end():]):
                fence, indent, body = opening.group(1), opening.start(1), []
        elif (opening and opening.group(1)[0] == fence[0]   # inside: a fence may close it
              and len(opening.group(1)) >= len(fence) and not line[opening.end():].strip()):
            blocks.append("".join(body))
            fence = None
        else:   # inside: a line of the contents
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))):] if indent else line)
    if fence is not None:
        blocks.append("".join(body))
    return blocks


class MarkdownHighlighter:
    """Color markdown for a terminal as it streams: headings, bold, italic,
    inline code, fenced code blocks and their language label, list markers,
    block quotes and link targets.

    feed() takes the text as it arrives and returns it with ANSI color
    codes added: no character is removed, added or moved, so the screen
    shows exactly the reply and copying from it gives the exact text.
    Nothing already returned is ever redrawn.  A line's first characters are
    held back only until its kind is known (a "#" may start a heading, a "`"
    a fence), and a run of markup characters at the end of a piece until the
    next character shows whether it opens or closes.  end() returns what is
    held back and resets the colors.
    """

    HEADING, BOLD, ITALIC, CODE = "1;36", "1", "3", "33"
    HOLD_LIMIT = 64   # characters held back at the most, so each is scanned a bounded number of times
    BLOCK, FENCE, LABEL, QUOTE, MARKER, LINK = "32", "2", "1;32", "2", "36", "4;34"

    def __init__(self):
        self._held = ""          # text not yet returned
        self._at_start = True    # the next character starts a line
        self._fence = None       # the fence that opened the code block we are in
        self._block = ""         # the style of the whole line
        self._bold = self._italic = False
        self._code = 0           # the length of the backticks that opened inline code
        self._link = False       # inside a link's (target)
        self._previous = "\n"    # the character before the held text
        self._active = ""        # the codes in force on the terminal

    def feed(self, text):
        """Return text with color codes, less what must wait for more text."""
        data, self._held = self._held + text, ""
        out = []
        self._scan(data, out, final=False)
        return "".join(out)

    def end(self):
        """Return what was held back, then reset the terminal's colors."""
        data, self._held = self._held, ""
        out = []
        self._scan(data, out, final=True)
        self._style(out, "")
        return "".join(out)

    def _style(self, out, codes):
        if codes != self._active:
            out.append("\x1b[0m" if not codes else
                       "\x1b[%sm" % codes if not self._active else "\x1b[0;%sm" % codes)
            self._active = codes

    def _inline_style(self):
        codes = [self._block] if self._block else []
        if self._code:
            codes.append(self.CODE)
        else:
            codes += [c for c, on in ((self.BOLD, self._bold), (self.ITALIC, self._italic)) if on]
        if self._link:
            codes.append(self.LINK)
        return ";".join(codes)

    def _scan(self, data, out, final):
        i, n = 0, len(data)
        while i < n:
            if self._at_start:
                i = self._line_start(data, i, out, final)
                if i < 0:
                    return
                continue
            if self._fence is not None:   # a code block's line: no markdown in it
                j = data.find("\n", i)
                j = n if j < 0 else j
                out.append(data[i:j])
                i = j
                if j < n:
                    self._end_line(out)
                    i += 1
                continue
            match = (_SPECIAL_IN_LINK if self._link else _SPECIAL).search(data, i)
            j = n if match is None else match.start()
            if j > i:
                out.append(data[i:j])
                self._previous = data[j - 1]
                i = j
            if match is None:
                return
            char = data[i]
            if char == "\n":
                self._end_line(out)
                i += 1
            elif char == "]":
                if i + 1 == n and not final:
                    self._held = data[i:]
                    return
                out.append("]")
                self._previous = "]"
                i += 1
                if i < n and data[i] == "(" and not self._code:
                    self._link = True
                    self._style(out, self._inline_style())
            elif char == ")":   # the end of a link's target
                out.append(")")
                self._link = False
                self._style(out, self._inline_style())
                self._previous = ")"
                i += 1
            else:
                i = self._markers(data, i, out, final)
                if i < 0:
                    return

    def _markers(self, data, i, out, final):
        """The run of ` or * or _ at i; return where it ends, or -1 if it is
        held back until the next character shows what it is."""
        char, j, n = data[i], i, len(data)
        while j < n and data[j] == char:
            j += 1
        if j == n and not final and j - i <= self.HOLD_LIMIT:
            self._held = data[i:]   # the run may go on, or what follows matters
            return -1
        if j - i > self.HOLD_LIMIT:   # markup is never this long: plain text, and
            out.append(data[i:j])     # what is held stays small (linear)
        else:
            self._run(data[i:j], data[j] if j < n else " ", out)
        self._previous = char
        return j

    def _run(self, run, after, out):
        """A run of ` or * or _: code, bold or italic opening or closing."""
        if run[0] == "`":
            self._code_run(run, out)
        elif self._code:   # inside code, * and _ are text
            out.append(run)
        else:
            self._emphasis_run(run, after, out)

    def _code_run(self, run, out):
        """Backticks open inline code; a run of the same length closes it."""
        if not self._code:
            self._code = len(run)
            self._style(out, self._inline_style())
            out.append(run)
        else:
            out.append(run)
            if len(run) == self._code:
                self._code = 0
                self._style(out, self._inline_style())

    def _emphasis_run(self, run, after, out):
        """* or _ by CommonMark's delimiter-run rules (spec section 6.2): a
        left-flanking run may open, a right-flanking one may close, and "_"
        neither opens nor closes inside a word, so snake_case stays plain.
        One character is italic, two bold, three both."""
        before = self._previous
        space_after, space_before = after.isspace(), before.isspace()
        punct_after = not after.isalnum() and not space_after
        punct_before = not before.isalnum() and not space_before
        left = not space_after and (not punct_after or space_before or punct_before)
        right = not space_before and (not punct_before or space_after or punct_after)
        if run[0] == "_":
            can_open = left and (not right or punct_before)
            can_close = right and (not left or punct_after)
        else:
            can_open, can_close = left, right
        styles = ["_bold"] if len(run) == 2 else ["_italic"] if len(run) == 1 else ["_bold", "_italic"]
        closing = [name for name in styles if getattr(self, name) and can_close]
        opening = [name for name in styles if not getattr(self, name) and can_open]
        for name in opening:
            setattr(self, name, True)
        self._style(out, self._inline_style())
        out.append(run)
        for name in closing:
            setattr(self, name, False)
        self._style(out, self._inline_style())

    def _line_start(self, data, i, out, final):
        """Decide what kind of line starts at i, write its marker; return where
        the rest of the line starts, or -1 if the start must wait for more."""
        end = data.find("\n", i)
        complete = end >= 0 or final or len(data) - i > self.HOLD_LIMIT
        line = data[i:] if end < 0 else data[i:end]
        if self._fence is not None:
            fence = _FENCE.match(line)
            closing = (fence and fence.group(1)[0] == self._fence[0]
                       and len(fence.group(1)) >= len(self._fence)
                       and not line[fence.end():].strip())
            if closing:
                if not complete:
                    self._held = data[i:]
                    return -1
                self._style(out, self.FENCE)
                out.append(line)
                self._fence = None
                self._at_start = False
                return i + len(line)
            if not complete and _UNDECIDED.match(line) and line.strip(" `~") == "":
                self._held = data[i:]
                return -1
            self._block = self.BLOCK
            self._style(out, self.BLOCK)
            self._at_start = False
            return i
        if not complete and _UNDECIDED.match(line):
            self._held = data[i:]
            return -1
        self._at_start = False
        fence = _FENCE.match(line)
        if fence and not (fence.group(1)[0] == "`" and "`" in line[fence.end():]):
            if not complete:   # the language label ends with the line
                self._held, self._at_start = data[i:], True
                return -1
            self._fence = fence.group(1)
            self._style(out, self.FENCE)
            out.append(line[:fence.end()])
            self._style(out, self.LABEL)
            out.append(line[fence.end():])
            return i + len(line)
        if _HEADING.match(line) or _QUOTE.match(line):   # the whole line is styled
            self._block = self.HEADING if _HEADING.match(line) else self.QUOTE
            self._style(out, self._block)
            return i
        marker = _LIST.match(line)
        if marker:
            self._style(out, self.MARKER)
            out.append(line[:marker.end()])
            self._style(out, "")
            self._previous = " "
            return i + marker.end()
        return i

    def _end_line(self, out):
        """Inline styles end with their line; so does a heading or a quote."""
        self._block, self._bold, self._italic, self._code, self._link = "", False, False, 0, False
        self._style(out, "")
        out.append("\n")
        self._previous, self._at_start = "\n", True


# ---------------------------------------------------------------------------
# Showing a reply: text as it arrives, then notices.
# Lifting: needs the terminal text and markdown sections, Printer and tool_calls.
# ---------------------------------------------------------------------------

class ReplyPrinter(Printer):
    """Write a reply's text to out as it arrives; notices go to err.

    With n > 1, the first unfinished choice streams live and the others are
    held until it finishes, each under its own label on err; a choice at or
    past n is never shown.  show_text: write the text at all (not with
    --output json).  reasoning: show the live choice's reasoning on err, dim,
    as it arrives.  usage: after the reply, show its token counts and speed;
    logprobs: show each token's probability.  audio: the AudioFile to write a
    spoken reply to.  status: the StatusLine that says, while nothing is
    shown, how much hidden reasoning came.  markdown:
    highlight the text as markdown (on a terminal only).  clock: a monotonic
    clock, for the timing.  asked(call): True when the consent question will
    show a tool call of the first choice, which is then not shown here too.
    On a terminal the text goes through the sanitizer; into a pipe or a file
    it is written exactly as it came.
    """

    def __init__(self, out, err, *, n=1, show_text=True, reasoning=True, usage=False,
                 logprobs=False, audio=None, markdown=False, status=None,
                 clock=time.monotonic, asked=None):
        self.out, self.err, self.n, self.show_text = out, err, n, show_text
        self.asked = asked or (lambda call: False)
        self.terminal = _is_terminal(out)
        self.markdown = markdown and self.terminal
        self._highlighter = MarkdownHighlighter() if self.markdown else None
        self.reasoning, self.usage, self.logprobs = reasoning and show_text, usage, logprobs
        self.audio, self.status, self.clock = audio, status, clock
        self._hidden = 0         # pieces of reasoning not shown (for the status line)
        self._pieces = 0         # pieces of text not shown here (for the status line)
        self._started, self._first = clock(), None   # for time to first token
        self._current = None     # the choice being written
        self._held = {}          # index -> text waiting its turn
        self._finished = set()
        self._ends_line = True   # no text, or text ending in a newline
        self._thinking = False   # reasoning is on err and its line is open
        self._half = ""          # a lone high surrogate waiting for its pair

    def chunk(self, chunk):
        """Show one chunk's text (and the live choice's reasoning)."""
        if self._first is None:
            self._first = self.clock()
        if self.status is not None and not (self.show_text and self.terminal):
            self._progress(chunk)   # the text goes elsewhere: the status line says how it goes
        if not self.show_text:
            return
        for choice in chunk.get("choices") or ():
            index = choice.get("index") or 0   # (null, as everywhere, is absent)
            if 0 <= index < self.n:
                self._choice(index, choice)

    def _choice(self, index, choice):
        """One choice's piece: written, held for its turn, or its reasoning shown."""
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if text is None and delta.get("audio"):
            text = delta["audio"].get("transcript")
        if self._current is None:
            self._switch_to(index)
        if index == self._current:
            if self.reasoning and len(delta) > 1 or text is None:
                self._reasoning(delta.get("reasoning_content") or delta.get("reasoning"))
            if text:
                self._write(text)
        elif text:
            self._held.setdefault(index, []).append(text)
        if choice.get("finish_reason"):
            self._finished.add(index)
            if index == self._current and self._held:
                self._switch_to(min(self._held))
                while self._current in self._finished and self._held:
                    self._switch_to(min(self._held))

    def _progress(self, chunk):
        """With the reply going into a pipe (or not shown), the status line
        counts its pieces (about a token each) and their rate."""
        if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or ()):
            self._pieces += 1
            elapsed = self.clock() - self._first
            self.status.wait("receiving the reply", progress="%d tokens%s" % (
                self._pieces, ", %d tokens/s" % (self._pieces / elapsed) if elapsed >= 1 else ""))

    def _reasoning(self, thought):
        """Show the live choice's reasoning; hidden, count it on the status line
        (unless the reply's line is open on the same screen: it is not its own)."""
        if thought and self.reasoning:
            self._think(thought)
        elif thought and self.status is not None and (self._ends_line or not self.terminal):
            self._hidden += 1   # about a token a piece
            self.status.wait("waiting for the model",
                             progress="%d reasoning tokens" % self._hidden)

    def _switch_to(self, index):
        self.end_line()
        self._current = index
        if self.n > 1:
            _stderr_notice(self.err, "choice %d:" % (index + 1))
        held = self._held.pop(index, None)
        if held:
            self._write("".join(held))

    def _think(self, text):
        if not self._thinking:
            self.end_line()
            self._thinking = True
        _stderr_dim(self.err, text)

    def _write(self, text):
        if self._thinking:   # the answer starts: end the reasoning's line
            self._thinking = False
            _write_sanitized(self.err, "\n\n")
        if self._half or "\ud800" <= text[0] <= "\udfff" or "\ud800" <= text[-1] <= "\udfff":
            text = self._pair_halves(text)   # (rare: an emoji cut between two chunks)
            if not text:
                return
        self._ends_line = text[-1] == "\n"   # first, in case Ctrl-C lands mid-write
        if self.terminal:
            text = sanitize(text)
            if self._highlighter:
                text = self._highlighter.feed(text)
        _stdout_write(self.out, text)

    def _pair_halves(self, text):
        """text with a surrogate half held from the last piece joined to it, and
        a high half at its end held for the next; a lone half is U+FFFD."""
        text, self._half = self._half + text, ""
        if "\ud800" <= text[-1] <= "\udbff":
            text, self._half = text[:-1], text[-1]
        return mend_surrogates(text)

    def end_line(self):
        """End the text with a newline, if it has none, so notices start
        afresh, with the terminal's colors reset."""
        if self._half:
            self._half = ""
            self._write("\ufffd")   # its pair never came
        if self._thinking:
            self._thinking = False
            _write_sanitized(self.err, "\n")
        if not self._ends_line:
            self._write("\n")
        if self._highlighter:
            _stdout_write(self.out, self._highlighter.end())
        _stdout_end(self.out)

    def finish(self, completion):
        """Show what was held back, then a notice of each kind the reply calls
        for: refusals, cut-offs, tool calls, sources, logprobs; usage last.
        The spoken reply, if any, goes to its file."""
        if self.show_text:
            for index in sorted(self._held):
                self._switch_to(index)
            self.end_line()
        for choice in completion.get("choices") or ():
            message = choice.get("message") or {}
            label = "choice %d: " % ((choice.get("index") or 0) + 1) if self.n > 1 else ""
            self._show_refusal(label, message.get("refusal"))
            self._show_cut_off(label, choice.get("finish_reason"))
            for call in tool_calls(message):
                if not (choice.get("index", 0) == 0 and self.asked(call)):
                    self._show_call(label, call)
            self._show_sources(label, message.get("annotations"))
            if self.logprobs and choice.get("logprobs"):
                self._show_logprobs(label, choice["logprobs"].get("content") or [])
            if self.audio and not choice.get("index"):
                self.audio.write(message.get("audio"), lambda text: _stderr_notice(self.err, text))
        if self.usage:
            self._show_usage(completion.get("usage"))
        if self.status is not None:
            self.status.clear()   # the reply is whole: nothing waits

    def _show_refusal(self, label, refusal):
        if refusal:
            _stderr_notice(self.err, "%sthe model refused: %s" % (label, refusal))

    def _show_cut_off(self, label, reason):
        if reason in ("length", "content_filter"):
            _stderr_notice(self.err, "%sthe reply was %s (finish_reason: %s)" % (label, {
                "length": "cut off at the token limit",
                "content_filter": "stopped by the content filter"}[reason], reason))

    def _show_call(self, label, call):
        function = call.get("function") or call.get("custom") or {}
        _stderr_notice(self.err, "%sthe model calls %s%s:" % (
            label, _shown_name(str(function.get("name"))),
            " (%s)" % _shown_name(str(call["id"])) if call.get("id") else ""))
        if call.get("type") == "custom":   # free text, shown as it is
            _stderr_dim(self.err, "".join("  %s\n" % line for line in
                                          str(function.get("input") or "").splitlines()))
        else:
            _stderr_dim(self.err, indented_arguments(function.get("arguments")))

    def _show_sources(self, label, annotations):
        cited = [a.get("url_citation") for a in annotations or ()
                 if isinstance(a, dict) and a.get("type") == "url_citation"]
        cited = [c for c in cited if isinstance(c, dict) and c.get("url")]
        if cited:
            _stderr_notice(self.err, "%ssources:" % label)
            _stderr_dim(self.err, "".join("  [%d] %s%s\n" % (
                i, "%s - " % c["title"] if c.get("title") else "", c["url"])
                for i, c in enumerate(cited, 1)))

    def _show_logprobs(self, label, tokens):
        lines = ["%slogprobs, token by token:" % label]
        for item in tokens:
            if not isinstance(item, dict):
                continue   # not a token: nothing to show
            line = "  %-20s %s" % (json.dumps(item.get("token"), ensure_ascii=False),
                                   _probability(item.get("logprob")))
            others = [t for t in item.get("top_logprobs") or ()
                      if isinstance(t, dict) and t.get("token") != item.get("token")]
            if others:
                line += "   " + "  ".join("%s %s" % (json.dumps(t.get("token"), ensure_ascii=False),
                                                     _probability(t.get("logprob")).strip())
                                          for t in others)
            lines.append(line)
        _stderr_notice(self.err, lines[0])
        _stderr_dim(self.err, "".join(line + "\n" for line in lines[1:]))

    def _show_usage(self, usage):
        now = self.clock()
        timing = ""
        if self._first is not None:
            timing = "; first token after %d ms" % ((self._first - self._started) * 1000)
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            rate = ""
            if self._first is not None and now > self._first:
                rate = "; %.1f tokens/s" % (usage["completion_tokens"] / (now - self._first))
            _stderr_notice(self.err, "usage: %s prompt + %s completion = %s tokens%s%s%s" % (
                usage.get("prompt_tokens"), usage["completion_tokens"],
                usage.get("total_tokens"), _usage_details(usage), timing, rate))
        else:
            _stderr_notice(self.err, "usage: the server reported none%s" % timing)


def _probability(logprob):
    """A log probability as a percentage; "?" for what is not one."""
    if isinstance(logprob, bool) or not isinstance(logprob, (int, float)) or logprob != logprob:
        return "     ?"
    return "%6.2f%%" % (100 * math.exp(min(logprob, 0.0)))   # a logprob above 0 is a lie


def _usage_details(usage):
    """The details a usage report gives beyond its totals, in parentheses, or ""."""
    shown = []
    for group, key, name in (
            ("prompt_tokens_details", "cached_tokens", "cached"),
            ("prompt_tokens_details", "audio_tokens", "audio in"),
            ("completion_tokens_details", "reasoning_tokens", "reasoning"),
            ("completion_tokens_details", "audio_tokens", "audio out"),
            ("completion_tokens_details", "accepted_prediction_tokens", "prediction accepted"),
            ("completion_tokens_details", "rejected_prediction_tokens", "prediction rejected")):
        value = (usage.get(group) or {}).get(key) if isinstance(usage.get(group), dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value:
            shown.append("%s %d" % (name, value))
    return " (%s)" % ", ".join(shown) if shown else ""


# ---------------------------------------------------------------------------
# Files: conversations saved and kept, attachments read.
# Lifting: needs the errors and parse_conversation.
# ---------------------------------------------------------------------------

class AudioFile:
    """Where --audio-out writes a spoken reply: path, and the format it was
    asked for (pcm16 into a .wav file is given a WAV header)."""

    def __init__(self, path, format):
        self.path, self.format = path, format

    def write(self, audio, notify):
        """Write a reply's audio object ({"data": base64, ...}); notify(text) says how it went."""
        data = audio.get("data") if isinstance(audio, dict) else None
        if not data:
            notify("the reply has no audio; nothing was written to %s" % self.path)
            return
        try:
            decoded = decode_base64_pieces(data)
        except (ValueError, TypeError):
            notify("error: the server's audio is not base64; nothing was written")
            return
        if self.format == "pcm16" and self.path.lower().endswith(".wav"):
            decoded = wav_bytes(decoded)
        write_atomically(self.path, decoded)
        notify("the spoken reply is in %s" % self.path)


def read_bounded(path, what, limit):
    """The bytes of a file, at most limit of them; a UsageError naming what
    it is for otherwise.  The size the file system reports is not trusted
    (/dev/zero reports 0): the reading stops past the limit."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UsageError("cannot read %s %s: %s" % (what, path, exc.strerror)) from None
    if len(data) > limit:
        raise UsageError("%s %s is over %d MiB, the limit" % (what, path, limit >> 20))
    return data


def read_json_file(path, what):
    """The JSON in a file of at most MAX_BODY bytes; a UsageError naming what
    it is for if that fails."""
    data = read_bounded(path, what, MAX_BODY)
    try:
        return parse_json(data.decode("utf-8"))
    except ValueError as exc:   # not UTF-8 is a ValueError too
        raise UsageError("%s %s is not valid JSON: %s" % (what, path, exc)) from None


def load_conversation(chat, path, *, model=None, params=None, body=None):
    """chat.load() the conversation saved at path (body: its JSON, where it
    was read already, chat.py's metadata taken out); a UsageError names the file."""
    if body is None:
        body = split_origin(read_json_file(path, "the conversation"))[0]
    try:
        chat.load(body, model=model, params=params)
    except UsageError as exc:
        raise UsageError("cannot load %s: %s" % (path, exc)) from None


def save_conversation(path, body, limit=None):
    """Write body to path as JSON, atomically, readable by the owner only:
    a field a line and a message a line, readable and quick to write (json's
    indent= would use its slow pure-Python encoder on every turn), written
    piece by piece rather than built whole in memory first.  Returns the
    bytes written; more than limit of them is an OutputError."""
    def pieces():
        for n, (key, value) in enumerate(body.items()):
            yield "%s  %s: " % ("{\n" if n == 0 else ",\n", json.dumps(key))
            if key == "messages" and isinstance(value, list) and value:
                for i, message in enumerate(value):
                    yield "%s    %s" % ("[\n" if i == 0 else ",\n", json.dumps(message, ensure_ascii=False))
                yield "\n  ]"
            else:
                yield json.dumps(value, ensure_ascii=False)
        yield "\n}\n" if body else "{}\n"
    return write_atomically(path, (piece.encode("utf-8") for piece in pieces()), limit)


def write_atomically(path, data, limit=None):
    """Write data (bytes, or an iterable of bytes) to path, readable by the
    owner only; return how many bytes were written.

    The bytes go to a temporary file in the same folder, are flushed to disk,
    then renamed over path: a crash or a full disk leaves the old file whole.
    More than limit bytes is an OutputError, and nothing is written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(prefix=".chat-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError("cannot save to %s: %s" % (path, exc.strerror)) from None
    try:
        size = 0
        with os.fdopen(fd, "wb") as f:   # mkstemp made it 0600
            for piece in [data] if isinstance(data, bytes) else data:
                size += len(piece)
                if limit is not None and size > limit:
                    raise FileTooLarge("%s would be over %d MiB, more than chat.py reads back; "
                                      "it was left as it was" % (path, limit >> 20))
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as exc:   # whatever ends the write, no temporary file stays
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise OutputError("cannot save to %s: %s" % (path, exc.strerror)) from None
        raise
    try:   # make the rename itself durable
        folder_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
    except OSError:
        pass
    return size


# Where a kept conversation was held goes in the request body's own
# metadata (string pairs the API accepts and stores), under these keys; it is
# taken out again before the body is loaded, so chat.py never sends it.
ORIGIN = ("chat_py_base_url", "chat_py_profile", "chat_py_forked_from", "chat_py_continues")


def with_origin(body, origin):
    """body with origin ({key in ORIGIN: text}) in its metadata."""
    metadata = dict(body.get("metadata") or {}, **{k: v for k, v in origin.items() if v})
    return dict(body, metadata=metadata) if metadata else body


def split_origin(body):
    """(body without chat.py's metadata, that metadata as a dict)."""
    metadata = body.get("metadata") if isinstance(body, dict) else None
    if not isinstance(metadata, dict) or not any(k in metadata for k in ORIGIN):
        return body, {}
    origin = {k: v for k, v in metadata.items() if k in ORIGIN and isinstance(v, str)}
    rest = {k: v for k, v in metadata.items() if k not in ORIGIN}
    body = {k: v for k, v in body.items() if k != "metadata"}
    if rest:
        body["metadata"] = rest
    return body, origin


class ConversationLog:
    """Every conversation kept, one file each, as a replayable request body
    (as --save writes it) in folder: made 0700 (whatever the umask or its
    mode before), files 0600, written atomically, never the key.  A
    conversation's ID is its file's name; a new one is created exclusively,
    with 32 random bits, so conversations begun at once never collide."""

    STALE = 3600   # seconds after which a temporary file left by a killed write goes

    def __init__(self, folder):
        self.folder = folder

    def prepare(self):
        """Make the folder (yours alone) and clear out stale temporary files."""
        try:
            private_folder(os.path.dirname(self.folder))   # chat.py's own state folder
            private_folder(self.folder)
        except OSError as exc:
            raise OutputError("cannot keep the conversation in %s: %s"
                              % (self.folder, exc.strerror)) from None
        now = time.time()
        for name in _listdir(self.folder):
            if name.startswith(".chat-") and name.endswith(".tmp"):
                path = os.path.join(self.folder, name)
                try:
                    if now - os.stat(path).st_mtime > self.STALE:
                        os.unlink(path)
                except OSError:
                    pass

    def new_path(self, clock=time.time):
        """A new conversation's file, created (empty) so no other can take it."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(clock()))
        while True:
            path = os.path.join(self.folder, "%s-%s.json" % (stamp, os.urandom(4).hex()))
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                return path
            except FileExistsError:
                continue
            except OSError as exc:
                raise OutputError("cannot keep the conversation in %s: %s"
                                  % (self.folder, exc.strerror)) from None

    @contextlib.contextmanager
    def locked(self):
        """Hold the folder's lock (where the platform has one) for a check and a write."""
        if fcntl is None:
            yield
            return
        fd = os.open(self.folder, os.O_RDONLY)   # the folder itself: no lock file to leave
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)   # (and with it the lock)

    def entries(self, notify=None):
        """(ID, path, modified, body) of the kept conversations, newest first,
        each file read only when its turn comes.  Only regular files are read
        (a FIFO would hang); one that is not a conversation is skipped, and the
        skipped get one notice when the iteration ends (close() it when
        stopping early).  A new conversation's still empty file is no notice."""
        skipped = []
        try:
            for modified, name in self._dated():
                path = os.path.join(self.folder, name)
                try:
                    body = read_json_file(path, "the conversation")
                    parse_conversation(split_origin(body)[0])
                except UsageError:
                    if _file_size(path):
                        skipped.append(name)
                    continue
                yield name[:-5], path, modified, body
        finally:
            if skipped and notify:
                notify("skipped %d file%s in %s that %s not conversations: %s" % (
                    len(skipped), "" if len(skipped) == 1 else "s", self.folder,
                    "is" if len(skipped) == 1 else "are", ", ".join(sorted(skipped)[:3])))

    def _dated(self):
        """(modified, name) of the regular .json files in the folder, newest first."""
        dated = []
        for name in _listdir(self.folder):
            try:
                info = os.stat(os.path.join(self.folder, name))
            except OSError:
                continue
            if name.endswith(".json") and stat.S_ISREG(info.st_mode):
                dated.append((info.st_mtime, name))
        return sorted(dated, reverse=True)

    def latest(self, notify=None):
        """The path of the most recent conversation, or None."""
        entries = self.entries(notify)
        try:
            return next(entries)[1]
        except StopIteration:
            return None
        finally:
            entries.close()

    def find(self, wanted):
        """The path of the conversation whose ID is wanted, or is the only one
        that has wanted in it (a part is enough); a UsageError otherwise."""
        ids = [name[:-5] for _, name in self._dated()]
        matches = [id for id in ids if id == wanted] or [id for id in ids if wanted in id]
        if len(matches) != 1:
            raise UsageError(
                "no conversation has the ID %s; chat.py --list shows them" % wanted
                if not matches else "%s names %d conversations (%s); give more of the ID" % (
                    wanted, len(matches), ", ".join(matches[:4]) + (
                        ", ..." if len(matches) > 4 else "")))
        return os.path.join(self.folder, matches[0] + ".json")


def private_folder(path):
    """Make the folder path, readable by its owner alone whatever the umask
    or the mode it had (os.makedirs gives its mode to the last folder only)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if stat.S_IMODE(os.stat(path).st_mode) != 0o700:
        os.chmod(path, 0o700)


def _listdir(folder):
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _signature(path):
    """What tells whether a file was changed: its inode, size and time."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C in the block takes effect when it is done (a save is finished,
    not cut short); only the main thread can do this."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda *args: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if caught:
            raise KeyboardInterrupt


class Keeper:
    """Keeps one conversation after every turn: in the log (log, path None
    for a new one, seen: _signature(path) when it was read, origin: where it
    is held) and in --save's file (save_path).

    A turn is never lost: a kept file that another process changed since it
    was read is not overwritten; the conversation goes on in a new file that
    says where it forked from (forking rather than merging: each reply was
    written for the history its process sent).  A reply that would make the
    file larger than chat.py reads back goes on in a new file too, from the
    last user message on, that says which it continues.  A file made for a
    save that failed is removed, so no empty file is left.  Ctrl-C during a
    save takes effect once it is done.  A failure to keep it in the log is
    one notice a run, never the end of the chat; one to write --save's file
    is an error."""

    def __init__(self, log, *, path=None, seen=None, origin=None, save_path=None,
                 notify=None):
        self.log, self.path, self.save_path = log, path, save_path
        self.origin = dict(origin or {})
        self.notify = notify or (lambda text: None)
        self.seen = seen   # _signature() of path as this process read it
        self._prepared = self._failed = False
        self.start = 0     # chat.messages[start:] (after the system message) are kept
        self.size = _file_size(path) if path else 0

    def check(self, chat, content):
        """Refuse (UsageError), before it is sent, a turn that would make the
        kept conversation larger than chat.py can read back."""
        if self.log is None and not self.save_path:
            return
        size = self.size or len(json.dumps(chat.body()))
        size += len(json.dumps(content)) + 2**20   # and room for a reply
        if size > MAX_BODY:
            fresh = not self.size and len(chat.messages) <= _system_count(chat.messages)
            raise UsageError("%s %d MiB, more than chat.py can keep (%d MiB): %s%s" % (
                "this message is" if fresh else "this turn would make the conversation",
                size >> 20, MAX_BODY >> 20,
                "send less, or fewer attachments" if fresh else
                "start a new one (/reset, or without -c)",
                ", or keep nothing of it with --no-log" if self.log is not None else ""))

    def __call__(self, chat):
        body = chat.body()
        if self.log is not None and chat.messages:
            try:
                with _interrupts_deferred():
                    self._keep(chat)
            except FileTooLarge:   # not even in a new file: said as a failure, never lost quietly
                raise OutputError("this reply was shown but cannot be kept: with your last "
                                  "message it is over %d MiB, more than chat.py reads back "
                                  "(--save FILE keeps one this large)" % (MAX_BODY >> 20)) from None
            except ChatError as exc:
                if not self._failed:   # once a run: each turn would say the same
                    self._failed = True
                    self.notify("%s; the conversation is not kept this run (--no-log, or "
                                "log = false in the config, keeps nothing without this notice)"
                                % exc)
        if self.save_path:
            with _interrupts_deferred():
                save_conversation(self.save_path, body)

    def _kept_body(self, chat):
        """The request body kept: the system message and messages[start:]."""
        system = _system_count(chat.messages)
        body = chat.body()
        if self.start > system:
            body["messages"] = chat.messages[:system] + chat.messages[self.start:]
        return body

    def _keep(self, chat):
        if not self._prepared:   # once: make the folder private, clear old temporary files
            self.log.prepare()
            self._prepared = True
        try:
            self._save(self._kept_body(chat), self.origin)
        except FileTooLarge:
            last = max((i for i, m in enumerate(chat.messages) if m.get("role") == "user"),
                       default=0)
            if last <= max(self.start, _system_count(chat.messages)) or self.path is None:
                raise
            full, self.start = os.path.basename(self.path)[:-5], last
            self.path = None
            self._save(self._kept_body(chat), dict(self.origin, chat_py_continues=full))
            self.notify("%s is full (%d MiB); this conversation goes on as %s, from your last "
                        "message on" % (full, MAX_BODY >> 20, os.path.basename(self.path)[:-5]))

    def _save(self, body, origin):
        """Write body to the conversation's file (a new one for a conversation
        not kept yet, or one another process changed); path, origin, size and
        seen change only once it is written."""
        with self.log.locked():
            path, forked = self.path, None
            if path is not None and _signature(path) != self.seen:   # another process kept a turn
                forked = os.path.basename(path)[:-5]
                origin = dict(origin, chat_py_forked_from=forked)
                path = None
            if path is None:
                path = self.log.new_path()
                try:
                    size = save_conversation(path, with_origin(body, origin), MAX_BODY)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(path)   # made empty for this save: nothing to leave behind
                    raise
            else:
                size = save_conversation(path, with_origin(body, origin), MAX_BODY)
            self.path, self.origin, self.size, self.seen = path, origin, size, _signature(path)
        if forked:
            self.notify("%s was changed by another chat.py meanwhile; this conversation goes "
                        "on as %s, forked from it" % (forked, os.path.basename(path)[:-5]))


def conversation_summary(id, modified, body, origin=None):
    """One row of --list: ID, date, where it is held (the profile, else the
    host), model, turns, the first user line."""
    messages = body.get("messages") if isinstance(body, dict) else body
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    first = _text_of(users[0].get("content")) if users else ""
    first = _one_line(first)
    origin = origin or {}
    where = origin.get("chat_py_profile") or urlsplit(
        origin.get("chat_py_base_url") or "").hostname or "-"
    model = (body.get("model") if isinstance(body, dict) else None) or "-"
    return (id, time.strftime("%Y-%m-%d %H:%M", time.localtime(modified)),
            _shortened(where, 30), _shortened(str(model), 30),
            "%d turn%s" % (len(users), "" if len(users) == 1 else "s"),
            first[:60] + ("..." if len(first) > 60 else ""))


def _shortened(text, width):
    """text in at most width characters: a longer one keeps a third for its
    start and the rest for its end (a model's provider, then its size and
    variant), "..." between them."""
    if len(text) <= width:
        return text
    head = width // 3
    return text[:head] + "..." + text[len(text) - (width - 3 - head):]


def _text_of(content):
    """A message's content as text: its text parts joined, others named."""
    if isinstance(content, list):
        return " ".join(p["text"] if p.get("type") == "text" else "[%s]" % p.get("type")
                        for p in content if isinstance(p, dict))
    return content or ""


def conversation_markdown(id, body):
    """A kept conversation as readable Markdown: a heading per message, its
    text, its tool calls and their results."""
    lines = ["# %s (%s)" % (id, body.get("model") or "no model")]
    for message in body["messages"]:
        lines += ["", "## %s" % message.get("role"), ""]
        if message.get("role") == "tool":
            lines[-2] += " (result of %s)" % message.get("tool_call_id")
        text = _text_of(message.get("content"))
        if text:
            lines.append(text)
        for call in tool_calls(message):
            function = call.get("function") or {}
            lines += ["", "Calls `%s`%s:" % (function.get("name"),
                                              " (%s)" % call["id"] if call.get("id") else ""),
                      "```json", indented_arguments(function.get("arguments")).rstrip("\n"),
                      "```"]
    return "\n".join(lines) + "\n"


def wav_bytes(pcm):
    """A WAV file holding pcm: 16-bit little-endian mono at 24 kHz, the
    format the API streams audio in."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(pcm)
    return buffer.getvalue()


def _data_url(mime, data):
    return "data:%s;base64,%s" % (mime, base64.b64encode(data).decode("ascii"))


def image_part(source):
    """An image_url content part: a URL as it is, a local file as a data: URL."""
    if source.startswith(("http://", "https://", "data:")):
        return {"type": "image_url", "image_url": {"url": source}}
    data = read_bounded(source, "the image", MAX_IMAGE_BYTES)
    mime = next((m for magic, m in _IMAGE_MAGIC if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        mime = mimetypes.guess_type(source)[0]
    if not mime or not mime.startswith("image/"):
        raise UsageError("%s does not look like an image (PNG, JPEG, GIF or WebP)" % source)
    return {"type": "image_url", "image_url": {"url": _data_url(mime, data)}}


def audio_part(path):
    """An input_audio content part for recorded speech: WAV or MP3, told by content."""
    data = read_bounded(path, "the audio file", MAX_AUDIO_BYTES)
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        format = "wav"
    elif data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        format = "mp3"
    else:
        raise UsageError("%s is neither WAV nor MP3 audio; --audio takes those two" % path)
    return {"type": "input_audio", "input_audio": {
        "data": base64.b64encode(data).decode("ascii"), "format": format}}


def file_part(path):
    """A content part for a document: a PDF as a file part, UTF-8 text as a
    text part marked with the file's name, so the model can tell files apart."""
    data = read_bounded(path, "the file", MAX_FILE_BYTES)
    name = os.path.basename(path)
    if data.startswith(b"%PDF-"):
        return {"type": "file", "file": {"filename": name,
                                         "file_data": _data_url("application/pdf", data)}}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        raise UsageError("%s is neither a PDF nor UTF-8 text; --file takes those (images go "
                         "with --image, recorded speech with --audio)" % path)
    return {"type": "text", "text": '<file name="%s">\n%s%s</file>' % (
        name, text, "" if text.endswith("\n") or not text else "\n")}


# ---------------------------------------------------------------------------
# Tools: answering the model's calls, with the user's consent.
# Lifting: needs the errors, parse_value's loads and tool_calls.
# ---------------------------------------------------------------------------

class CommandTimeout(Exception):
    """A command ran past its time and was stopped."""


def run_command(argv, input=b"", *, timeout, limit):
    """Run argv (no shell) with input on its stdin; return (status, stdout,
    stderr), each output cut at limit bytes.  A command that writes more is
    stopped there (status None); one that runs past timeout seconds is
    stopped and raises CommandTimeout.  OSError if it cannot start."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    outputs = [b"", b""]

    def feed():
        try:
            proc.stdin.write(input)
        except OSError:   # it stopped reading: its business
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def drain(stream, i):
        outputs[i] = stream.read(limit + 1)   # bounded, whatever the command writes
        if len(outputs[i]) > limit:
            proc.kill()
        stream.close()

    threads = [threading.Thread(target=feed, daemon=True)] + [
        threading.Thread(target=drain, args=(s, i), daemon=True)
        for i, s in enumerate((proc.stdout, proc.stderr))]
    for thread in threads:
        thread.start()
    try:
        status = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise CommandTimeout(timeout) from None
    except BaseException:   # Ctrl-C: the command goes too
        proc.kill()
        proc.wait()
        raise
    finally:
        for thread in threads:
            thread.join(1)
    if any(len(output) > limit for output in outputs):
        status = None
    return status, outputs[0][:limit], outputs[1][:limit]


def run_tool_command(argv, arguments, timeout):
    """Run argv (no shell) with the call's arguments as JSON on stdin; return
    its stdout, or an error result the model can read."""
    try:
        status, out, err = run_command(argv, arguments.encode("utf-8"), timeout=timeout,
                                       limit=MAX_TOOL_OUTPUT)
    except CommandTimeout:
        return "error: the command ran longer than %gs and was stopped" % timeout
    except OSError as exc:
        return "error: cannot run %s: %s" % (argv[0], exc.strerror)
    output = out.decode("utf-8", "replace")
    if status is None:
        return "error: the command wrote more than %d KiB and was stopped; its output began: %s" % (
            MAX_TOOL_OUTPUT >> 10, output[:2000])
    if status != 0:
        why = _one_line(err.decode("utf-8", "replace"))[-500:] or output[-500:]
        return "error: the command exited with status %d: %s" % (status, why)
    return output


class Tools:
    """Answers the model's tool calls.

    commands: tool name -> argv to run for it (--tool-exec).  mcp: the
    McpTools whose calls go to MCP servers.  consent(name, arguments, what):
    True if the user agrees to run what (a command, an MCP server's tool)
    with arguments, "always" to allow that tool for the session, False if
    not, None where nobody can be asked.  ask_first: ask consent
    before running a command (False: --yes).  ask(prompt): a line typed by the user, the
    result of a tool with no command; None where nobody can be asked.
    notify(text) hears of a command not run for want of consent.  timeout:
    seconds a command may run.  max_rounds: rounds of calls and results
    before chat.py stops.  on_wait(what) hears "running NAME" while a
    command runs, and None when it is done.  redactor: blanks the run's
    secrets (an MCP server's token it quotes back) out of every result
    before the model gets it and it is kept.  free_text: the names of
    commands offered as command_tool() defines them: the command gets the
    call's "input" text, as a custom tool's command does.
    """

    def __init__(self, commands=None, *, consent=None, ask_first=True, ask=None, notify=None,
                 timeout=DEFAULT_TOOL_TIMEOUT, max_rounds=DEFAULT_TOOL_ROUNDS, on_wait=None,
                 mcp=None, redactor=None, free_text=()):
        self.commands, self.consent, self.ask_first = commands or {}, consent, ask_first
        self.free_text = set(free_text)
        self.ask, self.notify = ask, notify or (lambda text: None)
        self.timeout, self.max_rounds = timeout, max_rounds
        self.on_wait = on_wait or (lambda what, **details: None)
        self.mcp = mcp            # McpTools: the tools of MCP servers, or None
        self.allowed = set()      # what the user allowed for the session ("a"): _runner's keys
        self.redactor = redactor or Redactor()
        self._left = set()        # calls the printer left to the consent question to show

    def answer(self, call):
        """The result to send back for one call: its text, or (text, content
        parts the model should see, such as an image an MCP tool returned)."""
        function = call.get("function") or call.get("custom") or {}
        name = function.get("name")
        custom = call.get("type") == "custom"   # free text in, as the tool was defined
        arguments = function.get("input") if custom else function.get("arguments")
        if not custom:
            try:   # parsed once: what is shown and approved is what the tool gets
                arguments = canonical_arguments(arguments)
            except ValueError as exc:
                return "error: the tool was not run: %s" % exc
        # Shown as JSON: free text as a JSON string, a command tool's as {"input": ...}.
        shown = json.dumps(arguments or "", ensure_ascii=False) if custom else arguments
        if name in self.free_text and not custom:   # (arguments of another shape go as they are)
            arguments = free_text_input(arguments, arguments)
        unshown = (call.get("id"), name) in self._left   # the printer left it to the question
        self._left.discard((call.get("id"), name))
        runner = self._runner(name)
        if runner is None:
            return self._typed_result(name)
        what, run, key = runner
        if self.ask_first and key not in self.allowed:
            self.on_wait(None)   # nothing waits while the question is asked
            asked = [self.redactor.redact(text) for text in (name, shown or "", what)]
            agreed = self.consent(*asked) if self.consent else None   # (the tty is a screen too)
            if agreed is None:
                said = ("%s was not run: there is no terminal to ask for consent on (chat.py "
                        "--yes would have run it)" % _shown_name(name))
                self.notify(_with_arguments(said, shown) if unshown else said)
                return "error: not run: running tools needs the user's consent (chat.py --yes)"
            if not agreed:
                return "error: the user chose not to run this tool"
            if agreed == "always":
                self.allowed.add(key)
        elif unshown:   # allowed for the session since the printer left it out
            self.notify(_with_arguments("the model calls %s (allowed for the session) with "
                                        "these arguments" % _shown_name(name), shown))
        self.on_wait("running %s" % name)
        try:
            result = run(arguments or "")
        finally:
            self.on_wait(None)
        if isinstance(result, tuple):
            return self.redactor.redact(result[0]), result[1]
        return self.redactor.redact(result)

    def asked(self, call):
        """True when answer(call) will ask consent, and so show the call: the
        printer leaves it out then, lest it be shown twice.  Remembered: if
        "a" allows its tool meanwhile, answer() shows it before it runs."""
        function = call.get("function") or call.get("custom") or {}
        runner, left = self._runner(function.get("name")), (call.get("id"), function.get("name"))
        if not self.ask_first or runner is None or runner[2] in self.allowed:
            self._left.discard(left)   # (one that an interrupted turn never answered)
            return False
        self._left.add(left)
        return True

    def _runner(self, name):
        """(what runs, as the consent question says it; run(arguments); what
        "allow for the session" is bound to), or None.  The binding is what
        really runs: the command line, or the MCP server (its name and
        command or URL) and the tool's own name, never the name the model
        sees, which another server's tool may take when this one is down."""
        argv = self.commands.get(name)
        if argv is not None:
            return ("`%s`" % " ".join(shlex.quote(word) for word in argv),
                    lambda arguments: run_tool_command(argv, arguments, self.timeout),
                    ("command", name, tuple(argv)))
        if self.mcp is not None and self.mcp.owns(name):
            server, tool = self.mcp.names[name]
            spec = server.spec
            return (self.mcp.describe(name),
                    lambda arguments: self.mcp.call(name, arguments, self.timeout, self.on_wait),
                    ("mcp", spec.name, spec.command, tuple(spec.args), spec.url, tool))
        return None

    def _typed_result(self, name):
        if self.ask is None:
            return "error: chat.py has no command for the tool %s" % name
        try:
            answer = self.ask("result of %s (text, or @FILE)> " % _shown_name(str(name)))
        except EOFError:   # Ctrl-D, or the end of a script
            return "error: the user gave no result"
        if answer.startswith("@"):
            try:
                return read_bounded(answer[1:].strip(), "the result file", MAX_TOOL_OUTPUT
                                    ).decode("utf-8", "replace")
            except UsageError as exc:
                return "error: the user's file could not be read: %s" % exc
        return answer


def _with_arguments(text, arguments):
    """A notice, then a call's arguments as the printer shows them."""
    return "%s:\n%s" % (text, indented_arguments(arguments or "").rstrip("\n"))


def command_tool(name, description):
    """The definition offered for a --tool-exec command that has none: one
    free-text input, which the command reads on its stdin."""
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {"input": {
            "type": "string", "description": "the text the command reads on its stdin"}},
            "required": ["input"], "additionalProperties": False}}}


def free_text_input(arguments, default=None):
    """The "input" text of a command_tool() call's canonical arguments; default
    for arguments of another shape."""
    value = json.loads(arguments)
    if isinstance(value, dict) and set(value) == {"input"} and isinstance(value["input"], str):
        return value["input"]
    return default


def tool_names(params):
    """The names of the tools (and legacy functions) request fields define."""
    names = set()
    for item in (params.get("tools") or []) + (params.get("functions") or []):
        if isinstance(item, dict):
            inner = item.get("function") or item.get("custom") or item
            if isinstance(inner, dict) and isinstance(inner.get("name"), str):
                names.add(inner["name"])
    return names


def _unique_keys(pairs):
    """An object's pairs as a dict; ValueError naming each key given more than
    once (in one pass: a server may send 40,000 keys)."""
    value = dict(pairs)
    if len(value) < len(pairs):
        seen, repeated = set(), set()
        for key, _ in pairs:
            (repeated if key in seen else seen).add(key)
        raise ValueError("the arguments give the key %s more than once" % ", ".join(
            json.dumps(key, ensure_ascii=False) for key in sorted(repeated)))
    return value


def canonical_arguments(text):
    """A tool call's arguments as the JSON text a command gets: parsed once,
    written anew, so the command runs on exactly what was shown.  ValueError
    (saying why) for text that is not JSON or that repeats a key, which
    parsers read differently (one keeps the first, another the last)."""
    canonical, refused = _checked_arguments(text)
    if refused:
        raise ValueError(refused)
    return canonical


# A call's arguments are shown, asked about and run: checked once, the result
# kept for the calls of a round or two.
@functools.lru_cache(maxsize=32)
def _checked_arguments(text):
    """(canonical_arguments(text), None), or (None, why they are refused)."""
    try:
        value = json.loads(text or "{}", object_pairs_hook=_unique_keys)
    except RecursionError:
        return None, "the arguments are JSON nested too deeply"
    except ValueError as exc:
        if "more than once" in str(exc):
            return None, str(exc)
        return None, "the arguments are not valid JSON: %s" % (text or "")[:300]
    return json.dumps(value, ensure_ascii=False), None


def indented_arguments(arguments):
    """A tool call's arguments as people read them: pretty-printed JSON, every
    line indented, in full; text that is not JSON (or repeats a key) shown
    as it is, and said so."""
    try:
        shown = json.dumps(json.loads(canonical_arguments(arguments)), indent=2,
                           ensure_ascii=False)
    except ValueError as exc:
        shown = "%s\n(%s)" % (arguments, str(exc).split(":")[0])
    return "".join("  %s\n" % line for line in shown.splitlines())


# ---------------------------------------------------------------------------
# MCP: the tools of Model Context Protocol servers, offered to the model and
# called through the same consent as --tool-exec commands.
# https://modelcontextprotocol.io/specification (revisions 2024-11-05 to 2026-07-28)
# Lifting: needs the errors, the SSE decoders, conform, Client, the Tools
# section and the terminal's sanitize and tty helpers (for a server's forms).
# ---------------------------------------------------------------------------

MCP_MODERN = "2026-07-28"            # stateless: server/discover, _meta on every request
MCP_LEGACY = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")   # initialize
MCP_DISCOVER_WAIT = 3.0              # seconds for server/discover before trying initialize
MCP_STARTUP_TIMEOUT = 10.0           # seconds a turn waits for a server still starting
MCP_START_WAIT = 30.0                # seconds a starting server may take, in the background
MCP_MAX_CALL = 1800.0                # seconds a call may last, however much progress it reports
MAX_MCP_MESSAGE = 16 * 2**20         # one JSON-RPC message larger than this fails the server
MAX_MCP_TOOLS = 512                  # tools one server may offer
MAX_MCP_PAGES = 32                   # pages of one tools/list
MAX_MCP_ASKED = 64                   # requests a server may make inside one answer (HTTP)
MAX_MCP_RESTARTS = 3                 # restarts of a server that died, in one session
MCP_RESTART_DELAY = 1.0              # seconds from its death to its first restart, then doubled
MAX_MCP_LOG = 2**20                  # mcp-NAME.log is moved to mcp-NAME.log.1 past this
MAX_MCP_LOG_LINE = 2**16             # bytes of one stderr line read at once
MCP_LISTEN_IDLE = 600.0              # seconds of silence before a listening stream is opened anew
MAX_MCP_ROUNDS = 8                   # rounds of input a 2026-07-28 server may ask for in one call
MAX_MCP_FIELDS = 32                  # fields of one form a server may ask the user to fill in
MAX_MCP_QUEUED = 64                  # messages waiting for a stdio server to read its stdin
MCP_WRITE_WAIT = 10.0                # seconds a request or answer waits for room among them
MAX_MCP_FORMS = 8                    # forms a server may ask in one call (the rest declined)
MAX_MCP_NOISE = 100                  # lines not JSON a stdio server may write on stdout (banners)
MAX_MCP_TOOL_DEPTH = 64              # levels of lists and objects in one tool's definition
MAX_MCP_TOOL_SIZE = 2**17            # bytes of one tool's definition as JSON
_MCP_NAME = re.compile(r"[^A-Za-z0-9_-]")


class McpError(ChatError):
    """An MCP server failed, or answered a request with a JSON-RPC error."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


def _finite(value):
    """A number arithmetic can use: JSON's 1e400 is inf, and a bool is no number."""
    if type(value) is float and math.isfinite(value) or type(value) is int and abs(value) < 2**63:
        return value
    return _WRONG


# What chat.py reads of a JSON-RPC 2.0 message from an MCP server
# (https://www.jsonrpc.org/specification), in conform's terms: an id is a
# string or an integer; every MCP result is an object.
JSONRPC_SHAPE = {"jsonrpc": str, "id": (str, int), "method": str, "params": dict,
                 "result": dict, "error": {"code": int, "message": str}}
PROGRESS_SHAPE = {"progressToken": (str, int), "progress": _finite, "total": _finite,
                  "message": str}
TOOLS_PAGE_SHAPE = {"tools": [{"name": str, "description": str, "inputSchema": dict}],
                    "nextCursor": str}
ELICIT_SHAPE = {"mode": str, "message": str, "url": str, "elicitationId": str,
                "requestedSchema": {"properties": dict, "required": [str]}}
INPUT_REQUIRED_SHAPE = {"resultType": str, "requestState": str, "inputRequests": dict}


def jsonrpc_message(value, dropped):
    """A message from an MCP server checked for shape: (kind, message), kind
    "answer", "request" or "notification"; None for one that is none of them.
    Fields of the wrong type are left out, their paths appended to dropped;
    an answer with neither a result nor an error that fits gets an error."""
    had_id = type(value) is dict and value.get("id") is not None
    message = conform(value, JSONRPC_SHAPE, dropped)
    if message is _WRONG:
        dropped.append("a message that is not an object (%s)" % type(value).__name__)
        return None
    if had_id and "id" not in message:   # nothing to answer it by, or to match
        return None
    for key in [key for key, item in message.items() if item is None]:
        del message[key]   # (a null is no value: "result": null is no result)
    if "method" in message:
        return ("request" if had_id else "notification"), message
    if not had_id:
        dropped.append("a message with neither a method nor an id")
        return None
    if "result" not in message and "error" not in message:
        message["error"] = {"message": "its answer has neither a result nor an error object"}
    return "answer", message


McpSpec = namedtuple("McpSpec", "name command args env url headers startup_timeout problem sse "
                     "blanked")
McpSpec.__new__.__defaults__ = (None, None, False, ())
McpSpec.__doc__ = ("One MCP server as configured: a command (stdio) or a url (HTTP; sse: "
                   "the 2024-11-05 HTTP+SSE transport); its startup timeout, if it has one; "
                   "what makes it unusable, if anything; blanked: the variables of chat.py's "
                   "own key left empty in its url or headers.")

_VARIABLE = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SERVER_ARGUMENT = re.compile(r"\s*[\w.-]+\s*=")   # NAME=COMMAND, NAME=URL: never a file


def expand_variables(text, environ, withheld=(), blanked=None):
    """text with ${VAR}, ${VAR:-default} and ${env:VAR} taken from environ;
    a variable in withheld is left empty (its default too), and its name
    added to the list blanked."""
    def value(match):
        if match.group(1) in withheld:
            if blanked is not None and match.group(1) not in blanked:
                blanked.append(match.group(1))
            return ""
        return environ.get(match.group(1)) or (match.group(2) or "")
    return _VARIABLE.sub(value, text)


def mcp_specs(argument, environ, withheld=(), folder=None):
    """The servers --mcp ARGUMENT names: NAME=COMMAND is one stdio server
    (NAME=URL one HTTP server), whatever files there are; otherwise the file
    is read as the JSON people already keep (Claude Desktop, Cursor, Claude
    Code's "mcpServers", VS Code's "servers").  withheld: the variables that
    hold chat.py's own key, never expanded into an HTTP server's url or
    headers.  folder: where a relative file name or command is taken from
    (the folder of the config that gives it; None: the current one).  A
    UsageError says what is off."""
    if _SERVER_ARGUMENT.match(argument):
        name, _, command = argument.partition("=")
        if not command.strip():
            raise UsageError("--mcp %s: give the command (or URL) after the =" % argument)
        if command.strip().startswith(("http://", "https://")):
            return [_mcp_spec(name.strip(), {"url": command.strip()}, environ, "--mcp", withheld)]
        try:
            words = shlex.split(command)
        except ValueError as exc:
            raise UsageError("--mcp %s: %s" % (name, exc)) from None
        return [_mcp_spec(name.strip(), {"command": words[0], "args": words[1:]}, environ,
                          "--mcp", withheld, folder)]
    path = os.path.join(folder or "", os.path.expanduser(argument))
    if not os.path.isfile(path):
        raise UsageError("--mcp takes a config file or NAME=COMMAND, e.g. "
                         "--mcp 'time=uvx mcp-server-time'; %s is neither" % argument)
    data = read_json_file(path, "the MCP config")
    servers = data.get("mcpServers", data.get("servers")) if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise UsageError("the MCP config %s has no \"mcpServers\" (or \"servers\") object"
                         % path)
    folder = os.path.dirname(os.path.abspath(path))
    specs = [_mcp_entry(name, entry, environ, path, withheld, folder)
             for name, entry in servers.items()]
    return [spec for spec in specs if spec is not None]


def _mcp_spec(name, entry, environ, where, withheld=(), folder=None):
    """One server's entry, checked and with its variables expanded (chat.py's
    own key variables left empty in an HTTP server's url and headers); a
    relative command path (./server) is taken from folder."""
    blanked = []

    def texts(value, what):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError("%s: server %s: %s must be a list of strings" % (where, name, what))
        return [expand_variables(v, environ) for v in value]

    def pairs(value, what, hold=()):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise UsageError("%s: server %s: %s must map names to strings" % (where, name, what))
        return {k: expand_variables(v, environ, hold, blanked) for k, v in value.items()}

    if not isinstance(entry, dict):
        raise UsageError("%s: server %s is not an object" % (where, name))
    kind = entry.get("type", "http" if "url" in entry else "stdio")
    if kind == "stdio" and isinstance(entry.get("command"), str):
        command = os.path.expanduser(expand_variables(entry["command"], environ))
        if "/" in command and folder:   # (a bare name is looked up on PATH)
            command = os.path.join(folder, command)
        return McpSpec(name, command, texts(entry.get("args", []), "args"),
                       pairs(entry.get("env", {}), "env"), None, {})
    if kind in ("http", "streamable-http", "streamableHttp", "sse") and isinstance(
            entry.get("url"), str):
        url = normalize_base_url(expand_variables(entry["url"], environ, withheld, blanked))
        headers = pairs(entry.get("headers", {}), "headers", withheld)
        if in_clear_text(url) and (urlsplit(url).username
                                   or any(is_secret_header(h) for h in headers)):
            raise UsageError("%s: server %s: refusing to send credentials in clear text to %s "
                             "over plain http; use https" % (where, name, urlsplit(url).hostname))
        return McpSpec(name, None, [], {}, url, headers, blanked=tuple(blanked),
                       sse=kind == "sse")
    raise UsageError("%s: server %s needs a \"command\" (stdio) or a \"url\" (streamable "
                     "HTTP, or \"type\": \"sse\")" % (where, name))


def _mcp_entry(name, entry, environ, where, withheld=(), folder=None):
    """One entry of a config file as _mcp_spec reads it, with what editors
    add: None for one switched off ("disabled": true); "startup_timeout" in
    seconds; one chat.py cannot use comes back with its problem (said, and
    the server skipped) instead of ending the whole file."""
    if isinstance(entry, dict) and entry.get("disabled") is True:
        return None
    try:
        spec = _mcp_spec(name, entry, environ, where, withheld, folder)
        wait = entry.get("startup_timeout")
        if wait is not None and not _is_number(wait, 0.001, MAX_TIMEOUT):
            raise UsageError("%s: server %s: startup_timeout must be seconds, above 0 and at "
                             "most %d" % (where, name, MAX_TIMEOUT))
    except UsageError as exc:
        return McpSpec(name, None, [], {}, None, {}, problem=str(exc))
    return spec._replace(startup_timeout=wait)


def _open_log(path, adding=0):
    """path opened for appending, readable by its owner alone; moved to
    path.1 first if adding would take it past MAX_MCP_LOG."""
    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0
    if size and size + adding > MAX_MCP_LOG:
        os.replace(path, path + ".1")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)   # (one an earlier version made 0644)
    return os.fdopen(fd, "ab")


def mcp_secrets(spec):
    """An MCP server's tokens, for the one Redactor: its credential headers'
    values, its URL's credentials, and its env values with secret names."""
    return ([value.split(" ")[-1] for name, value in spec.headers.items()   # (not "Bearer")
             if is_secret_header(name)]
            + (url_secrets(spec.url) if spec.url else [])
            + [value for name, value in spec.env.items() if _SECRET_NAME.search(name)])


def mcp_environment(environ, secrets):
    """The environment a stdio MCP server starts in (its config's env is added
    to it): environ without the secrets chat.py knows: every variable that
    holds one of secrets (OPENAI_API_KEY, the variable a profile's
    api_key_env names, one holding what api_key_command printed), and proxy
    variables that carry a password."""
    known = [secret for secret in secrets if secret]
    return {name: value for name, value in environ.items()
            if not any(secret in value for secret in known if len(secret) >= MIN_SECRET)
            and value.strip() not in known
            and not (name.lower().endswith("_proxy") and "@" in value)}


class _Stdio:
    """An MCP server run as a process (in environ, with its own env added):
    one JSON-RPC message a line on its stdin and stdout.  Its stderr is only
    logging: copied to log_path a line at a time (rotated, see _open_log),
    its last line kept as last_words, the reason a failure gives.  What
    goes to its stdin is written by a thread of its own, MAX_MCP_QUEUED
    messages at most waiting: a server that stops reading blocks that
    thread alone, never a caller (nor a lock a caller needs), and fails
    once a message finds no room within MCP_WRITE_WAIT."""

    def __init__(self, spec, log_path, on_message, on_broken, environ, on_noise=None):
        try:
            self.proc = subprocess.Popen(
                [spec.command] + spec.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=dict(environ, **spec.env), start_new_session=True)
        except FileNotFoundError:
            raise McpError("there is no program %s (is it installed, and on the PATH?)"
                           % spec.command) from None
        except OSError as exc:
            raise McpError("cannot run %s: %s" % (spec.command, exc.strerror or exc)) from None
        self.log_path, self.last_words = log_path, b""
        self._out, self._queued = threading.Condition(), []   # what the writer writes next
        self._closing = self._stuck = False
        self._on_message, self._on_broken = on_message, on_broken
        self._on_noise = on_noise or (lambda text: None)
        self._logging = threading.Thread(target=self._log, daemon=True)
        self._logging.start()
        self._writing = threading.Thread(target=self._write, daemon=True)
        self._writing.start()
        threading.Thread(target=self._read, daemon=True).start()

    def send(self, message, timeout=None, deadline=None):
        """Queue message for its stdin (the answer comes on its own): a
        request or an answer waits for room at most timeout (or
        MCP_WRITE_WAIT), a notification not at all (it is dropped)."""
        data = json.dumps(message).encode("utf-8") + b"\n"
        ends = time.monotonic() + ((timeout or MCP_WRITE_WAIT) if "id" in message else 0)
        with self._out:
            while len(self._queued) >= MAX_MCP_QUEUED and not self._stuck:
                if time.monotonic() >= ends:
                    if "id" not in message:
                        return
                    self._stuck = True
                    break
                self._out.wait(ends - time.monotonic())
            if not self._stuck and self._writing.is_alive():
                self._queued.append(data)
                self._out.notify_all()
                return
        if self._stuck:
            why = "it stopped reading what chat.py sends it (its stdin)"
            self._on_broken(why)
            raise McpError(why, code="stopped")
        raise McpError(self._exited())

    def _write(self):
        try:
            while True:
                with self._out:
                    while not self._queued and not self._closing:
                        self._out.wait()
                    if not self._queued:
                        return
                    data = self._queued.pop(0)
                    self._out.notify_all()
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
        except (OSError, ValueError):
            return
        finally:
            try:
                self.proc.stdin.close()   # (here alone: a full pipe blocks only this thread)
            except (OSError, ValueError):
                pass

    def _read(self):
        """Its stdout, a message a line; a line that is not JSON (a banner)
        is skipped, the first said through on_noise, past MAX_MCP_NOISE of
        them the server fails."""
        noise = 0
        try:
            while True:
                line = self.proc.stdout.readline(MAX_MCP_MESSAGE + 1)
                if not line:
                    return self._on_broken(self._exited())
                if len(line) > MAX_MCP_MESSAGE:
                    return self._on_broken("it sent a message over %d MiB"
                                           % (MAX_MCP_MESSAGE >> 20))
                if line.strip():
                    try:
                        message = parse_json(line.decode("utf-8"))
                    except ValueError:
                        noise += 1
                        shown = _one_line(line.decode("utf-8", "replace"))[:80]
                        if noise > MAX_MCP_NOISE:
                            return self._on_broken("it wrote more than %d lines that are not "
                                                   "JSON-RPC on stdout: %s"
                                                   % (MAX_MCP_NOISE, shown))
                        if noise == 1:
                            self._on_noise("it wrote a line that is not JSON-RPC on stdout "
                                           "(skipped, as the ones after it): %s" % shown)
                        continue
                    self._on_message(message)
        except (OSError, ValueError):
            return self._on_broken("its stdout broke")

    def _exited(self):
        """Why its stdout ended: its exit status and the last line it logged."""
        try:
            status = "status %s" % self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            status = "unknown: its stdout closed"
        self._logging.join(1.0)   # its stderr's last line comes as it exits
        return "it exited (%s)%s" % (status, self.words(": "))

    def words(self, before):
        """before and the last line it wrote on stderr, or "" if none."""
        words = _one_line(self.last_words.decode("utf-8", "replace"))[-200:]
        return before + words if words else ""

    def _log(self):
        log, kept = None, True
        try:
            while True:
                line = self.proc.stderr.readline(MAX_MCP_LOG_LINE)
                if not line:
                    return
                if line.strip():
                    self.last_words = line
                if kept and (log is None or log.tell() + len(line) > MAX_MCP_LOG):
                    if log is not None:
                        log.close()
                    log = None
                    try:
                        log = _open_log(self.log_path, len(line))
                    except OSError:   # no log: read on and drop, lest the server block
                        kept = False
                if log is not None:
                    log.write(line)
                    log.flush()
        except (OSError, ValueError):
            return
        finally:
            if log is not None:
                log.close()

    def close(self):
        """Close its stdin once what is queued is written (in the writer's
        thread), wait a moment, then SIGTERM, then SIGKILL; it is reaped."""
        with self._out:
            self._closing = True
            self._out.notify_all()
        for stop in (None, self.proc.terminate, self.proc.kill):
            if stop is not None:
                try:
                    stop()
                except OSError:
                    pass
            try:
                self.proc.wait(None if stop == self.proc.kill else 1.0)   # (reaped)
                return
            except subprocess.TimeoutExpired:
                continue


def mcp_header_value(text):
    """text as a 2026-07-28 header value: as it is if it is plain visible
    ASCII, else =?base64?...?= of its UTF-8, so a server-chosen string never
    becomes a header line of its own (streamable-http.mdx, "Value Encoding")."""
    if (text and text == text.strip() and all(" " <= c <= "~" for c in text)
            and not (text.startswith("=?") and text.endswith("?="))):
        return text
    return "=?base64?%s?=" % base64.b64encode(text.encode("utf-8")).decode("ascii")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")   # an HTTP field name (RFC 9110 5.1)


def mcp_param_headers(schema):
    """The x-mcp-header annotations of a tool's inputSchema, as a list of
    (NAME of the Mcp-Param-NAME header, the chain of properties keys to its
    value); ValueError saying why for an annotation the 2026-07-28 rules
    refuse ("Custom Headers from Tool Parameters"): a name that is no header
    name or is used twice, a type other than string, integer or boolean, a
    place not reached through properties keys alone."""
    found, names, stack = [], set(), [(schema, (), True)]
    while stack:   # (no recursion: a server chooses the depth)
        node, path, reachable = stack.pop()
        if isinstance(node, list):
            stack += [(item, path, False) for item in node]
            continue
        if not isinstance(node, dict):
            continue
        if "x-mcp-header" in node:
            name = node["x-mcp-header"]
            if not reachable or not path:
                raise ValueError("an x-mcp-header not reached through properties alone")
            if not isinstance(name, str) or not _TOKEN.match(name) or name.lower() in names:
                raise ValueError("x-mcp-header %s is no header name, or one used twice"
                                 % _one_line(json.dumps(name))[:60])
            if node.get("type") not in ("string", "integer", "boolean"):
                raise ValueError("x-mcp-header %s is on a %s, not a string, integer or boolean"
                                 % (name, _one_line(json.dumps(node.get("type")))[:40]))
            names.add(name.lower())
            found.append((name, path))
        for key, value in node.items():
            if key == "properties" and reachable and isinstance(value, dict):
                stack += [(inner, path + (name,), True) for name, inner in value.items()]
            elif key != "x-mcp-header":
                stack.append((value, path, False))
    return found


def _param_value(arguments, path):
    """The header value of the argument at path (a chain of keys), or None if
    there is none that a header can carry."""
    for key in path:
        arguments = arguments.get(key) if isinstance(arguments, dict) else None
    if type(arguments) is bool:
        return "true" if arguments else "false"
    if type(arguments) is int and abs(arguments) < 2**53:
        return str(arguments)
    return arguments if isinstance(arguments, str) else None


class _Http:
    """An MCP server over streamable HTTP: one POST a message, answered with
    JSON or an event stream (read with the SSE decoders above); its session
    kept in Mcp-Session-Id, and DELETEd at the end.  version: the
    MCP-Protocol-Version to send, once known (with 2026-07-28, every request
    also names its method in Mcp-Method, and a tools/call its tool in Mcp-Name
    and the arguments param_headers names, tool -> mcp_param_headers, in
    Mcp-Param-NAME)."""

    def __init__(self, spec, on_message, on_broken, proxies=None):
        self.url, self.proxies = spec.url, proxies
        self._given = list(spec.headers.items())   # the config's: its tokens go here alone
        self.client = Client(spec.url, retries=0, timeout=MCP_START_WAIT, proxies=proxies,
                             headers=self._given + [
                                 ("Accept", "application/json, text/event-stream")],
                             connections=keep_alive())
        self._on_message, self._on_broken = on_message, on_broken
        self.session = self.version = None
        self.param_headers = {}
        self._lock = threading.RLock()   # one request goes out at a time
        self._closed = False

    def send(self, message, timeout=None, deadline=None):
        """POST message.  The messages of a request's answer go to on_message as
        they come: timeout is the longest silence, and the stream is given up
        (McpError "timeout") once time.monotonic() passes deadline(), which
        only progress moves: comments and keep-alives extend nothing.  The
        answer to an answer or a notification is not read (the server owes
        202 and no body), so requests inside answers never nest."""
        with self._lock:
            try:
                response = self.client.request("POST", "", message, probe=True,
                                               headers=self._headers(message),
                                               timeout=timeout or MCP_START_WAIT)
            except APIError as exc:
                if exc.status == 404 and self.session:   # the session is gone: start anew
                    self.session = None
                    raise McpError("the server ended the session", code="session") from None
                raise McpError(str(exc)) from None
            except APITimeoutError:
                raise McpError("no answer", code="timeout") from None
            except ChatError as exc:
                raise McpError(str(exc)) from None
        with response:
            session = response.headers.get("Mcp-Session-Id")
            if session:
                self.session = session
            kind = (response.headers.get("Content-Type") or "").lower()
            if "id" not in message or "method" not in message:
                return
            if "event-stream" in kind:
                return self._stream(response, deadline)
            if "json" not in kind:   # (not left to end in silence past the timeout)
                raise McpError("it answered with %s, neither JSON nor an event stream" % (
                    _one_line(kind.split(";")[0])[:60] or "no Content-Type"))
            body = bytearray()   # (an error answer is a message too: not read_json)
            for data in self._reads(response, deadline):
                body += data
                if len(body) > MAX_MCP_MESSAGE:   # checked as the bytes come
                    raise McpError("it sent a message over %d MiB" % (MAX_MCP_MESSAGE >> 20))
            try:
                message = parse_json(body.decode("utf-8"))
            except ValueError:
                return self._on_broken("it answered with JSON that is not JSON-RPC")
            self._on_message(message)

    def _headers(self, message):
        """The headers of the request that sends message: the session, the
        protocol's revision and, with 2026-07-28, what the message is."""
        headers = [("Mcp-Session-Id", self.session)] if self.session else []
        if self.version:
            headers.append(("MCP-Protocol-Version", self.version))
        if self.version == MCP_MODERN and "method" in message:
            headers.append(("Mcp-Method", mcp_header_value(message["method"])))
            if message["method"] == "tools/call":
                params = message["params"]
                headers.append(("Mcp-Name", mcp_header_value(params["name"])))
                for name, path in self.param_headers.get(params["name"], ()):
                    value = _param_value(params.get("arguments"), path)
                    if value is not None:
                        headers.append(("Mcp-Param-" + name, mcp_header_value(value)))
        return headers

    def listen(self, message=None):
        """Hear what the server says on its own, in a thread: on the GET stream
        (the 2025 revisions) or, given a subscriptions/listen request, on its
        answer's stream (2026-07-28).  Opened anew after MCP_LISTEN_IDLE of
        silence; it ends quietly where the server offers none or closes it."""
        threading.Thread(target=self._listen, args=(message,), daemon=True).start()

    def _listen(self, message):
        accept = "application/json, text/event-stream" if message else "text/event-stream"
        client = Client(self.url, headers=self._given + self._headers(message or {}) + [
                            ("Accept", accept)], retries=0, timeout=MCP_LISTEN_IDLE,
                        proxies=self.proxies, connections=keep_alive())
        try:
            while not self._closed:
                try:
                    with client.request("GET" if message is None else "POST", "", message,
                                        probe=True) as response:
                        if "event-stream" in (response.headers.get("Content-Type") or ""):
                            self._stream(response, None, client, asked=None)
                    return
                except McpError as exc:
                    if exc.code != "timeout":
                        return
                except APITimeoutError:
                    continue
        except ChatError:
            return   # (the server offers no such stream: 405, or an error)
        finally:
            client.close()

    def _stream(self, response, deadline, client=None, asked=0):
        """The messages of an event stream, to on_message; asked counts the
        requests among them (None: any number, on a stream that listens)."""
        lines, events = LineDecoder(MAX_MCP_MESSAGE), SSEDecoder(MAX_MCP_MESSAGE)
        for data in self._reads(response, deadline, client):
            for line in lines.feed(data):
                event = events.decode(line)
                if event is None or not event.data.strip():
                    continue
                try:
                    message = parse_json(event.data)
                except ValueError:
                    return self._on_broken("it sent an event that is not JSON-RPC")
                if asked is not None and type(message) is dict and "method" in message \
                        and "id" in message:
                    asked += 1
                    if asked > MAX_MCP_ASKED:
                        raise McpError("it made more than %d requests inside one answer"
                                       % MAX_MCP_ASKED)
                self._on_message(message)

    def _reads(self, response, deadline, client=None):
        try:
            for data in (client or self.client).reads(response):
                yield data
                if deadline is not None and time.monotonic() > deadline():
                    raise McpError("no answer in time", code="timeout")
        except APITimeoutError:
            raise McpError("no answer", code="timeout") from None
        except StreamError as exc:
            raise McpError(str(exc)) from None

    def words(self, before):
        return ""

    def close(self):
        self._closed = True
        if self.session:
            try:
                self.client.request("DELETE", "", probe=True, headers=self._headers({}),
                                    timeout=MCP_DISCOVER_WAIT).close()
            except ChatError:
                pass
        self.client.close()


class _Sse:
    """An MCP server over the 2024-11-05 HTTP+SSE transport ("type": "sse"):
    a GET event stream whose endpoint event names the URL (on the same host)
    to POST every message to; answers and the server's own messages come as
    message events on that stream, read with the SSE decoders above."""

    def __init__(self, spec, on_message, on_broken, proxies=None):
        self.url, self.proxies, self.version = spec.url, proxies, None
        self._headers = list(spec.headers.items())
        self._events = Client(spec.url, headers=self._headers + [("Accept", "text/event-stream")],
                              retries=0, timeout=MCP_LISTEN_IDLE, proxies=proxies,
                              connections=keep_alive())
        self.client = None                  # the endpoint's, once it is named
        self._named = threading.Event()
        self._on_message, self._on_broken = on_message, on_broken
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            with self._events.request("GET", "", probe=True) as response:
                lines, events = LineDecoder(MAX_MCP_MESSAGE), SSEDecoder(MAX_MCP_MESSAGE)
                for data in self._events.reads(response):
                    for line in lines.feed(data):
                        event = events.decode(line)
                        if event is None:
                            continue
                        if event.event == "endpoint" and self.client is None:
                            self._endpoint(event.data.strip())
                        elif event.event == "message" and event.data.strip():
                            try:
                                message = parse_json(event.data)
                            except ValueError:
                                return self._on_broken("it sent an event that is not JSON-RPC")
                            self._on_message(message)
            why = "it closed its event stream"
        except ChatError as exc:
            why = str(exc)
        if not self._closed:
            self._on_broken(why)
        self._named.set()   # (no endpoint will come: nothing waits for one)

    def _endpoint(self, path):
        """The URL messages go to: on the host the stream came from, which
        alone was given the config's headers."""
        url = urllib.parse.urljoin(self.url, path)
        if not may_carry_credentials(url, self.url):   # (the one rule for credentials)
            raise McpError("it named an endpoint on another host: %s" % shown_url_safely(url)[:200])
        self.client = Client(normalize_base_url(url), headers=self._headers, retries=0,
                             timeout=MCP_START_WAIT, proxies=self.proxies,
                             connections=keep_alive())
        self._named.set()

    def send(self, message, timeout=None, deadline=None):
        """POST message to the endpoint; its answer comes on the event stream."""
        if not self._named.wait(timeout or MCP_START_WAIT):
            raise McpError("it named no endpoint to send to", code="timeout")
        if self.client is None:
            raise McpError("its event stream ended", code="stopped")
        try:
            self.client.request("POST", "", message, probe=True,
                                timeout=timeout or MCP_START_WAIT).close()
        except APITimeoutError:
            raise McpError("no answer", code="timeout") from None
        except ChatError as exc:
            raise McpError(str(exc)) from None

    def words(self, before):
        return ""

    def close(self):
        self._closed = True
        for client in (self._events, self.client):
            if client is not None:
                client.close()


class McpServer:
    """One MCP server: started, handshaken (server/discover for the current
    revision, initialize for the earlier ones), its tools listed; requests
    sent and answered, with progress and cancellation; every message it
    sends checked by jsonrpc_message.  state: starting, ready, failed or
    stopped; error: the last thing that went wrong.  startup_timeout:
    seconds a turn waits for it to be ready (its config's, or this).
    proxies(url): the proxies to reach an HTTP server's url by (None:
    urllib's own choice)."""

    def __init__(self, spec, *, log_folder, notify, proxies=None, environ=None,
                 startup_timeout=MCP_STARTUP_TIMEOUT, roots=(), elicit=None):
        self.spec, self.log_folder, self.notify, self.proxies = spec, log_folder, notify, proxies
        self.roots, self.elicit = list(roots), elicit
        self.environ = os.environ if environ is None else environ
        self.startup_timeout = spec.startup_timeout or startup_timeout
        self.state, self.error, self.version, self.tools = "starting", None, None, []
        self.agreed = None          # the version the handshake settled on (version: the one tried)
        self.stale = False          # tools/list_changed came: list again before the next request
        self.started = self.failed_at = None   # time.monotonic() of the last start, death
        self.restarts = 0
        self.ready = threading.Event()   # set when started or failed
        self._transport = None
        self._generation = 0        # of the transport: an old one's last words are not heard
        self._lock = threading.Lock()
        self._pending = {}          # request id -> [Event, message, time.monotonic() of progress]
        self._progress = {}         # progress token -> on_progress(text)
        self._ids = iter(range(1, 1 << 62))
        self._misshapen = False     # a message of the wrong shape was said (once a start)
        self._asks = []             # elicitations heard by a reader thread, for the caller
        self._forms = 0             # elicitations asked in this call (see MAX_MCP_FORMS)

    def start(self):
        """Start and handshake in a thread of its own; ready is set when done."""
        self.state, self.error, self.started = "starting", None, time.monotonic()
        self.ready.clear()
        threading.Thread(target=self._start, daemon=True).start()

    def _start(self):
        try:
            self._connect()
            if self.state == "starting":   # (not stopped meanwhile)
                self.state = "ready"
        except (ChatError, OSError) as exc:
            self._fail(str(exc) if isinstance(exc, ChatError) else exc.strerror or str(exc))
        finally:
            self.ready.set()

    def _connect(self):
        self._generation += 1
        generation, self._misshapen = self._generation, False

        def on_message(message):
            if generation == self._generation:
                self._dispatch(message)

        def on_broken(why):
            if generation == self._generation:
                self._fail(why)

        if self.spec.url:
            kind = _Sse if self.spec.sse else _Http
            self._transport = kind(self.spec, on_message, on_broken,
                                   self.proxies and self.proxies(self.spec.url))
        else:
            log = os.path.join(self.log_folder, "mcp-%s.log" % _MCP_NAME.sub("_", self.spec.name))
            self._transport = _Stdio(self.spec, log, on_message, on_broken, self.environ,
                                     lambda why: self.notify("MCP server %s: %s" % (
                                         self.spec.name, why)))
        self._handshake()
        self.list_tools()
        self._listen()

    def _handshake(self):
        """The current revision has no initialize: try server/discover first,
        and on any error or silence fall back to initialize."""
        self.agreed = None
        self._set_version(MCP_MODERN)
        try:
            result = self.request("server/discover", {}, timeout=MCP_DISCOVER_WAIT)
            if MCP_MODERN in _texts(result.get("supportedVersions")):
                self.agreed = MCP_MODERN
                return
        except McpError as exc:
            if exc.code == "stopped":
                raise
        self._set_version(None)
        result = self.request("initialize", {
            "protocolVersion": MCP_LEGACY[0], "capabilities": self._capabilities(),
            "clientInfo": {"name": "chat.py", "version": __version__}}, timeout=MCP_START_WAIT)
        version = result.get("protocolVersion")
        if version not in MCP_LEGACY:
            raise McpError("it speaks MCP %s, which chat.py does not"
                           % _one_line(json.dumps(version))[:40])
        self._set_version(version)
        self.agreed = version
        self.notify_server("notifications/initialized")

    def _set_version(self, version):
        self.version = version
        if isinstance(self._transport, _Http):
            self._transport.version = version

    def list_tools(self):
        """Ask for the server's tools, every page of them: at most
        MAX_MCP_TOOLS tools in MAX_MCP_PAGES pages within MCP_START_WAIT;
        past a bound, the tools listed so far, and a notice.  A tool nested
        past MAX_MCP_TOOL_DEPTH or larger than MAX_MCP_TOOL_SIZE is left out
        (no request could carry it), all such said in one notice."""
        tools, cursor, ends = [], None, time.monotonic() + MCP_START_WAIT
        left_out = []   # tools nested too deep or too large for a request to carry
        for _ in range(MAX_MCP_PAGES):
            result = self.request("tools/list", {"cursor": cursor} if cursor is not None else {},
                                  timeout=max(ends - time.monotonic(), 0.001))
            page = conform(result, TOOLS_PAGE_SHAPE, [])
            if not isinstance(page.get("tools"), list):
                raise McpError("its tools/list answer has no list of tools")
            for tool in page["tools"]:
                if not isinstance(tool.get("name"), str) or not tool["name"]:
                    continue
                if _nested_past(tool, MAX_MCP_TOOL_DEPTH) or len(json.dumps(
                        tool, ensure_ascii=False)) > MAX_MCP_TOOL_SIZE:
                    left_out.append(_one_line(tool["name"])[:80])
                else:
                    tools.append(tool)
            if len(tools) > MAX_MCP_TOOLS:
                self.notify("MCP server %s offers more than %d tools; only the first %d are "
                            "offered" % (self.spec.name, MAX_MCP_TOOLS, MAX_MCP_TOOLS))
                del tools[MAX_MCP_TOOLS:]
                break
            if not page.get("nextCursor") or page["nextCursor"] == cursor:
                break
            cursor = page["nextCursor"]
        else:
            self.notify("MCP server %s lists its tools in more than %d pages; the tools of "
                        "the first %d are offered" % (self.spec.name, MAX_MCP_PAGES,
                                                      MAX_MCP_PAGES))
        if left_out:
            self.notify("MCP server %s: %d tool%s left out, nested more than %d levels "
                        "deep or over %d KiB: %s" % (
                            self.spec.name, len(left_out), " is" if len(left_out) == 1 else
                            "s are", MAX_MCP_TOOL_DEPTH, MAX_MCP_TOOL_SIZE >> 10,
                            ", ".join(left_out[:3])))
        if isinstance(self._transport, _Http) and self.version == MCP_MODERN:
            tools = self._headed(tools)
        self.tools, self.stale = tools, False

    def _headed(self, tools):
        """tools, but for those whose x-mcp-header annotations the rules refuse
        (each said); the headers of the others told to the transport."""
        kept, headers = [], {}
        for tool in tools:
            try:
                headers[tool["name"]] = mcp_param_headers(tool.get("inputSchema") or {})
                kept.append(tool)
            except ValueError as exc:
                self.notify("MCP server %s: the tool %s is left out: %s" % (
                    self.spec.name, _one_line(tool["name"])[:80], exc))
        self._transport.param_headers = headers
        return kept

    def request(self, method, params, *, timeout, on_progress=None):
        """Send a request and wait for its answer's result (a dict); McpError
        for a JSON-RPC error, a stopped server, silence past timeout or a call
        past MCP_MAX_CALL (then the server is told the request is cancelled).
        on_progress(text) hears the server's progress notifications; each
        moves the deadline on (only they do, never past MCP_MAX_CALL)."""
        id = next(self._ids)
        params = self._with_meta(params)
        started = time.monotonic()
        slot = [threading.Event(), None, started]

        def deadline():
            return min(slot[2] + timeout, started + MCP_MAX_CALL)

        def progressed(text):
            slot[2] = time.monotonic()
            on_progress(text)

        if on_progress is not None:
            params["_meta"] = dict(params.get("_meta") or {}, progressToken=id)
        with self._lock:
            self._pending[id] = slot
            if on_progress is not None:
                self._progress[id] = progressed
        try:
            try:
                self._send({"jsonrpc": "2.0", "id": id, "method": method, "params": params},
                           timeout, deadline)
            except McpError as exc:
                if exc.code == "timeout":   # (over HTTP the answer streams in _send)
                    raise self._timed_out(id, timeout, started) from None
                raise
            while not slot[0].wait(0.1):
                if self._asks and threading.current_thread() is threading.main_thread():
                    asked = time.monotonic()
                    self._answer(self._asks.pop(0))
                    slot[2] += time.monotonic() - asked   # the user's time is not its silence
                if self.state in ("failed", "stopped"):
                    raise McpError("the MCP server %s failed: %s" % (
                        self.spec.name, self.error or "it stopped"), code="stopped")
                if time.monotonic() > deadline():
                    raise self._timed_out(id, timeout, started)
        except KeyboardInterrupt:
            self._cancel(id, "the user pressed Ctrl-C")
            raise
        finally:
            with self._lock:
                self._pending.pop(id, None)
                self._progress.pop(id, None)
        message = slot[1]
        if "error" in message:
            error = message["error"]
            raise McpError(_one_line(error.get("message") or "it reported an error")[:500],
                           code=error.get("code"))
        return message["result"]

    def _with_meta(self, params):
        """params, with the version and capabilities every 2026-07-28 request carries."""
        params = dict(params)
        if self.version == MCP_MODERN:
            params["_meta"] = dict(params.get("_meta") or {}, **{
                "io.modelcontextprotocol/protocolVersion": MCP_MODERN,
                "io.modelcontextprotocol/clientCapabilities": self._capabilities(),
                "io.modelcontextprotocol/clientInfo": {"name": "chat.py", "version": __version__}})
        return params

    def _capabilities(self):
        """What chat.py offers a server: the roots, if it has any; elicitation
        (in form and URL mode), declined where nobody can be asked."""
        offered = {"elicitation": {"form": {}, "url": {}}}
        if self.roots:
            offered["roots"] = {"listChanged": False} if self.version != MCP_MODERN else {}
        return offered

    def _roots(self):
        """The ListRootsResult: each root folder as a file:// URI."""
        return {"roots": [{"uri": "file://" + urllib.parse.quote(os.path.abspath(folder)),
                           "name": os.path.basename(os.path.abspath(folder)) or "/"}
                          for folder in self.roots]}

    def _input(self, method, params):
        """The result of what a server asks of the client (roots/list,
        elicitation/create), or None if chat.py does not offer it."""
        if method == "roots/list" and self.roots:
            return self._roots()
        if method == "elicitation/create":
            request = conform(params, ELICIT_SHAPE, [])
            if not self._may_ask() or self.elicit is None or request is _WRONG:
                return {"action": "decline"}
            return self.elicit(self.spec.name, request)
        return None

    def _may_ask(self, more=False):
        """Whether one form more may be asked in this call (MAX_MCP_FORMS at
        most; more: the bound is passed already); said once when not."""
        self._forms = max(self._forms, MAX_MCP_FORMS) + 1 if more else self._forms + 1
        if self._forms == MAX_MCP_FORMS + 1:
            self.notify("MCP server %s asked for more than %d forms in one call; the rest are "
                        "declined unasked" % (self.spec.name, MAX_MCP_FORMS))
        return self._forms <= MAX_MCP_FORMS

    def _listen(self):
        """Hear the server's list changes: over HTTP on a stream of their own
        (see _Http.listen); over stdio they come with everything else, once a
        2026-07-28 server is asked for them (subscriptions/listen, whose
        answer, if any, comes only when the server ends it)."""
        listen = None
        if self.version == MCP_MODERN:
            listen = {"jsonrpc": "2.0", "id": next(self._ids), "method": "subscriptions/listen",
                      "params": self._with_meta({"notifications": {"toolsListChanged": True}})}
        if isinstance(self._transport, _Http):
            self._transport.listen(listen)
        elif listen is not None:
            self._send(listen)

    def _timed_out(self, id, timeout, started):
        """The McpError for a request given up, the server told."""
        if time.monotonic() - started >= MCP_MAX_CALL:
            why = "it ran past %d minutes" % (MCP_MAX_CALL // 60)
        else:
            why = "no answer within %gs" % timeout
        self._cancel(id, why)
        return McpError("%s; the call was cancelled" % why, code="timeout")

    def notify_server(self, method, params=None):
        message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self._send(message)

    def _send(self, message, timeout=None, deadline=None):
        transport = self._transport
        if transport is None or self.state == "stopped":
            raise McpError("the server is not running", code="stopped")
        transport.send(message, timeout, deadline)

    def _cancel(self, id, reason):
        try:
            self.notify_server("notifications/cancelled", {"requestId": id, "reason": reason})
        except McpError:
            pass

    def _dispatch(self, value):
        """A message from the server: an answer, a notification, or a request;
        one that is none of these (or a part of it that has the wrong type)
        is left out, and said once.  No message ends the thread that reads:
        one chat.py fails on fails its server, with a notice."""
        try:
            self._handle(value)
        except Exception as exc:   # (a bug of chat.py's, found by a server's message)
            self._fail("chat.py could not handle a message it sent (%s: %s)" % (
                type(exc).__name__, _one_line(str(exc))[:200]))

    def _handle(self, value):
        dropped = []
        found = jsonrpc_message(value, dropped)
        kind, message = found or (None, None)
        method = message.get("method") if message else None
        if method == "notifications/progress":
            message["params"] = conform(message.get("params", {}), PROGRESS_SHAPE, dropped,
                                        ".params")
        if dropped and not self._misshapen:
            self._misshapen = True
            self.notify("MCP server %s sent what chat.py cannot read; left out: %s" % (
                self.spec.name, ", ".join(_one_line(d)[:80] for d in dropped[:3])))
        if kind == "answer":
            with self._lock:
                slot = self._pending.get(message["id"])
            if slot is not None:
                slot[1] = message
                slot[0].set()
        elif kind == "request" and method == "elicitation/create" and \
                threading.current_thread() is not threading.main_thread():
            if len(self._asks) < MAX_MCP_FORMS:
                self._asks.append(message)   # asked by the thread that waits for the answer
            else:
                self._may_ask(more=True)
                self._answer(message, {"action": "decline"})
        elif kind == "request":
            self._answer(message)
        elif method == "notifications/tools/list_changed":
            self.stale = True
        elif method == "notifications/progress":
            with self._lock:
                on_progress = self._progress.get(message["params"].get("progressToken"))
            if on_progress is not None:
                on_progress(sanitize(_progress_text(message["params"])))

    def _answer(self, message, result=None):
        """Answer a server's request: ping, and what _input offers; the rest
        refused (result: the answer already decided)."""
        answer = {"jsonrpc": "2.0", "id": message["id"]}
        if result is None:
            result = {} if message["method"] == "ping" else self._input(
                message["method"], message.get("params") or {})
        if result is not None:
            answer["result"] = result
        else:
            answer["error"] = {"code": -32601, "message": "chat.py does not offer %s"
                               % _one_line(message["method"])[:60]}
        try:
            self._send(answer)
        except McpError:
            pass

    def _fail(self, why):
        if self.state in ("failed", "stopped"):
            return
        self.state, self.error, self.failed_at = "failed", why, time.monotonic()
        self.notify("MCP server %s failed: %s" % (self.spec.name, why))

    def late(self):
        """Say that the server is not ready within its startup timeout, and why
        that may be: its program's last words, or its silence."""
        transport = self._transport
        words = transport.words("; its last words: ") if transport is not None else ""
        self.notify("MCP server %s is not ready after %gs; going on without it%s" % (
            self.spec.name, self.startup_timeout,
            words or (" (it has said nothing on stderr)" if not self.spec.url else "")))

    def can_restart(self):
        """Whether a server that died may start again: one that was ready once,
        at most MAX_MCP_RESTARTS times a session."""
        return self.state == "failed" and bool(self.tools) and self.restarts < MAX_MCP_RESTARTS

    def restart(self, on_wait):
        """Start a server that died again, MCP_RESTART_DELAY after its death
        (doubled at each restart), waiting at most startup_timeout; said once."""
        what = "restarting MCP server %s" % self.spec.name
        until = self.failed_at + MCP_RESTART_DELAY * 2 ** self.restarts
        if until > time.monotonic():
            on_wait(what, until=until)
            time.sleep(max(until - time.monotonic(), 0))
        self.restarts += 1
        self.close()
        on_wait(what)
        self.start()
        self.ready.wait(self.startup_timeout)
        if self.state == "ready":
            self.notify("MCP server %s restarted (%d of %d)" % (
                self.spec.name, self.restarts, MAX_MCP_RESTARTS))
        elif self.state == "starting":
            self._fail("it did not start again within %gs" % self.startup_timeout)

    def call(self, tool, arguments, *, timeout, on_progress):
        """Call tool; the result (a dict), or McpError.  A 2026-07-28 server
        that needs input first answers with what it needs (roots, a form):
        the call is sent again with the answers, MAX_MCP_ROUNDS times at most."""
        if self.state != "ready":
            raise McpError("the MCP server %s is %s%s" % (
                self.spec.name, self.state, ": %s" % self.error if self.error else ""))
        params, self._forms = {"name": tool, "arguments": arguments}, 0
        for attempt in range(MAX_MCP_ROUNDS):
            try:
                result = self.request("tools/call", params, timeout=timeout,
                                      on_progress=on_progress)
            except McpError as exc:
                if exc.code != -32020 or attempt:   # HeaderMismatch: list again, try once more
                    raise
                self.list_tools()
                result = self.request("tools/call", params, timeout=timeout,
                                      on_progress=on_progress)
            needs = conform(result, INPUT_REQUIRED_SHAPE, [])
            if needs.get("resultType") != "input_required":
                return result
            params = {"name": tool, "arguments": arguments, "inputResponses": {
                key: self._input(asked.get("method"), asked.get("params") or {}) or {}
                for key, asked in (needs.get("inputRequests") or {}).items()
                if isinstance(asked, dict) and isinstance(asked.get("params", {}), dict)}}
            if "requestState" in needs:
                params["requestState"] = needs["requestState"]
        raise McpError("it asked for input more than %d times in one call" % MAX_MCP_ROUNDS)

    def close(self):
        if self.state != "failed":
            self.state = "stopped"   # (first: its exit is no failure to report)
        transport, self._transport = self._transport, None
        self._generation += 1
        if transport is not None:
            transport.close()


def _texts(value):
    """value if it is a list, else an empty one (for `in` tests)."""
    return value if isinstance(value, list) else []


def _progress_text(params):
    """A progress notification (conformed to PROGRESS_SHAPE) in a few words:
    its message, or progress of total."""
    message = params.get("message")
    if message and message.strip():
        return _one_line(message)[:80]
    progress, total = params.get("progress"), params.get("total")
    if progress is not None and total:
        try:
            share = 100 * progress / total   # (finite numbers, yet 1e308 / 0.5 is inf)
        except (OverflowError, ZeroDivisionError):
            share = math.inf
        if math.isfinite(share):
            return "%d%%" % share
    return "%s done" % progress if progress is not None else ""


def ask_elicitation(server, request):
    """Ask the user on the controlling terminal what the MCP server asks
    (elicitation/create, conformed to ELICIT_SHAPE): in form mode whether to
    answer, then each field of its flat schema in turn; in URL mode whether
    they will visit the URL, which is shown, never opened.  The ElicitResult:
    accept (with the form's content), decline, or cancel (Ctrl-D); decline
    where there is no terminal, or a form chat.py cannot ask.  Like
    ask_consent it never reads stdin and drops what was typed before the
    question; Ctrl-C raises KeyboardInterrupt."""
    schema = request.get("requestedSchema") or {}
    fields = schema.get("properties") or {}
    if request.get("mode") == "url" and not request.get("url"):
        return {"action": "decline"}
    if len(fields) > MAX_MCP_FIELDS or not all(
            isinstance(f, dict) and f.get("type") in _FIELD_TYPES for f in fields.values()):
        return {"action": "decline"}   # (the spec's forms are flat: primitives only)
    try:
        fd = os.open("/dev/tty", os.O_RDWR | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return {"action": "decline"}
    try:
        _discard_typeahead(fd)
        words = _one_line(request.get("message") or "")[:2000]
        if request.get("mode") == "url":
            _write_tty(fd, "chat.py: the MCP server %s asks you to visit %s\n  %s\nchat.py: "
                       "will you (chat.py opens nothing)? [y/N] "
                       % (server, _one_line(request["url"])[:2000], words))
        else:
            _write_tty(fd, "chat.py: the MCP server %s asks: %s\nchat.py: answer it (%d "
                       "fields)? [y/N] " % (server, words, len(fields)))
        answer = _read_tty_answer(fd)
        if answer is None:
            return {"action": "cancel"}
        if answer.lower() not in ("y", "yes"):
            return {"action": "decline"}
        if request.get("mode") == "url":
            return {"action": "accept"}
        content = {}
        required = schema.get("required") or []
        for name, field in fields.items():
            value = _ask_field(fd, name, field, name in required)
            if value is _WRONG:
                return {"action": "cancel"}
            if value is not None:
                content[name] = value
        return {"action": "accept", "content": content}
    finally:
        os.close(fd)


_FIELD_TYPES = {"string": str, "number": float, "integer": int, "boolean": None}


def _ask_field(fd, name, field, required):
    """One field of a form, typed until it fits its type (or enum); None
    for an optional field left empty, _WRONG for Ctrl-D."""
    kind, choices = field["type"], field.get("enum")
    title = field.get("title") if isinstance(field.get("title"), str) else name
    shown = "  %s%s%s%s: " % (
        _one_line(title)[:200],
        " (%s)" % _one_line(field["description"])[:500] if isinstance(
            field.get("description"), str) else "",
        " [one of: %s]" % ", ".join(_one_line(str(c))[:60] for c in choices[:20])
        if isinstance(choices, list) else " [y/n]" if kind == "boolean" else "",
        " [%s]" % _one_line(str(field["default"]))[:200] if "default" in field else "")
    while True:
        _write_tty(fd, shown)
        text = _read_tty_answer(fd)
        if text is None:
            return _WRONG
        if not text:
            if "default" in field:
                return field["default"]
            if not required:
                return None
            _write_tty(fd, "  (this one is needed)\n")
            continue
        value = _field_value(kind, text)
        if value is not None and (not isinstance(choices, list) or value in choices):
            return value
        _write_tty(fd, "  (%s, please)\n" % ("one of the choices" if value is not None else
                                            "a %s" % kind if kind != "boolean" else "y or n"))


def _field_value(kind, text):
    """text as a value of a form field's type, or None if it is not one."""
    if kind == "boolean":
        return {"y": True, "yes": True, "true": True, "n": False, "no": False,
                "false": False}.get(text.lower())
    if kind == "string":
        return text
    try:
        value = _FIELD_TYPES[kind](text) if len(text) < 100 else None
    except ValueError:
        return None
    return value if value is None or kind == "integer" or math.isfinite(value) else None


def _read_tty_answer(fd):
    """One line typed on the terminal fd, stripped; None for Ctrl-D."""
    data = os.read(fd, 4096)
    if not data.endswith(b"\n"):
        os.write(fd, b"\n")
    return data.decode("utf-8", "replace").strip() if data else None


def _base64_size(data):
    """The size of what base64 text data decodes to (without decoding it)."""
    data = data.strip()
    return len(data) * 3 // 4 - (len(data) - len(data.rstrip("=")))


def mcp_result(result):
    """A tools/call result as the model can use it: (text, content parts).
    Text items are joined; structuredContent stands as JSON where there is
    no text; a resource link is a line with its name and URI; an embedded
    text resource is its text; an image is an image part (a tool message
    carries only text); audio and binary resources are described by type
    and decoded size; isError marks the text as an error."""
    if not isinstance(result, dict):
        return "error: the MCP server's result is not an object", []
    texts, parts = [], []
    for item in result.get("content") if isinstance(result.get("content"), list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "text" and isinstance(item.get("text"), str):
            texts.append(item["text"])
        elif kind == "image" and isinstance(item.get("data"), str):
            mime = item.get("mimeType") if isinstance(item.get("mimeType"), str) else "image/png"
            parts.append({"type": "image_url", "image_url": {
                "url": "data:%s;base64,%s" % (mime, item["data"])}})
            texts.append("[an image, %s, is attached below]" % mime)
        elif kind == "resource_link":
            texts.append("[resource %s: %s]" % (item.get("name"), item.get("uri")))
        elif kind == "resource" and isinstance(item.get("resource"), dict):
            resource = item["resource"]
            if isinstance(resource.get("text"), str):
                texts.append(resource["text"])
            else:
                texts.append("[a %s resource of %d bytes: %s]" % (
                    resource.get("mimeType") or "binary",
                    _base64_size(str(resource.get("blob") or "")), resource.get("uri")))
        elif kind == "audio":
            texts.append("[%s audio of %d bytes]" % (item.get("mimeType") or "some",
                                                      _base64_size(str(item.get("data") or ""))))
    if not texts and "structuredContent" in result:
        texts.append(json.dumps(result["structuredContent"], ensure_ascii=False))
    text = "\n".join(texts)
    if len(text) > MAX_TOOL_OUTPUT:
        text = text[:MAX_TOOL_OUTPUT] + "\n[cut at %d KiB]" % (MAX_TOOL_OUTPUT >> 10)
    if result.get("isError") is True:
        text = "error: " + text
    return text, parts


def mcp_tool_name(server, tool, taken):
    """SERVER__TOOL as the API takes a function's name: only A-Z, a-z, 0-9,
    _ and -, at most 64 characters (shortened with a stable hash when
    longer), and not one in taken."""
    name = _MCP_NAME.sub("_", "%s__%s" % (server, tool))
    if len(name) > 64 or name in taken:
        digest = hashlib.sha256(("%s\0%s" % (server, tool)).encode("utf-8")).hexdigest()[:8]
        name = name[:55] + "_" + digest
    while name in taken:
        name = name[:-1] + random.choice("abcdefghijklmnopqrstuvwxyz")
    return name


class McpTools:
    """The tools of every MCP server, as function tools for the model, named
    SERVER__TOOL and mapped back exactly; calls go to their server.

    notify(text) hears what the servers have to say, at the points chat.py
    writes anyway (as a turn begins, after a call), never while the prompt
    waits; on_wait(what, until=None, progress=None) hears what a turn waits
    for (a server starting, a call running) and None when done;
    startup_timeout: seconds a turn waits for a server that is starting,
    counted from its start, unless its config says otherwise.  roots: the
    folders servers are told they may work in (roots/list); elicit(server,
    request): the ElicitResult for what a server asks the user (see
    ask_elicitation; None: every such request is declined)."""

    def __init__(self, specs, *, log_folder, notify, on_wait=None, proxies=None, environ=None,
                 startup_timeout=MCP_STARTUP_TIMEOUT, roots=(), elicit=None):
        self.notify = notify
        self.on_wait = on_wait or (lambda what, **details: None)
        self._notices = []
        self._notices_lock = threading.Lock()
        self.servers = [McpServer(spec, log_folder=log_folder, notify=self._keep, proxies=proxies,
                                  environ=environ, startup_timeout=startup_timeout, roots=roots,
                                  elicit=elicit and self._asking(elicit))
                        for spec in specs]
        self.names = {}   # the name the model sees -> (server, the tool's own name)
        self._late = set()   # (server, its start) said to be late

    def _keep(self, text):
        with self._notices_lock:
            self._notices.append(text)

    def _asking(self, elicit):
        """elicit, with the status line cleared and the notices said first."""
        def ask(server, request):
            self.on_wait(None)
            self.say()
            return elicit(server, request)
        return ask

    def say(self):
        """Say what the servers had to say, in the order it came."""
        with self._notices_lock:
            notices, self._notices = self._notices, []
        for text in notices:
            self.notify(text)

    def start(self):
        """Start every server at once, each in a thread: nothing waits for them here."""
        for server in self.servers:
            server.start()

    def wait_for_servers(self):
        """Wait for the servers still starting, each until its startup timeout
        from its start (on the status line); the late ones are said once, and
        join when they are ready."""
        for server in self.servers:
            if server.state != "starting" or server.started is None:
                continue
            left = server.started + server.startup_timeout - time.monotonic()
            if left > 0:
                self.on_wait("starting MCP server %s" % server.spec.name)
                server.ready.wait(left)
            if not server.ready.is_set() and (server, server.started) not in self._late:
                self._late.add((server, server.started))
                server.late()
        self.on_wait(None)

    def definitions(self):
        """The function tools to offer now: servers still starting waited for
        (see wait_for_servers), tools re-listed after list_changed; the tools
        of a server that died are offered while it may restart."""
        self.wait_for_servers()
        offered, names = [], {}
        for server in self.servers:
            if server.state == "ready" and server.stale:
                try:
                    server.list_tools()
                except McpError as exc:
                    server.error = str(exc)
            if server.state != "ready" and not server.can_restart():
                continue
            for tool in server.tools:
                name = mcp_tool_name(server.spec.name, tool["name"], names)
                names[name] = (server, tool["name"])
                function = {"name": name, "parameters": tool.get("inputSchema") or {
                    "type": "object", "properties": {}}}
                if tool.get("description"):
                    function["description"] = tool["description"]
                offered.append({"type": "function", "function": function})
        self.names = names
        self.say()
        return offered

    def owns(self, name):
        return name in self.names

    def describe(self, name):
        server, tool = self.names[name]
        return "the tool %s of the MCP server %s" % (_shown_name(tool),
                                                     _shown_name(server.spec.name))

    def call(self, name, arguments, timeout, on_wait):
        """Call the tool the model knows as name; (text, parts) for the model.
        Ctrl-C cancels the call and goes on up, to end the turn."""
        server, tool = self.names[name]
        label = "running %s" % name
        try:
            if server.can_restart():   # it died: its tools were offered for this
                server.restart(on_wait)
                on_wait(label)
            result = server.call(tool, parse_json(arguments or "{}"), timeout=timeout,
                                 on_progress=lambda text: on_wait(label, progress=text or None))
        except McpError as exc:
            if exc.code == "timeout":
                return "error: cancelled: %s" % exc
            return "error: %s" % exc
        finally:
            self.say()
        return mcp_result(result)

    def describe_tools(self):
        """Lines for /tools: each tool as the model knows it, its own name,
        its server and the server's state."""
        lines = []
        for name, (server, tool) in sorted(self.names.items()):
            lines.append("  %-30s %s of %s (%s)" % (name, tool, server.spec.name, server.state))
        for server in self.servers:
            if not any(s is server for s, _ in self.names.values()):
                lines.append("  %-30s %s (%s)" % ("(none)", server.spec.name, server.state))
        return lines

    def describe_servers(self):
        """Lines for /mcp: each server's state, protocol, tool count, last error."""
        return ["  %-16s %-9s MCP %-10s %3d tools%s" % (
            s.spec.name, s.state, s.agreed or "-", len(s.tools),
            "  last error: %s" % s.error if s.error else "") for s in self.servers]

    def close(self):
        for server in self.servers:
            server.close()


# ---------------------------------------------------------------------------
# The console: the chat loop and its /commands.
# Lifting: needs Chat, the printer, the files and tools sections.
# ---------------------------------------------------------------------------

class Console:
    """The chat loop: reads input, runs /commands, sends turns.

    chat: the Chat.  read_line(prompt): the next line; raises EOFError at the
    end of input and KeyboardInterrupt on Ctrl-C.  out, err: where replies and
    notices go.  piped: input is a script (the first failed turn ends the run).
    save_path: where to save after every turn (--save).  line_buffer(): what
    is typed at the prompt so far, where the terminal can tell.  tools: the
    Tools that answer tool calls (default: the user types each result).
    new_printer(): a Printer for the next reply (default: a ReplyPrinter on
    out and err).  attachments: content parts (images, audio, files) for the
    first message.  keep(chat): keeps the conversation after every turn
    (default: write it to save_path).  more_waiting(): True when more input
    is already there, as when lines are pasted (a paste is one message).
    models(): the server's model ids (default: asked for once).  editor:
    the command /edit runs (default: vi).  typeahead: a TypedAhead for the
    terminal, holding back the echo of keys typed while a reply streams.
    """

    COMMANDS = {   # name: (method, argument, what it does; None: not listed)
        "/help": ("do_help", "", "list the commands"),
        "/exit": ("do_exit", "", "leave (so do /quit, Ctrl-D, and Ctrl-C twice)"),
        "/quit": ("do_exit", "", None),
        "/reset": ("do_reset", "", "clear the conversation, keep the system message"),
        "/system": ("do_system", "[TEXT]", "show or set the system message"),
        "/model": ("do_model", "[NAME]", "show or set the model"),
        "/history": ("do_history", "", "show the conversation"),
        "/undo": ("do_undo", "", "drop the last exchange"),
        "/retry": ("do_retry", "", "ask again for the last reply"),
        "/continue": ("do_continue", "", "ask for more of a reply that was cut short"),
        "/save": ("do_save", "[FILE]", "save the conversation as a request body"),
        "/load": ("do_load", "FILE", "load a saved conversation (or a list of messages)"),
        "/curl": ("do_curl", "[TEXT]", "show a curl command for the next request"),
        "/set": ("do_set", "KEY VALUE", "set a request field (VALUE is JSON or text)"),
        "/unset": ("do_unset", "KEY", "stop sending a request field"),
        "/params": ("do_params", "", "show the fields sent with each request"),
        "/image": ("do_image", "PATH|URL", "attach an image to the next message"),
        "/audio": ("do_audio", "FILE", "attach recorded speech (WAV or MP3) to the next message"),
        "/file": ("do_file", "FILE", "attach a PDF or a text file to the next message"),
        "/usage": ("do_usage", "", "show the tokens used in this session"),
        "/models": ("do_models", "", "list the models the server offers"),
        "/edit": ("do_edit", "[TEXT]", "write the next message in your editor ($VISUAL, $EDITOR)"),
        "/copy": ("do_copy", "[code]", "copy the last reply (or its last code block) to "
                                       "the clipboard"),
        "/tools": ("do_tools", "", "list the tools the model may call"),
        "/mcp": ("do_mcp", "", "show the MCP servers: state, protocol, tools, last error"),
    }
    FILE_COMMANDS = ("/save", "/load", "/image", "/audio", "/file")   # their argument is a path

    def __init__(self, chat, read_line, out, err, *, piped=False, save_path=None,
                 line_buffer=None, tools=None, new_printer=None, attachments=(), keep=None,
                 more_waiting=None, models=None, editor=None, prompt="> ", more_prompt="... ",
                 typeahead=None):
        self.chat, self.read_line, self.out, self.err = chat, read_line, out, err
        self.typeahead = typeahead
        self.piped, self.save_path, self.line_buffer = piped, save_path, line_buffer
        self.prompt, self.more_prompt = prompt, more_prompt
        self.keep = keep or (lambda chat: self.save_path and save_conversation(
            self.save_path, chat.body()))
        self.more_waiting, self.editor = more_waiting, editor or "vi"
        self.models = models or _once(lambda: chat.client.models())
        self.tools = tools or Tools(ask=read_line)
        self.new_printer = new_printer or (lambda: ReplyPrinter(
            out, err, n=chat.params.get("n", 1)))
        self.attachments = list(attachments)   # /image, /audio, /file: for the next message

    def run(self):
        """Chat until the input ends or the user leaves; return the exit status."""
        armed = False   # Ctrl-C at an empty prompt once: a second one leaves
        while True:
            try:
                message, typed = self.read_message()
            except EOFError:
                return 0
            except KeyboardInterrupt:
                typed = self.line_buffer().strip() if self.line_buffer else ""
                _write_sanitized(self.err, "\n")
                if not typed and armed:
                    return 0
                armed = not typed
                if armed and not self.piped:
                    _stderr_dim(self.err, "(Ctrl-C again or Ctrl-D to leave)\n")
                continue
            armed = False
            text = message.strip()
            if not text:
                continue
            if typed and text.startswith("/") and not text.startswith("//"):
                status = self.command(text)
            else:
                status = self.send(text[1:] if typed and text.startswith("//") else message)
            if status is not None:
                return status

    def send(self, text):
        """Send text, with what is attached to it, as one turn."""
        content = user_content(text, self.attachments)
        check = getattr(self.keep, "check", None)   # (a Keeper refuses what it cannot keep)
        if check is not None:
            try:
                check(self.chat, content)
            except ChatError as exc:
                return self._failed(exc)
        self.attachments = []
        return self.turn(lambda printer: self.chat.send(content, printer))

    def read_message(self):
        """One message: a line, lines joined by a trailing backslash, or a block
        between two lines of three double quotes.  Returns (text, typed), typed
        being False for a block (which is never a command)."""
        ahead = bool(self.more_waiting and self.more_waiting(0))   # before the prompt
        line = self.read_line(self.prompt)
        if line.strip() == '"""':
            lines = []
            while True:
                try:
                    line = self.read_line(self.more_prompt)
                except EOFError:
                    break   # the input ended inside the block: send what came
                if line.strip() == '"""':
                    break
                lines.append(line)
            return "\n".join(lines), False
        command = line.startswith("/") and not line.startswith("//")
        pasted = [line]   # a command waits longer: a slow paste must not run one
        while self.more_waiting and self.more_waiting(COMMAND_WAIT if command else PASTE_WAIT):
            pasted.append(self.read_line(self.more_prompt))
        if len(pasted) > 1 or "\n" in line:   # (a bracketed paste comes as one line)
            return "\n".join(pasted), False   # a paste is one message, never a command
        if command and ahead:
            _stderr_notice(self.err, "%s was not run: it was there before the prompt (typed "
                           "ahead, or the end of a paste); type it at the prompt"
                           % line.split(" ")[0])
            return "", False
        while line.endswith("\\"):
            line = line[:-1] + "\n" + self.read_line(self.more_prompt)
        return line, True

    def command(self, text):
        """Run one /command; return an exit status to leave, else None."""
        name, _, argument = text.partition(" ")
        entry = self.COMMANDS.get(name.lower())
        if entry is None:
            close = difflib.get_close_matches(name.lower(), self.COMMANDS, 1)
            _stderr_notice(self.err, "unknown command %s%s - /help lists them (start a message with "
                  "// to send a slash)" % (name, "; did you mean %s?" % close[0] if close else ""))
            return None
        argument = argument.strip()
        if name.lower() in self.FILE_COMMANDS:
            argument = os.path.expanduser(argument)
        try:
            return getattr(self, entry[0])(argument)
        except ChatError as exc:
            return self._failed(exc)

    def turn(self, action):
        """Run action(printer), which talks to the model; report how it ended."""
        status = None
        try:
            completion = action(self._printer())
            self.chat.follow_tools(completion, self.tools, self._printer)
        except KeyboardInterrupt:
            _stderr_dim(self.err, "[interrupted]\n")
        except StdoutClosed:   # nobody reads the replies any more: kept, and the end
            status = 0
        except ChatError as exc:
            status = self._failed(exc)
        finally:
            if self.typeahead is not None:
                self.typeahead.release()
        try:
            self.keep(self.chat)
        except ChatError as exc:
            _stderr_notice(self.err, "error: %s (the conversation is still here)" % exc)
        except KeyboardInterrupt:   # pressed while it was kept: kept all the same
            _stderr_dim(self.err, "[interrupted]\n")
        return status

    def _printer(self):
        """A printer for the next reply; while it streams, typed keys are held."""
        if self.typeahead is None:
            return self.new_printer()
        return _HoldingKeys(self.new_printer(), self.typeahead)

    def _failed(self, exc):
        _stderr_notice(self.err, "error: %s" % explained(exc))
        return exc.exit_code if self.piped else None

    # The commands: each takes the text after its name.

    def do_help(self, argument):
        lines = ["  %-17s %s\n" % (("%s %s" % (name, arg)).strip(), what)
                 for name, (_, arg, what) in self.COMMANDS.items() if what]
        lines.append("  %-17s %s\n" % ("//TEXT", "send TEXT starting with one slash"))
        lines.append('  %-17s %s\n' % ('"""', 'on its own line: start or end a block of lines'))
        lines.append("  %-17s %s\n" % ("TEXT\\", "a backslash at the end continues the line"))
        _write_sanitized(self.err, "".join(lines))

    def do_exit(self, argument):
        return 0

    def do_reset(self, argument):
        self.chat.reset()
        _stderr_notice(self.err, "the conversation is cleared%s" % (
            " (the system message stays)" if self.chat.messages else ""))

    def do_system(self, argument):
        if argument:
            self.chat.set_system(argument)
            _stderr_notice(self.err, "the system message is set")
        else:
            system = self.chat.messages[:_system_count(self.chat.messages)]
            _stderr_notice(self.err, "system: %s" % (system[0]["content"] if system else "(none)"))

    def do_model(self, argument):
        if argument:
            self.chat.set_model(argument)
        _stderr_notice(self.err, "model: %s" % self.chat.model)

    def do_history(self, argument):
        if not self.chat.messages:
            _stderr_notice(self.err, "the conversation is empty")
        for i, message in enumerate(self.chat.messages, 1):
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "[%s]" % p.get("type")) for p in content
                                   if isinstance(p, dict))
            calls = ", ".join("%s(%s)" % ((c.get("function") or {}).get("name"),
                                          (c.get("function") or {}).get("arguments"))
                              for c in message.get("tool_calls") or ())
            text = (content or "") + ("  [calls %s]" % calls if calls else "")
            _write_sanitized(self.err, "%3d %-9s %s\n" % (i, message.get("role"), text.replace("\n", "\n" + " " * 14)))

    def do_undo(self, argument):
        self.chat.undo()
        _stderr_notice(self.err, "the last exchange is gone; %d message%s left" % (
            len(self.chat.messages), "" if len(self.chat.messages) == 1 else "s"))

    def do_retry(self, argument):
        return self.turn(self.chat.retry)

    def do_continue(self, argument):
        return self.turn(self.chat.continue_reply)

    def do_save(self, argument):
        path = argument or self.save_path
        if not path:
            raise UsageError("/save needs a file name (or start with --save FILE)")
        save_conversation(path, self.chat.body())
        self.save_path = path
        _stderr_notice(self.err, "saved %d messages to %s" % (len(self.chat.messages), path))

    def do_load(self, argument):
        if not argument:
            raise UsageError("/load needs a file name")
        load_conversation(self.chat, argument)
        _stderr_notice(self.err, "loaded %d messages from %s; model %s" % (
            len(self.chat.messages), argument, self.chat.model))

    def do_set(self, argument):
        key, _, value = argument.partition(" ")
        if not key or not value.strip():
            raise UsageError("/set needs a field and a value, e.g. /set temperature 0.2")
        if key == "model":
            return self.do_model(value.strip())
        if key in ("messages", "stream", "stream_options"):
            raise UsageError("/set cannot change %s: %s" % (key, {
                "messages": "/load, /reset and /undo change the conversation",
                "stream": "start chat.py with --no-stream to have whole replies",
                "stream_options": "start chat.py with --usage to ask for usage"}[key]))
        self.chat.set_param(key, parse_value(value.strip()))
        _stderr_notice(self.err, "%s = %s" % (key, json.dumps(self.chat.params[key], ensure_ascii=False)))

    def do_unset(self, argument):
        if argument not in self.chat.params:
            raise UsageError("%s is not set; /params shows what is" % (argument or "/unset KEY:"))
        self.chat.unset_param(argument)
        _stderr_notice(self.err, "%s is no longer sent" % argument)

    def do_params(self, argument):
        shown = build_payload(self.chat.model, [], self.chat.stream, self.chat.params)
        del shown["messages"]
        _write_sanitized(self.err, json.dumps(shown, indent=2, ensure_ascii=False) + "\n")

    def do_image(self, argument):
        self._attach(argument, image_part, "/image needs a file or a URL")

    def do_audio(self, argument):
        self._attach(argument, audio_part, "/audio needs a WAV or MP3 file")

    def do_file(self, argument):
        self._attach(argument, file_part, "/file needs a PDF or a text file")

    def _attach(self, argument, part, usage):
        if not argument:
            raise UsageError(usage)
        self.attachments.append(part(argument))
        _stderr_notice(self.err, "the next message takes %d attachment%s" % (
            len(self.attachments), "" if len(self.attachments) == 1 else "s"))

    def do_models(self, argument):
        _write_sanitized(self.err, "".join("  %s\n" % model for model in self.models()) or
             "  (the server lists no models)\n")

    def do_edit(self, argument):
        text = edit_text(self.editor, argument)
        if text is None:
            _stderr_notice(self.err, "nothing sent: the editor left no text (or failed)")
            return None
        return self.send(text)

    def do_copy(self, argument):
        replies = [m for m in self.chat.messages if m.get("role") == "assistant"
                   and isinstance(m.get("content"), str) and m["content"]]
        if not replies:
            raise UsageError("there is no reply to copy yet")
        text = replies[-1]["content"]
        if argument == "code":
            blocks = code_blocks(text)
            if not blocks:
                raise UsageError("the last reply has no fenced code block")
            text = blocks[-1]
        elif argument:
            raise UsageError("/copy takes nothing, or code")
        terminal = next((s for s in (self.err, self.out) if _is_terminal(s)), None)
        if terminal is None:
            raise UsageError("/copy needs a terminal: it asks the terminal to set the clipboard")
        # OSC 52: the terminal (over SSH too) puts the base64 text on the clipboard.
        text = sanitize(text)   # as shown: pasted, it cannot end a bracketed paste early
        terminal.write("\x1b]52;c;%s\x07" % base64.b64encode(text.encode("utf-8")).decode("ascii"))
        terminal.flush()
        _stderr_notice(self.err, "copied %d characters" % len(text))

    def do_tools(self, argument):
        mcp = self.tools.mcp
        if mcp is not None:
            mcp.definitions()   # (waits for servers still starting, re-lists changed ones)
        listed = ["  %-30s %s\n" % ((t.get("function") or t.get("custom") or {}).get("name"),
                                    "--tools") for t in self.chat.params.get("tools") or ()
                  if isinstance(t, dict)]
        listed += ["  %-30s %s\n" % (name, "--tool-exec") for name in sorted(self.tools.free_text)
                   if name not in tool_names(self.chat.params)]
        listed += [line + "\n" for line in (mcp.describe_tools() if mcp else ())]
        _write_sanitized(self.err, "".join(listed) or "  (no tools: --tools FILE, --mcp FILE)\n")

    def do_mcp(self, argument):
        mcp = self.tools.mcp
        if mcp is None:
            raise UsageError("no MCP servers: start chat.py with --mcp FILE (or mcp = FILE in "
                             "the config)")
        _write_sanitized(self.err, "".join(line + "\n" for line in mcp.describe_servers()))

    def do_usage(self, argument):
        if self.chat.stream and "stream_options" not in self.chat.params:
            # A stream reports usage only when asked: ask from now on.
            self.chat.set_param("stream_options", {"include_usage": True})
            _stderr_notice(self.err, "usage is asked for with each reply from now on "
                           "(chat.py --usage shows it after each)")
        t = self.chat.totals
        counted = ("%d prompt + %d completion = %d tokens" % (
            t["prompt_tokens"], t["completion_tokens"], t["total_tokens"])
            if t["total_tokens"] else "the server reported no usage")
        _stderr_notice(self.err, "this session: %d request%s, %s" % (
            t["requests"], "" if t["requests"] == 1 else "s", counted))

    def do_curl(self, argument):
        _write_sanitized(self.err, self.chat.client.curl(self.chat.next_payload(argument or None))
             + "\n")


class TypedAhead:
    """Keys typed on the terminal fd while a reply streams: not echoed into
    the reply (hold()) but left typed ahead, for the next prompt to read
    (release()).  Where there is no termios, they show, as before."""

    def __init__(self, fd):
        self.fd, self._saved = fd, None

    def hold(self):
        if termios is None or self._saved is not None:
            return
        try:
            saved = termios.tcgetattr(self.fd)
            quiet = list(saved)
            quiet[3] &= ~termios.ECHO   # (the local modes; TCSANOW keeps what was typed)
            termios.tcsetattr(self.fd, termios.TCSANOW, quiet)
        except termios.error:
            return
        self._saved = saved

    def release(self):
        if self._saved is not None:
            saved, self._saved = self._saved, None
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.fd, termios.TCSANOW, saved)


class _HoldingKeys(Printer):
    """printer, with typeahead held from now until its reply ends (and so
    shown again for a tool's consent question, asked between replies)."""

    def __init__(self, printer, typeahead):
        self.printer, self.typeahead = printer, typeahead
        typeahead.hold()

    def chunk(self, chunk):
        self.printer.chunk(chunk)

    def end_line(self):
        self.typeahead.release()
        self.printer.end_line()

    def finish(self, completion):
        self.typeahead.release()
        self.printer.finish(completion)


def edit_text(editor, initial=""):
    """The text the user writes in editor (a command line, run without a
    shell) in a private temporary file, removed afterwards; None if the
    editor failed or left the file empty."""
    fd, path = tempfile.mkstemp(prefix="chat-", suffix=".md")   # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(initial)
        try:
            status = subprocess.call(shlex.split(editor) + [path])
        except (OSError, ValueError) as exc:
            raise UsageError("cannot run the editor %s: %s" % (
                editor, getattr(exc, "strerror", None) or exc)) from None
        try:   # (an "editor" may have removed it, or filled a disk)
            text = read_bounded(path, "the edited message", MAX_FILE_BYTES).decode(
                "utf-8", "replace")
        except UsageError:
            return None
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    return text.strip("\n") if status == 0 and text.strip() else None


def _piped_reader(stream):
    """A read_line for piped input: no prompt, EOFError at the end."""
    def read_line(prompt):
        line = stream.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")
    return read_line


def _terminal_reader(stdin, out, err, environ, commands, complete_argument=None):
    """(read_line, line_buffer, more_waiting) for stdin on a terminal: readline's line
    editing, a history file, Tab completion of commands and of what follows
    them (complete_argument(command, text) gives the candidates), where
    Python has readline; more_waiting() tells a paste from typing."""
    try:
        import readline
    except ImportError:   # (Windows, a minimal build): input() alone
        readline = None
        _stderr_notice(err, "this Python has no readline: no line editing, history or Tab "
                       "completion; the rest works")
    if readline is not None:
        path = os.path.join(_state_home(environ), "chat.py", "history")
        try:
            readline.read_history_file(path)
        except OSError:
            pass
        readline.set_history_length(1000)
        atexit.register(_save_history, readline, path)
        found = []

        def complete(text, state):
            line = readline.get_line_buffer()
            if state == 0:
                found[:] = []
                if not line.startswith("/"):
                    pass
                elif readline.get_begidx() == 0:
                    found[:] = [name + " " for name in commands if name.startswith(text)]
                elif complete_argument:
                    found[:] = complete_argument(line.split(" ", 1)[0].lower(), text)
            return found[state] if state < len(found) else None
        readline.set_completer(complete)
        readline.set_completer_delims(" \t\n")
        if "libedit" in (readline.__doc__ or ""):   # macOS's readline
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")

    typed = {"now": "", "last": None}   # what Ctrl-C interrupted; the last line read

    def read_line(prompt):
        typed["now"] = ""
        if getattr(err, "status", None) is not None:
            err.status.clear()   # the prompt goes where the status line was
        try:
            if _is_terminal(out):   # readline draws the prompt; \001 \002 hide color codes
                line = input(_prompt(err, prompt))
            else:
                _write_sanitized(err, prompt, "1;36")   # stdout is redirected: keep it for replies
                line = input()
        except EOFError:
            _write_sanitized(err, "\n")   # Ctrl-D: leave the terminal on a fresh line
            raise
        except KeyboardInterrupt:
            # readline keeps the last line until the next one starts: a Ctrl-C
            # just as input() begins must not count that line as typed.
            buffer = readline.get_line_buffer() if readline else ""
            typed["now"] = "" if buffer == typed["last"] else buffer
            raise
        typed["last"] = line
        return line

    def more_waiting(wait=PASTE_WAIT):
        # Pasted lines arrive together: after one, the next is already there.
        # Nobody types the next line within PASTE_WAIT of pressing Enter.
        try:
            return bool(select.select([stdin], [], [], wait)[0])
        except (OSError, ValueError, TypeError):   # no select() on this stdin
            return False
    return read_line, lambda: typed["now"], more_waiting


def _completer(models, status=None):
    """complete(command, text): what Tab may put after a /command: file
    names after those that take a file, model ids (models()) after /model.
    status: the StatusLine, held while the ids are asked for, since the
    cursor is on the prompt's line then, after what was typed."""
    def complete(command, text):
        # readline prints the matches as they are, so a match that sanitize()
        # would change (a control character in a model id or a file name) is
        # not offered: it could drive the terminal, and nobody could type it.
        return [match for match in candidates(command, text) if sanitize(match) == match]

    def candidates(command, text):
        if command in Console.FILE_COMMANDS:
            expanded = os.path.expanduser(text)
            return [text + path[len(expanded):] + ("/" if os.path.isdir(path) else " ")
                    for path in sorted(glob.glob(glob.escape(expanded) + "*"))]
        if command == "/model":
            try:
                ids = _held(status, models) if status is not None else models()
                return [model + " " for model in ids if model.startswith(text)]
            except ChatError:
                return []
        return []
    return complete


def _held(status, function):
    """function(), with the status line held while it runs."""
    with status.held():
        return function()


def _once(function):
    """function, called only until it first succeeds; its result kept."""
    kept = []

    def call():
        if not kept:
            kept.append(function())
        return kept[0]
    return call


def _save_history(readline, path):
    try:
        private_folder(os.path.dirname(path))
        readline.write_history_file(path)
        os.chmod(path, 0o600)
    except OSError:
        pass


# ---------------------------------------------------------------------------
# The connection doctor (--check).
# Lifting: needs Client and Chat.
# ---------------------------------------------------------------------------

def _probe_v1(client):
    """--check's probe for a base URL without /v1: the hint to add it, if
    the API answers there (one GET /v1/models); else ""."""
    path = urlsplit(client.base_url).path.rstrip("/")
    if path.endswith("/v1") or "/openai/" in path + "/":
        return ""
    try:
        with client.request("GET", "/v1/models", probe=True) as response:
            client.read_json(response)
    except ChatError:
        return ""
    return "the API answers at --base-url %s/v1" % client.shown_url


class _Report:
    """--check's lines: a status word, then what was found; secrets blanked."""

    def __init__(self, out, redactor):
        self.out, self.failed, self._redactor = out, [], redactor

    def say(self, status, text):
        if status == "FAIL":
            self.failed.append(text)
        _write_sanitized(self.out, self._redactor.redact("%-5s %s\n" % (status, text)))


def _found(exc, request):
    """What a request found, as --check says it: for an error status, the
    status, the server's words, what kind of server and answer it was."""
    if not isinstance(exc, APIError) or exc.status is None:
        return "%s failed: %s" % (request, exc)
    if exc.body is not None:   # an API's own JSON error: its words say it
        return str(exc)
    kind = [exc.headers.get("Content-Type"), exc.headers.get("Server") and
            "server " + exc.headers.get("Server")]
    text = "%s answered %s" % (request, exc.found)
    if any(kind):
        text += " (%s)" % ", ".join(k for k in kind if k)
    if exc.body is None and exc.status in (404, 405, 501):
        text += "; a web server, not an OpenAI-compatible API: is --base-url the API's?"
    return text


def check_connection(chat, out):
    """Answer, in a few lines, whether chat can talk to its server; return 0 if so.

    Is the base URL reachable; is it an OpenAI-compatible API (GET /models);
    is the key accepted; is the model there; does a one-token streamed
    request work.  Each failure names the likely fix.  Give it a client
    with retries=0 to diagnose now rather than wait and retry.
    """
    client = chat.client
    report = _Report(out, client.redactor)
    _write_sanitized(out, "Checking %s with model %s and %s.\n" % (
        client.shown_url, chat.model, "a key" if client.api_key else "no key"))
    try:
        models = _check_models(client, report)
    except ChatError:   # reported: nothing further can be learnt
        return 1
    if models is not None:
        _check_listed(chat.model, models, client, report)
    _check_chat(chat.model, client, report)
    return 1 if report.failed else 0


def _check_models(client, report):
    """GET /models: reachable, an API, the key.  Returns the models listed
    (None if the answer had none); raises the ChatError that ends the check."""
    started = time.monotonic()
    try:
        with client.request("GET", "/models", probe=True) as response:
            report.say("ok", "reachable: HTTP %d in %d ms" % (
                response.status, (time.monotonic() - started) * 1000))
            models = client.read_json(response).get("data")
            if not isinstance(models, list):
                raise StreamError("its JSON has no \"data\" list of models")
    except APIConnectionError as exc:
        report.say("FAIL", "reachable: %s" % explained(exc))
        raise
    except AuthenticationError as exc:
        report.say("ok", "reachable: the server answered HTTP %s" % exc.status)
        report.say("FAIL", "key: %s" % explained(exc))
        raise
    except ChatError as exc:
        if isinstance(exc, APIError) and exc.status:
            report.say("ok", "reachable: the server answered HTTP %s" % exc.status)
        hint = _probe_v1(client) or path_hint(client.base_url)
        report.say("FAIL" if hint else "warn", "OpenAI-compatible: %s%s"
                   % (_found(exc, "GET /models"), " - " + hint if hint else ""))
        if hint:
            raise
        return None
    report.say("ok", "OpenAI-compatible: GET /models lists %d model%s"
               % (len(models), "" if len(models) == 1 else "s"))
    return models


def _check_listed(model, models, client, report):
    report.say("ok", "key: accepted" if client.api_key else "key: none sent, none asked for")
    ids = [m.get("id") for m in models if isinstance(m, dict)]
    if model in ids:
        report.say("ok", "model: %s is listed" % model)
    elif ids:
        report.say("warn", "model: %s is not listed; the server lists %s"
                   % (model, ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")))


def _check_chat(model, client, report):
    """A streamed one-token request, max_tokens renamed if the server asks."""
    started = time.monotonic()
    params = {"max_tokens": 1}
    for _ in range(2):
        payload = build_payload(model, [{"role": "user", "content": "Say OK."}], True, params)
        try:
            chunks = sum(1 for _ in client.stream(payload))
        except IncompleteStreamError:
            chunks = -1
        except APIError as exc:
            params = renamed_max_tokens(params, exc)
            if params is not None:
                continue
            report.say("FAIL", "chat: %s" % _found(exc, "POST /chat/completions"))
            return
        except ChatError as exc:
            report.say("FAIL", "chat: %s" % explained(exc))
            return
        report.say("ok", "chat: a streamed one-token request answered in %d ms (%s)" % (
            (time.monotonic() - started) * 1000,
            "%d chunks" % chunks if chunks >= 0 else "no [DONE] at the end"))
        return


# ---------------------------------------------------------------------------
# Settings: flags, the config file's profiles, the environment.
# Lifting: needs the errors, the URL helpers and run_command.
# ---------------------------------------------------------------------------

def _parse_header(text, number):
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if (not colon or not name or " " in name or any(c in text for c in "\r\n")
            or not all("!" <= c <= "~" for c in name)):   # a name is visible ASCII
        # Not echoed: a mistyped header may well hold a key.
        raise UsageError("-H number %d is not a header; write it as 'Name: value'" % number)
    return name, _header_value(value, "-H number %d" % number)


def _header_value(value, where):
    """value, if HTTP can carry it (Latin-1, no line breaks); else a UsageError."""
    if value is not None:
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise UsageError("%s has characters an HTTP header cannot carry (only Latin-1 "
                             "text can go there)" % where) from None
    return value


def _read_key_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            key = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError("cannot read --api-key-file %s: %s"
                         % (path, getattr(exc, "strerror", None) or "not UTF-8 text")) from None
    if not key:
        raise UsageError("--api-key-file %s has no key on its first line" % path)
    return key


def _config_bool(text):
    value = {"1": True, "yes": True, "true": True, "on": True,
             "0": False, "no": False, "false": False, "off": False}.get(text.lower())
    if value is None:
        raise ValueError("true or false")
    return value


def _config_number(kind, low, high):
    def parse(text):
        value = kind(text)
        if not low <= value <= high:   # nan fails this too
            raise ValueError
        return value
    return parse


def _config_params(text):
    value = parse_json(text)
    if not isinstance(value, dict):
        raise ValueError
    check_params(value)
    return value


def _config_headers(text):
    return [_parse_header(line, i + 1) for i, line in enumerate(
        line for line in text.splitlines() if line.strip())]


def _config_mcp(text):
    """mcp = ...: a line NAME=COMMAND (or NAME=URL) is one server, whole;
    other lines name MCP config files, separated by spaces."""
    return [item for line in text.splitlines() for item in (
        [line.strip()] if _SERVER_ARGUMENT.match(line) else shlex.split(line))]


def _config_choice(*choices):
    def parse(text):
        if text not in choices:
            raise ValueError
        return text
    return parse
# Config key: (how its text becomes a value, what it must be).
CONFIG_KEYS = {
    "base_url": (str, "a URL"),
    "model": (str, "a model name"),
    "api_key": (str, "a key (the file must then be readable by you alone)"),
    "api_key_env": (str, "the name of an environment variable holding the key"),
    "api_key_command": (shlex.split, "a command whose first output line is the key"),
    "organization": (str, "an organization id"),
    "project": (str, "a project id"),
    "headers": (_config_headers, "lines of 'Name: value'"),
    "system": (str, "a system message"),
    "system_role": (_config_choice("system", "developer"), "system or developer"),
    "params": (_config_params, "a JSON object of request fields"),
    "timeout": (_config_number(float, 1e-3, MAX_TIMEOUT), "seconds, above 0"),
    "retries": (_config_number(int, 0, 100), "a whole number from 0 to 100"),
    "log": (_config_bool, "true or false"),
    "markdown": (_config_bool, "true or false"),
    "color": (_config_bool, "true or false"),
    "status": (_config_bool, "true or false"),
    "mcp": (_config_mcp, "MCP config files separated by spaces, or NAME=COMMAND, one a line"),
    "roots": (shlex.split, "the folders MCP servers are told to work in, separated by spaces"),
}


def read_config(path, profile, explicit):
    """([default] and [profile] of the config file at path, each a dict of
    checked values).  A missing file is no config unless explicit (--config).
    Raises UsageError naming the file, the section and the key at fault."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
            mode = os.fstat(f.fileno()).st_mode
        if len(data) > MAX_CONFIG_BYTES:
            raise UsageError("the config file %s is over %d KiB; is it the right file?"
                             % (path, MAX_CONFIG_BYTES >> 10))
        text = data.decode("utf-8")
    except FileNotFoundError:
        if explicit:
            raise UsageError("cannot read the config file %s: it does not exist" % path) from None
        text, mode = "", 0o600
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError("cannot read the config file %s: %s" % (
            path, getattr(exc, "strerror", None) or "it is not UTF-8 text")) from None
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise UsageError("the config file %s is not valid: %s" % (path, _one_line(str(exc)))) from None
    if profile is not None and not parser.has_section(profile):
        raise UsageError("the config file %s has no profile [%s]%s" % (
            path, profile, "; it has " + ", ".join("[%s]" % n for n in parser.sections())
            if parser.sections() else ""))
    sections = {}
    for name in parser.sections():
        checked = {}
        for key, raw in parser.items(name):
            if key not in CONFIG_KEYS:
                raise UsageError("%s [%s]: unknown key %s%s; the keys are %s" % (
                    path, name, key, _did_you_mean(key, CONFIG_KEYS),
                    ", ".join(sorted(CONFIG_KEYS))))
            parse, what = CONFIG_KEYS[key]
            try:
                checked[key] = parse(raw.strip())
            except (ValueError, UsageError) as exc:
                detail = str(exc) if isinstance(exc, UsageError) else what
                raise UsageError("%s [%s] %s: %s" % (path, name, key, detail)) from None
        if mode & 0o022 and ("api_key_command" in checked or mode & 0o002):
            raise UsageError("the config file %s can be changed by others%s; make it yours "
                             "alone: chmod 600 %s" % (path, " and [%s] runs api_key_command"
                                                      % name if "api_key_command" in checked
                                                      else "", path))
        literal = "api_key" in checked or any(is_secret_header(h) for h, _ in checked.get("headers", ()))
        if literal and mode & 0o077:
            raise UsageError("the config file %s holds a key in [%s] and others can read it; "
                             "make it yours alone: chmod 600 %s" % (path, name, path))
        sections[name] = checked
    return sections.get("default", {}), sections.get(profile, {}) if profile else {}


def _did_you_mean(word, known):
    """"; did you mean X?" for the one of known that word is closest to, or ""."""
    close = difflib.get_close_matches(word, list(known), 1)
    return "; did you mean %s?" % close[0] if close else ""


def config_key(section, environ, where, timeout=KEY_COMMAND_TIMEOUT):
    """The API key a config section names: literally, by an environment
    variable, or as the first line a command prints (run without a shell,
    so a password manager can supply it); None if it names none."""
    if "api_key" in section:
        return section["api_key"]
    if "api_key_env" in section:
        key = environ.get(section["api_key_env"], "").strip()
        if not key:
            raise UsageError("%s api_key_env: %s is not set" % (where, section["api_key_env"]))
        return key
    if "api_key_command" in section:
        return _key_from_command(section["api_key_command"], "%s api_key_command" % where,
                                 timeout)
    return None


def _key_from_command(argv, where, timeout):
    """The first line argv prints, run without a shell, at most timeout seconds."""
    if not argv:
        raise UsageError("%s: no command is given" % where)
    try:
        status, out, _ = run_command(argv, timeout=timeout, limit=MAX_KEY_OUTPUT)
    except CommandTimeout:
        raise UsageError("%s: %s did not finish within %gs" % (where, argv[0], timeout)) from None
    except OSError as exc:
        raise UsageError("%s: cannot run %s: %s" % (where, argv[0], exc.strerror)) from None
    lines = out.decode("utf-8", "replace").splitlines()
    if status != 0 or not lines or not lines[0].strip():
        raise UsageError("%s: %s %s" % (where, argv[0], (
            "wrote more than %d KiB" % (MAX_KEY_OUTPUT >> 10) if status is None else
            "exited with status %d" % status if status else "printed no key")))
    return lines[0].strip()


def config_path(args, environ):
    """The config file: --config FILE, else $XDG_CONFIG_HOME/chat.py/config.ini."""
    if args.config:
        return os.path.expanduser(args.config)
    home = environ.get("XDG_CONFIG_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(home, "chat.py", "config.ini")


Settings = namedtuple("Settings", "base_url api_key organization project headers proxies "
                      "timeout retries model system system_role params log markdown color "
                      "status mcp roots key_origin profile withheld secrets")
Settings.__doc__ = """Every setting, resolved: what the Client, the Chat and the display take.
The api_key belongs to key_origin (scheme://host:port) and goes nowhere
else; profile: the config profile in use (or None); withheld: what was
left behind because it belongs to another endpoint (words for the notice,
or None); mcp: the McpSpecs; roots: the folders MCP servers are told of;
secrets: every secret the run knows, for the one Redactor."""


def _settings(args, environ):
    """Resolve every setting: the flag, then the chosen profile of the config
    file, then the OPENAI_* environment variables, then the config's
    [default], then the built-in default.  A kept conversation (-c, --resume)
    goes back to where it was held unless this run names an endpoint
    (--base-url, -p, CHAT_PY_PROFILE); the key and headers of the
    environment and [default] stay with the endpoint they name.  Raises
    UsageError if the result is unusable."""
    path = config_path(args, environ)
    named = args.profile or environ.get("CHAT_PY_PROFILE") or None   # CHAT_PY_PROFILE is -p
    held = {} if named or args.base_url is not None else getattr(args, "origin", None) or {}
    profile_name = named or held.get("chat_py_profile")
    base, profile = read_config(path, profile_name, explicit=bool(args.config))

    def pick(flag, key, variable=None, default=None):
        if flag is not None:
            return flag
        if key in profile:
            return profile[key]
        value = (environ.get(variable) or "").strip() if variable else ""
        return value or base.get(key, default)

    base_url = normalize_base_url(
        held["chat_py_base_url"] if held.get("chat_py_base_url") and not profile_name
        else pick(args.base_url, "base_url", "OPENAI_BASE_URL", DEFAULT_BASE_URL))
    api_key, key_origin, headers, withheld = _credentials(
        args, environ, path, (base, profile, profile_name), base_url, held)
    timeout = pick(args.timeout, "timeout", default=DEFAULT_TIMEOUT)
    retries = pick(args.retries, "retries", default=DEFAULT_RETRIES)
    _check_limits(timeout, retries, args.max_context)
    variables = _key_variables(base, profile, environ, api_key)
    mcp = [] if args.no_mcp else _mcp_servers(args, environ, path, (base, profile), variables)
    return Settings(
        base_url=base_url, api_key=api_key, key_origin=key_origin,
        organization=_header_value(pick(args.organization, "organization", "OPENAI_ORG_ID"),
                                   "--organization"),
        project=_header_value(pick(args.project, "project", "OPENAI_PROJECT_ID"), "--project"),
        headers=headers,
        proxies=proxies_for(urlsplit(base_url).hostname, environ),
        timeout=timeout, retries=retries,
        model=pick(args.model, "model", "OPENAI_MODEL", DEFAULT_MODEL),
        system=pick(args.system, "system"),
        system_role=pick(args.system_role, "system_role", default="system"),
        params=dict(base.get("params", {}), **profile.get("params", {})),
        log=not args.no_log and pick(None, "log", default=True),
        markdown=not args.no_markdown and pick(None, "markdown", default=True),
        color=not args.no_color and pick(None, "color", default=True),
        status=not args.quiet and pick(None, "status", default=True),
        mcp=mcp, profile=profile_name, withheld=withheld,
        roots=[os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(root))
               for root in pick(None, "roots", default=[])],
        secrets=_secrets(api_key, base_url, base.get("headers", []) + headers, mcp)
        + [environ.get(name, "").strip() for name in sorted(variables)]
        + _proxy_secrets(environ))


def _proxy_secrets(environ):
    """The users and passwords in the *_proxy variables (written with or
    without a scheme)."""
    return [secret for name, value in sorted(environ.items()) if name.lower().endswith("_proxy")
            for secret in url_secrets(value if "://" in value else "http://" + value)]


def _credentials(args, environ, path, config, base_url, held):
    """(the API key, the origin it belongs to, the headers to send, the
    words for what stays behind or None).  Without a held conversation
    (-c, --resume) everything belongs to base_url, the endpoint this run
    names.  Going back to a held one, a profile's key and headers go with
    it (they belong to the profile's endpoint), and the rest (the flags',
    the environment's, [default]'s) stay with the endpoint this run names:
    a kept file's recorded origin never makes a credential travel."""
    base, profile, profile_name = config
    usual_url = normalize_base_url((environ.get("OPENAI_BASE_URL") or "").strip()
                                   or base.get("base_url", DEFAULT_BASE_URL)) if held else base_url
    api_key, key_source, profiles = _api_key(args, environ, path, config)
    key_origin = origin_text(base_url if profiles else usual_url)
    sent = may_carry_credentials(base_url, key_origin)
    elsewhere = not may_carry_credentials(base_url, usual_url)
    flags = [_parse_header(h, i + 1) for i, h in enumerate(args.header)]
    behind = [(where, name) for where, pairs in (("%s [default]" % path, base.get("headers", [])),
                                                 ("-H", flags))
              for name, _ in pairs if elsewhere and is_secret_header(name)]
    withheld = (["the key of %s" % key_source] if api_key and not sent else []) + [
        "the %s header of %s" % (name, where) for where, name in behind]
    if not withheld or api_key and sent:   # (a key left behind goes nowhere: nothing to check)
        _check_key(api_key, key_source, base_url, args.allow_insecure_key)
    left = {name for _, name in behind}
    headers = ([(n, v) for n, v in base.get("headers", []) if n not in left]
               + profile.get("headers", []) + [(n, v) for n, v in flags if n not in left])
    return api_key, key_origin, headers, "%s (for %s)" % (
        " and ".join(withheld), urlsplit(usual_url).netloc.rpartition("@")[2]) if withheld else None


def _key_variables(base, profile, environ, api_key):
    """The environment variables that hold chat.py's own key: by name, and
    any other whose value holds it (COPY=$OPENAI_API_KEY)."""
    copies = {name for name, value in environ.items()
              if api_key and len(api_key) >= MIN_SECRET and api_key in value}
    return {"OPENAI_API_KEY"} | copies | {section["api_key_env"] for section in (base, profile)
                                          if "api_key_env" in section}


def _mcp_servers(args, environ, path, config, variables):
    """The McpSpecs of the config's mcp (its relative paths taken from its
    own folder) and of --mcp; variables: chat.py's key, never expanded for
    HTTP."""
    folder = os.path.dirname(os.path.abspath(path))
    return [spec for section in config for argument in section.get("mcp", [])
            for spec in mcp_specs(argument, environ, variables, folder)] + [
        spec for argument in args.mcp for spec in mcp_specs(argument, environ, variables)]


def _api_key(args, environ, path, config):
    """(the API key, where it came from, whether it is the profile's):
    --api-key-file, --api-key, the chosen profile (its own: it belongs to
    the profile's endpoint), then OPENAI_API_KEY, the config's [default],
    in that order; (None, "OPENAI_API_KEY", False) when none gives one.
    config: ([default], [profile], the profile's name)."""
    base, profile, profile_name = config
    if args.api_key is not None and args.api_key_file:
        raise UsageError("give --api-key or --api-key-file, not both")
    if args.api_key_file:
        return _read_key_file(args.api_key_file), "--api-key-file", False
    if args.api_key:
        return args.api_key, "--api-key", False
    where = "%s [%s]" % (path, profile_name)
    key = config_key(profile, environ, where)
    if key:
        return key, where, True
    key = (environ.get("OPENAI_API_KEY") or "").strip()
    if key:
        return key, "OPENAI_API_KEY", False
    where = "%s [default]" % path
    key = config_key(base, environ, where)
    return (key, where, False) if key else (None, "OPENAI_API_KEY", False)


def _check_key(api_key, key_source, base_url, allow_insecure):
    """Refuse a key that is missing where one is needed, cannot be sent in a
    header, or would cross the network in clear text (a UsageError)."""
    parts = urlsplit(base_url)
    host = parts.hostname
    in_url = parts.username is not None   # user:password@: sent as Basic instead of the key
    if not api_key and not in_url and not is_local_host(host):
        raise UsageError(
            "no API key: set OPENAI_API_KEY (or pass --api-key), or point --base-url "
            "at a local server such as localhost:11434/v1")
    if api_key and not all(" " < c < "\x7f" for c in api_key):
        raise UsageError("the API key has spaces or characters that cannot be sent "
                         "in a header (a stray quote?); check %s" % key_source)
    if (api_key or in_url) and in_clear_text(base_url) and not allow_insecure:
        raise UsageError(
            "refusing to send %s in clear text to %s over plain http: use https, pass "
            "--allow-insecure-key on a network you trust%s" % (
                "the password in the URL" if in_url else "the API key", host,
                "" if in_url or key_source != "OPENAI_API_KEY" else
                ", or unset OPENAI_API_KEY if that server needs no key"))


def _check_limits(timeout, retries, max_context):
    if not 0 < timeout <= MAX_TIMEOUT:   # inf, nan and 1e300 cannot be waited for
        raise UsageError("--timeout must be a number of seconds above 0 and at most %d"
                         % MAX_TIMEOUT)
    if retries < 0:
        raise UsageError("--retries must be 0 or more")
    if max_context is not None and max_context < 1:
        raise UsageError("--max-context must be a number of tokens above 0")


def _secrets(api_key, base_url, headers, mcp):
    """Every secret the run knows, in one list for the one Redactor: the key
    (what api_key_command printed among them), the credentials in the base
    URL (and their Basic base64), credential headers' values, and each MCP
    server's tokens."""
    basic = basic_credentials(base_url)[0]   # sent as Basic: its base64 too
    return ([api_key] + url_secrets(base_url)
            + ([basic_authorization(basic).split(" ")[1]] if basic else [])
            + [value for name, value in headers if is_secret_header(name)]
            + [value.split(" ")[-1] for name, value in headers if is_secret_header(name)]
            + [secret for spec in mcp for secret in mcp_secrets(spec)])


# ---------------------------------------------------------------------------
# The command line: the glue that joins every section, then main().
# Lifting: not meant to be lifted; each decision is a named function.
# ---------------------------------------------------------------------------

def _parser():

    class Parser(argparse.ArgumentParser):
        def error(self, message):   # one line, exit 2, as for every usage error
            # A mistyped --api_key=sk-... must not be echoed: no value after "=".
            message = re.sub(r"(--?[\w-]+)=\S+", r"\1=...", message)
            raise UsageError("%s (see chat.py --help)" % message)

    parser = Parser(prog="chat.py", add_help=False)
    add = parser.add_argument
    add("prompt", nargs="*")
    add("-m", "--model")
    add("-s", "--system")
    add("-i", "--interactive", action="store_true")
    add("--base-url")
    add("--api-key")
    add("--api-key-file")
    add("--allow-insecure-key", action="store_true")
    add("--organization")
    add("--project")
    add("-H", "--header", action="append", default=[])
    add("--no-stream", action="store_true")
    add("-o", "--output", choices=("text", "json"), default="text")
    add("--timeout", type=float)
    add("--retries", type=int)
    add("--check", action="store_true")
    add("--save")
    add("--load")
    add("--max-context", type=int)
    add("--no-color", action="store_true")
    add("--no-markdown", action="store_true")
    add("-q", "--quiet", action="store_true")
    add("--system-role", choices=("system", "developer"))
    add("--config")
    add("-p", "--profile")
    add("--no-log", action="store_true")
    add("-c", "--continue", dest="resume_last", action="store_true")
    add("--resume", metavar="ID")
    add("--list", nargs="?", const="", metavar="TEXT")
    add("--show", nargs="?", const="", metavar="ID")
    add("-r", "--reply", nargs="?", const="", metavar="ID")
    add("--delete", metavar="ID")
    add("-x", "--extract", dest="extract", action="store_const", const="first")
    add("--xl", "--extract-last", dest="extract", action="store_const", const="last")
    add("--models", action="store_true")
    add("--temperature", type=float)
    add("--top-p", type=float)
    add("-n", type=int)
    add("--max-tokens", type=int)
    add("--max-completion-tokens", type=int)
    add("--stop", action="append", default=[])
    add("--presence-penalty", type=float)
    add("--frequency-penalty", type=float)
    add("--logit-bias", action="append", default=[])
    add("--logprobs", action="store_true")
    add("--top-logprobs", type=int)
    add("--seed", type=int)
    add("--user")
    add("--service-tier")
    add("--response-format", choices=("json_object", "text"))
    add("--json-schema")
    add("--tools")
    add("--tool-choice")
    add("--no-parallel-tool-calls", action="store_true")
    add("--functions")
    add("--function-call")
    add("--usage", action="store_true")
    add("--param", action="append", default=[])
    add("--image", action="append", default=[])
    add("--audio", action="append", default=[])
    add("--file", action="append", default=[])
    add("--audio-out")
    add("--voice", default=DEFAULT_VOICE)
    add("--reasoning-effort")
    add("--hide-reasoning", action="store_true")
    add("--tool-exec", action="append", default=[])
    add("--tool-description", action="append", default=[], metavar="NAME=TEXT")
    add("--mcp", action="append", default=[])
    add("--no-mcp", action="store_true")
    add("--mcp-startup-timeout", type=float, default=MCP_STARTUP_TIMEOUT)
    add("--yes", action="store_true")
    add("--max-tool-rounds", type=int, default=DEFAULT_TOOL_ROUNDS)
    add("--tool-timeout", type=float, default=DEFAULT_TOOL_TIMEOUT)
    add("-h", "--help", action="store_true")
    add("--manual", action="store_true")
    add("--version", action="store_true")
    return parser


_QUOTE_IT = "; if words that look like flags are part of the prompt, quote the whole prompt " \
            "or put -- before it"


def _arguments(argv):
    """The command line parsed; what it does not take is a usage error that
    says what was probably meant: a flag's right spelling, or, for words
    after the prompt's first word, to quote the prompt or put -- before it."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if not rest and args.prompt and _reads_the_log(args):   # `chat.py how do I rm -rf`
        parser.error("--list, --show, -r and --delete take no PROMPT" + _QUOTE_IT)
    first = next((i for i, word in enumerate(argv) if args.prompt and word == args.prompt[0]),
                 len(argv))
    ended = "--" in argv[:first]   # (then every word after it is the prompt's)
    after = argv[first:argv.index("--")] if "--" in argv[first:] else argv[first:]
    flagged = not ended and any(word.startswith("-") and word != "-" for word in after)
    named = [word.split("=")[0] for word in rest if word.startswith("-")]
    if flagged and not named and (len(args.prompt) > 1 or rest):   # `what does tar -c do`
        parser.error("a flag after the prompt's first word" + _QUOTE_IT)
    if not rest:
        return args
    flags = [f for action in parser._actions for f in action.option_strings]
    unknown = next((word for word in named if word.startswith("--")), None)
    hint = _did_you_mean(unknown, flags) if unknown else ""
    # Only the flags are named: the words after one may be a key (--api-kye sk-...).
    others = len(rest) - len(named)
    parser.error("unrecognized arguments: %s%s%s" % (
        " ".join(named), " and %d more word%s" % (others, "" if others == 1 else "s")
        if others else "", hint or (_QUOTE_IT if flagged else "")))


def _json_schema(path):
    """response_format.json_schema from a file: a bare schema, or {name, schema, strict}."""
    data = read_json_file(path, "--json-schema")
    if not isinstance(data, dict):
        raise UsageError("--json-schema %s must hold a JSON object (a schema)" % path)
    if isinstance(data.get("schema"), dict) and isinstance(data.get("name"), str):
        return dict({"strict": True}, **data)
    name = re.sub(r"[^A-Za-z0-9_-]", "_", os.path.splitext(os.path.basename(path))[0])[:64]
    return {"name": name or "schema", "schema": data, "strict": True}


# The flag that sets each body field check_params knows, to name it by.
FLAG_NAMES = {
    "temperature": "--temperature",
    "top_p": "--top-p",
    "n": "-n",
    "max_tokens": "--max-tokens",
    "max_completion_tokens": "--max-completion-tokens",
    "stop": "--stop",
    "presence_penalty": "--presence-penalty",
    "frequency_penalty": "--frequency-penalty",
    "logit_bias": "--logit-bias",
    "logprobs": "--logprobs",
    "top_logprobs": "--top-logprobs",
    "seed": "--seed",
    "user": "--user",
    "service_tier": "--service-tier",
    "response_format": "--response-format",
    "tools": "--tools",
    "tool_choice": "--tool-choice",
    "parallel_tool_calls": "--no-parallel-tool-calls",
    "functions": "--functions",
    "function_call": "--function-call",
    "stream_options": "--usage",
    "reasoning_effort": "--reasoning-effort",
    "modalities": "--audio-out",
    "audio": "--voice",
}


def _request_params(args):
    """The body fields the flags ask for: only those set, checked."""
    params = _plain_fields(args)
    params.update(_file_fields(args))
    params.update(_choice_fields(args))
    check_params(params, FLAG_NAMES)
    extra = _param_fields(args.param)
    try:   # a field --param sets is named as sent, not by the flag that was not given
        check_params(dict(params, **extra))
    except UsageError as exc:
        raise UsageError("--param: %s" % exc) from None
    params.update(extra)
    return params


def _plain_fields(args):
    """The fields whose flag gives the value as it is sent."""
    params = {key: value for key, value in (
        ("temperature", args.temperature), ("top_p", args.top_p), ("n", args.n),
        ("max_tokens", args.max_tokens), ("max_completion_tokens", args.max_completion_tokens),
        ("presence_penalty", args.presence_penalty),
        ("frequency_penalty", args.frequency_penalty), ("top_logprobs", args.top_logprobs),
        ("seed", args.seed), ("user", args.user), ("service_tier", args.service_tier),
        ("reasoning_effort", args.reasoning_effort), ("stop", args.stop or None),
        ("logprobs", args.logprobs or None),
        ("parallel_tool_calls", False if args.no_parallel_tool_calls else None))
        if value is not None}
    for item in args.logit_bias:
        token, _, bias = item.partition("=")
        try:
            params.setdefault("logit_bias", {})[str(int(token))] = parse_value(bias)
        except ValueError:
            raise UsageError("--logit-bias takes TOKEN_ID=BIAS, e.g. 50256=-100, not %r"
                             % item) from None
    return params


def _file_fields(args):
    """The fields read from files: --json-schema, --tools, --functions."""
    params = {}
    if args.response_format and args.json_schema:
        raise UsageError("give --response-format or --json-schema, not both")
    if args.json_schema:
        params["response_format"] = {"type": "json_schema",
                                     "json_schema": _json_schema(args.json_schema)}
    if args.tools:
        tools = read_json_file(args.tools, "--tools")
        if isinstance(tools, list):   # bare function definitions are welcome too
            tools = [t if not isinstance(t, dict) or "type" in t or "name" not in t
                     else {"type": "function", "function": t} for t in tools]
        params["tools"] = tools
    if args.functions:
        params["functions"] = read_json_file(args.functions, "--functions")
    return params


def _choice_fields(args):
    """The fields whose flag names a choice the API spells as an object."""
    params = {}
    if args.response_format:
        params["response_format"] = {"type": args.response_format}
    if args.tool_choice:
        params["tool_choice"] = (args.tool_choice if args.tool_choice in ("auto", "none", "required")
                                 else {"type": "function", "function": {"name": args.tool_choice}})
    if args.function_call:
        params["function_call"] = (args.function_call if args.function_call in ("auto", "none")
                                   else {"name": args.function_call})
    if (args.usage or args.output == "json") and not args.no_stream:
        params["stream_options"] = {"include_usage": True}   # the document's usage
    if args.audio_out:
        params["modalities"] = ["text", "audio"]
        params["audio"] = {"voice": args.voice,
                           "format": _audio_format(args.audio_out, not args.no_stream)}
    return params


def _param_fields(items):
    """--param KEY=JSON, each."""
    params = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not key.strip() or not equals:
            raise UsageError("--param takes KEY=JSON, e.g. --param reasoning_effort='\"low\"', "
                             "not %r" % item)
        params[key.strip()] = parse_value(value)
    return params


def _audio_format(path, streaming):
    """The audio format to ask for, to write --audio-out's file."""
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if streaming:   # the API streams audio only as raw 16-bit PCM
        if extension in ("wav", "pcm"):
            return "pcm16"
        raise UsageError("a streamed reply's audio comes as PCM: name --audio-out FILE.wav "
                         "(or .pcm), or add --no-stream for .%s" % (extension or "FORMAT"))
    formats = {"wav": "wav", "mp3": "mp3", "flac": "flac", "opus": "opus", "aac": "aac",
               "pcm": "pcm16"}
    if extension not in formats:
        raise UsageError("--audio-out names its format by its extension: .wav, .mp3, .flac, "
                         ".opus, .aac or .pcm")
    return formats[extension]


def _tools(args, ask, err, mcp=None, params=None):
    """The Tools that --tool-exec, --yes, --tool-timeout and --max-tool-rounds
    describe; ask(question) reads a tool's result typed by the user (None:
    nobody to ask); params: the request fields (a command whose tool they do
    not define is offered with one free-text input).  Consent to run a
    command is asked on the terminal."""
    commands = _tool_commands(args)
    if args.max_tool_rounds < 0 or not 0 < args.tool_timeout <= MAX_TIMEOUT:
        raise UsageError("--max-tool-rounds must be 0 or more and --tool-timeout above 0 "
                         "and at most %d seconds" % MAX_TIMEOUT)
    status = getattr(err, "status", None)
    return Tools(commands, consent=ask_consent, ask_first=not args.yes, ask=ask,
                 notify=lambda text: _stderr_notice(err, text), timeout=args.tool_timeout,
                 max_rounds=args.max_tool_rounds, on_wait=status and status.wait, mcp=mcp,
                 redactor=getattr(err, "redactor", None),
                 free_text=set(commands) - tool_names(params or {}))


def _tool_commands(args):
    """--tool-exec NAME=COMMAND, each: {NAME: argv}."""
    commands = {}
    for item in args.tool_exec:
        name, equals, command = item.partition("=")
        try:
            argv = shlex.split(command) if equals else []
        except ValueError as exc:   # an unbalanced quote
            raise UsageError("--tool-exec %s: %s" % (name.strip(), exc)) from None
        if not name.strip() or not argv:
            raise UsageError("--tool-exec takes NAME=COMMAND, e.g. get_time='date -u', not %r"
                             % item)
        commands[name.strip()] = argv
    return commands


def _command_tools(args):
    """{NAME: the definition command_tool() offers} for each --tool-exec
    command, described by --tool-description NAME=TEXT or by its command."""
    commands = _tool_commands(args)
    described = {}
    for item in args.tool_description:
        name, equals, text = item.partition("=")
        if not equals or name.strip() not in commands:
            raise UsageError("--tool-description takes NAME=TEXT for a --tool-exec NAME, not %r"
                             % item)
        described[name.strip()] = text.strip()
    offered = {}
    for name, argv in commands.items():
        if not re.match(r"[A-Za-z0-9_-]{1,64}\Z", name):
            raise UsageError("--tool-exec %s: a tool's name is 1 to 64 letters, digits, _ or -"
                             % name)
        offered[name] = command_tool(name, described.get(name) or (
            "Runs `%s` on the user's machine with the input as its stdin; "
            "returns what it prints" % " ".join(shlex.quote(word) for word in argv)))
    return offered


def _state_home(environ):
    return environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state")


def _run(args, settings, stdin, out, err, environ):
    """Everything after the settings: --models, --check, one-shot, or the console."""
    notify = lambda text: _stderr_notice(err, text)   # noqa: E731
    _check_combination(args)
    _check_tls(settings.base_url)
    on_wait = err.status and err.status.wait
    client = Client(settings.base_url, api_key=settings.api_key, key_for=settings.key_origin,
                    organization=settings.organization, project=settings.project,
                    headers=settings.headers, proxies=settings.proxies,
                    timeout=settings.timeout, on_retry=notify, on_wait=on_wait,
                    redactor=err.redactor, connections=keep_alive(on_wait),
                    retries=0 if args.check else settings.retries)   # --check diagnoses now
    try:
        return _run_with(client, args, settings, stdin, out, err, environ)
    finally:
        client.close()


def _check_tls(base_url):
    """An https:// URL needs the ssl module, which a Python may be built without."""
    _import_network()
    if ssl is None and urlsplit(base_url).scheme == "https":
        raise UsageError("%s is https, and this Python has no ssl module (built without "
                         "OpenSSL): run chat.py with a Python that has it, or use an http:// "
                         "server (a local one)" % shown_url(base_url))


def _run_with(client, args, settings, stdin, out, err, environ):
    notify = lambda text: _stderr_notice(err, text)   # noqa: E731
    if args.models:
        _stdout_show(out, "".join(model + "\n" for model in client.models()))
        return 0
    flags = _request_params(args)
    commands = _command_tools(args)
    mcp = _mcp_tools(settings, args, environ, notify, err.status and err.status.wait)

    def more_tools():   # the commands no request field defines, and the MCP servers' tools
        defined = tool_names(chat.params)
        return ([tool for name, tool in commands.items() if name not in defined]
                + (mcp.definitions() if mcp else []))
    try:
        chat = Chat(client, settings.model, system=settings.system,
                    params=dict(settings.params, **flags), stream=not args.no_stream,
                    max_context=args.max_context, notify=notify,
                    system_role=settings.system_role, more_tools=more_tools)
        return _talk(chat, mcp, args, settings, stdin, out, err, environ, flags)
    finally:
        if mcp is not None:
            mcp.close()


def _mcp_tools(settings, args, environ, notify, on_wait):
    """The MCP servers the settings name, started (each in its own thread), or
    None; one whose entry chat.py cannot use is said and skipped."""
    specs = settings.mcp
    for spec in specs:
        if spec.problem:
            notify("%s; that server is skipped" % spec.problem)
        for variable in spec.blanked:   # named, never its value
            notify("MCP server %s: ${%s} is left empty: chat.py's key goes only to the API "
                   "(a stdio server may be given it in its \"env\")" % (spec.name, variable))
    specs = [spec for spec in specs if not spec.problem]
    if not specs:
        return None
    if not 0 < args.mcp_startup_timeout <= MAX_TIMEOUT:
        raise UsageError("--mcp-startup-timeout must be above 0 and at most %d seconds"
                         % MAX_TIMEOUT)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise UsageError("two MCP servers are named %s; each needs a name of its own"
                         % next(n for n in names if names.count(n) > 1))
    folder = os.path.join(_state_home(environ), "chat.py")   # their stderr: mcp-NAME.log
    try:
        private_folder(folder)
    except OSError as exc:
        notify("MCP servers' stderr is not kept: cannot make %s (%s)" % (folder, exc.strerror))
    mcp = McpTools(specs, log_folder=folder, notify=notify, on_wait=on_wait,
                   proxies=lambda url: proxies_for(urlsplit(url).hostname, environ),
                   environ=mcp_environment(environ, settings.secrets),
                   startup_timeout=args.mcp_startup_timeout,
                   roots=settings.roots or [os.getcwd()],
                   elicit=None if args.yes else ask_elicitation)
    mcp.start()
    return mcp


def _talk(chat, mcp, args, settings, stdin, out, err, environ, flags):
    """The conversation itself: --check, one-shot, or the console."""
    notify = lambda text: _stderr_notice(err, text)   # noqa: E731
    carried = args.carried   # -c or --resume: the kept file it goes on in, read by _go_back
    seen = args.seen if carried else None
    _load(args, chat, carried or args.load, flags, notify)
    if args.check:
        return check_connection(chat, out)
    prompt = _prompt_text(args, stdin)
    missing = _fallbacks(args, settings, mcp, _is_terminal(stdin) and (
        args.interactive or not prompt))   # (the chat on a terminal)
    if missing:
        notify(missing)
    attachments = ([image_part(path) for path in args.image]   # all read before any request
                   + [audio_part(path) for path in args.audio]
                   + [file_part(path) for path in args.file])
    new_printer = _printer_factory(args, settings, chat, out, err, environ)
    keep = Keeper(_conversation_log(environ) if settings.log else None,
                  path=carried if settings.log else None, seen=seen, save_path=args.save,
                  origin=_origin(settings, args, environ), notify=notify)
    if prompt and not args.interactive:
        content = user_content(prompt, attachments)
        keep.check(chat, content)
        return _one_shot(args, chat, content, stdin, out, err, new_printer, keep, mcp)
    console = _console(args, chat, stdin, out, err, environ, mcp,
                       new_printer=new_printer, attachments=attachments, keep=keep)
    if prompt:   # the first turn of -i
        status = console.send(prompt)
        if status is not None:
            return status
    return console.run()


def _fallbacks(args, settings, mcp, chatting):
    """What works otherwise on a Python without termios or fcntl (Windows, a
    minimal build), where this run would use them (chatting: the chat runs
    on a terminal), as a notice; or None."""
    missing = []
    if termios is None and (chatting or (args.tool_exec or mcp) and not args.yes):
        missing.append("termios (keys typed ahead are not held back: they show in a reply "
                       "and could answer a question to run a tool)")
    if fcntl is None and settings.log:
        missing.append("fcntl (kept conversations are not locked while written)")
    if not missing:
        return None
    return "this Python has no %s; the rest works" % " and no ".join(missing)


def _check_combination(args):
    if args.interactive and args.output == "json":
        raise UsageError("--output json prints one document, so it works with one-shot "
                         "prompts, not with -i")
    if args.extract and (args.interactive or args.output == "json"):
        raise UsageError("-x and --xl print the code of a one-shot reply (or, with -r and "
                         "--show, of a kept one): not with %s"
                         % ("-i" if args.interactive else "--output json"))
    if sum(map(bool, (args.load, args.resume_last, args.resume))) > 1:
        raise UsageError("give one of --load, -c and --resume")


def _carried_on(args, log, notify):
    """The kept conversation that -c or --resume ID carries on, or None."""
    if args.resume:
        return log.find(args.resume)
    if not args.resume_last:
        return None
    path = log.latest(notify)
    if path is None:
        raise UsageError("there is no conversation to continue yet (%s is empty)" % log.folder)
    return path


def _go_back(args, environ, err):
    """For -c and --resume: set args.carried, and args.origin, where the kept
    conversation was held (_settings goes back there unless this run names
    an endpoint; _moving() says so when it moves)."""
    log = _conversation_log(environ)
    args.carried = _carried_on(args, log, lambda text: _stderr_notice(err, text))
    args.origin = {}
    if args.carried:
        args.seen = _signature(args.carried)   # (before it is read: Keeper compares)
        args.carried_body, args.origin = split_origin(
            read_json_file(args.carried, "the conversation"))


def _moving(args, settings, environ):
    """The notice for a kept conversation going on at another endpoint, or
    going back to its own without credentials that belong elsewhere; or None."""
    held = args.origin.get("chat_py_profile") or args.origin.get("chat_py_base_url")
    now = _origin(settings, args, environ)
    here = now.get("chat_py_profile") or now.get("chat_py_base_url")
    if held and held != here:
        return "this conversation was held at %s; it goes on at %s" % (held, here)
    if settings.withheld:
        host = urlsplit(shown_url(settings.base_url)).netloc
        return "this conversation goes on at %s, where it was held, without %s; %s" % (
            host, settings.withheld, _FIXES["withheld"][2:].replace(" it ", " %s " % host, 1))
    return None


def _origin(settings, args, environ):
    """Where a conversation is held, as it is kept: the base URL without its
    credentials (user, password, secret query values), the profile if one
    was chosen; never a key."""
    parts = urlsplit(settings.base_url)
    query = "&".join(name + equals + value for name, equals, value in _query_items(parts.query)
                     if not (equals and _SECRET_NAME.search(name)))
    base_url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, query, ""))
    return {"chat_py_base_url": base_url, "chat_py_profile": settings.profile}


def _load(args, chat, path, flags, notify):
    """Load the conversation at path into chat, the flags winning over its fields,
    and say which fields it will send; --load F --save F with no F yet starts F
    instead."""
    if not path:
        return
    starts_save = (path == args.load and args.save and not os.path.exists(path)
                   and os.path.abspath(args.save) == os.path.abspath(path))
    if starts_save:
        return
    before = dict(chat.params)
    load_conversation(chat, path, model=args.model, params=flags,
                      body=args.carried_body if path == args.carried else None)
    if args.system:
        chat.set_system(args.system)
    brought = {k: v for k, v in chat.params.items() if k not in flags and before.get(k) != v}
    if brought:   # each may multiply the cost (n) or change the service: said first
        notify("the loaded conversation sends %s with each request (a flag, or /unset "
               "in the chat, changes that)" % ", ".join(
                   "%s: %s" % (k, _one_line(json.dumps(v, ensure_ascii=False))[:40])
                   for k, v in sorted(brought.items())))


def _prompt_text(args, stdin):
    """The one-shot prompt: the PROMPT words, then piped stdin (unless -i)."""
    prompt = " ".join(args.prompt)
    if _is_piped(stdin) and not args.interactive:
        piped_text = stdin.read()
        prompt = "\n\n".join(t for t in (prompt, piped_text.strip("\n")) if t.strip())
        if not prompt:
            raise UsageError("nothing to send: give a PROMPT or pipe some text in")
    return prompt


def _is_piped(stdin):
    return stdin is not None and not _is_terminal(stdin)


def _printer_factory(args, settings, chat, out, err, environ):
    """new_printer(show_text=True, asked=None): a ReplyPrinter for the next
    reply, as the flags ask (asked: Tools.asked, for calls the question shows)."""
    markdown = settings.markdown and _color_wanted(settings, environ, out)
    audio = AudioFile(args.audio_out, (chat.params.get("audio") or {}).get("format")) \
        if args.audio_out else None

    def new_printer(show_text=True, asked=None):
        return ReplyPrinter(out, err, n=chat.params.get("n", 1), show_text=show_text,
                            reasoning=not args.hide_reasoning, usage=args.usage,
                            logprobs=bool(chat.params.get("logprobs")), audio=audio,
                            markdown=markdown, status=err.status, asked=asked)
    return new_printer


def _console(args, chat, stdin, out, err, environ, mcp=None, **options):
    """The Console for the chat: on the terminal, or reading a script from stdin."""
    if stdin is None:
        raise UsageError("no input to chat with: give a PROMPT")
    models = _once(chat.client.models)   # for /models and Tab after /model
    piped = _is_piped(stdin)
    if piped:
        read_line, line_buffer, waiting = _piped_reader(stdin), None, None
    else:
        read_line, line_buffer, waiting = _terminal_reader(
            stdin, out, err, environ, Console.COMMANDS,
            _completer(models, getattr(err, "status", None)))
        _write_sanitized(err, "chat.py %s - %s at %s. /help lists commands, Ctrl-D quits.\n"
             % (__version__, chat.model, chat.client.shown_url))
    if not piped:
        options["typeahead"] = TypedAhead(stdin.fileno())
    tools = _tools(args, read_line, err, mcp, chat.params)
    new_printer = options.pop("new_printer")
    return Console(chat, read_line, out, err, piped=piped, save_path=args.save,
                   line_buffer=line_buffer, tools=tools, more_waiting=waiting, models=models,
                   editor=environ.get("VISUAL") or environ.get("EDITOR"),
                   new_printer=lambda: new_printer(asked=tools.asked), **options)


def _conversation_log(environ):
    return ConversationLog(os.path.join(_state_home(environ), "chat.py", "conversations"))


def _reads_the_log(args):
    return (args.list is not None or args.show is not None or args.reply is not None
            or args.delete is not None)


def _conversations(args, log, out, notify):
    """--list, --show, --reply, --delete: the kept conversations, from the shell."""
    if args.list is not None:
        return _list_conversations(log, args.list, args.n or LIST_LIMIT, out, notify)
    if args.delete is not None:
        if not args.delete.strip() or args.delete.startswith("-"):   # an unset $ID, a slip
            raise UsageError("--delete needs a conversation's ID (chat.py --list shows "
                             "them), not %r" % args.delete)
        path = log.find(args.delete)
        try:
            os.unlink(path)
        except OSError as exc:
            raise OutputError("cannot delete %s: %s" % (path, exc.strerror)) from None
        notify("deleted %s" % os.path.basename(path)[:-5])
        return 0
    wanted = args.show if args.show is not None else args.reply
    path = log.find(wanted) if wanted else log.latest(notify)
    if path is None:
        raise UsageError("there is no kept conversation yet (%s is empty)" % log.folder)
    body = split_origin(read_json_file(path, "the conversation"))[0]
    try:
        messages = parse_conversation(body)[1]
    except UsageError as exc:
        raise UsageError("cannot read %s: %s" % (path, exc)) from None
    replies = [m["content"] for m in messages if m.get("role") == "assistant"
               and isinstance(m.get("content"), str)]
    if args.reply is not None:
        if not replies:
            raise UsageError("%s has no reply yet" % os.path.basename(path)[:-5])
        _stdout_show(out, _extracted(replies[-1], args.extract, notify) if args.extract
                     else replies[-1] + ("" if replies[-1].endswith("\n") else "\n"))
    elif args.extract and any(code_blocks(reply) for reply in replies):
        _stdout_show(out, "".join(_extracted(reply, args.extract) for reply in replies
                                  if code_blocks(reply)))
    elif args.output == "json":
        _stdout_show(out, json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    else:
        if args.extract:
            notify("no reply there has a fenced code block: here is all of it")
        _stdout_show(out, conversation_markdown(os.path.basename(path)[:-5], body))
    return 0


def _extracted(text, which, notify=None):
    """-x (which: "first") or --xl ("last"): that fenced code block of a
    reply, ending in a newline; a reply with none is given whole, and
    notify(text) hears of it."""
    blocks = code_blocks(text)
    if blocks:
        text = blocks[0] if which == "first" else blocks[-1]
    elif notify is not None:
        notify("the reply has no fenced code block: here it is whole")
    return text if text.endswith("\n") or not text else text + "\n"


def _list_conversations(log, text, limit, out, notify):
    """--list [TEXT]: the kept conversations, newest first, one a line, in
    aligned columns; TEXT keeps those with it in any message."""
    wanted = text.lower()
    rows, said = [], []
    entries = log.entries(lambda line: (said.append(line), notify(line)))
    try:
        for id, path, modified, body in entries:
            body, origin = split_origin(body)
            messages = body.get("messages") if isinstance(body, dict) else body
            if wanted and not any(wanted in json.dumps(m, ensure_ascii=False).lower()
                                  for m in messages):
                continue
            rows.append(conversation_summary(id, modified, body, origin))
            if len(rows) == limit:
                break
    finally:
        entries.close()   # the notice of skipped files, if any
    if not rows and (text or not said):   # (skipped files were said already)
        notify("no kept conversation has %s in it" % json.dumps(text, ensure_ascii=False)
               if text else "no conversation is kept yet (in %s)" % log.folder)
    if not rows:
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    _stdout_show(out, "".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths))
                              + "  " + row[5] + "\n" for row in rows))
    return 0


def _one_shot(args, chat, content, stdin, out, err, new_printer, keep, mcp=None):
    """Send one message (and answer its tool calls); print the reply or the document."""
    ask = None
    if stdin is not None and _is_terminal(stdin):   # someone to type a tool's result
        ask = lambda question: (_write_sanitized(err, question), stdin.readline().strip())[1]   # noqa: E731
    tools = _tools(args, ask, err, mcp, chat.params)
    printer = lambda: new_printer(   # noqa: E731
        show_text=args.output == "text" and not args.extract, asked=tools.asked)
    try:
        completion = chat.send(content, printer())
        if tools.commands or tools.mcp:
            completion = chat.follow_tools(completion, tools, printer)
    finally:
        keep(chat)
    if args.output == "json":
        _stdout_show(out, json.dumps(completion, indent=2, ensure_ascii=False) + "\n")
    elif args.extract:   # only the code: the rest stays in the conversation
        reply = ((completion.get("choices") or [{}])[0].get("message") or {}).get("content")
        _stdout_show(out, _extracted(reply or "", args.extract,
                                     lambda text: _stderr_notice(err, text)))
    else:
        calls = tool_calls(((completion.get("choices") or [{}])[0]).get("message") or {})
        if calls:   # left for the caller to answer
            _stdout_show(out, json.dumps(calls, indent=2, ensure_ascii=False) + "\n")
    return 0


def _color_wanted(settings, environ, stream):
    """Color on stream: a terminal, and neither --no-color (color = false),
    NO_COLOR nor TERM=dumb."""
    return (settings.color and not environ.get("NO_COLOR")   # no-color.org
            and environ.get("TERM") != "dumb" and _is_terminal(stream))


def _status_wanted(settings, environ, stream):
    """The status line on stream: a terminal that can erase a line (not
    TERM=dumb), unless --quiet (status = false)."""
    return settings.status and environ.get("TERM") != "dumb" and _is_terminal(stream)


def _forgiving(name):
    """sys.stdin, sys.stdout or sys.stderr, made to turn what its encoding
    cannot take into U+FFFD instead of failing (a pipe of Latin-1, a reply
    for a terminal that cannot show it); None if the process was started
    with it closed.  stdout into a pipe or a file is UTF-8 whatever the
    locale, so it gets the reply exactly; and where the locale says ASCII
    (LANG=C), every stream is UTF-8, as Python 3.7 makes it (PEP 538)."""
    stream = getattr(sys, name)
    if stream is None:
        return None
    encoding = stream.encoding or "utf-8"
    if codecs.lookup(encoding).name == "ascii" or (
            name == "stdout" and not _is_terminal(stream)):
        encoding = "utf-8"
    if hasattr(stream, "reconfigure"):
        stream.reconfigure(encoding=encoding, errors="replace")
        return stream
    if not hasattr(stream, "buffer") or (   # Python 3.6: a terminal as it is, unless ASCII
            _is_terminal(stream) and encoding == stream.encoding):
        return stream
    stream = io.TextIOWrapper(stream.detach(), encoding=encoding, errors="replace",
                              line_buffering=stream.line_buffering)
    setattr(sys, name, stream)
    return stream


def _silence(stream):
    """Point a failed stdout at /dev/null, so nothing is tried again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError, AttributeError):
        pass
MANUAL = """\
chat.py - a console chat client for the OpenAI Chat Completions API.

One file, standard library only, Python 3.6+ or PyPy 3.  Works with
api.openai.com and any OpenAI-compatible server (Ollama, vLLM, llama.cpp,
LM Studio, OpenRouter, Groq, DeepSeek, Azure-style gateways).

Usage:
  chat.py [options]                 chat in the terminal
  chat.py [options] PROMPT...       one-shot: stream the reply to stdout, exit
  echo TEXT | chat.py [options]     one-shot with piped input (after PROMPT)
  chat.py -i [options] [PROMPT...]  keep chatting after the first reply; with
                                    stdin piped, each line is one turn
  chat.py [options] -- PROMPT...    every word after -- is the prompt, even
                                    one that looks like a flag (tar -c)

Only the assistant's text (or, with --output json, one JSON document) goes to
stdout.  Prompts, notices, the model's reasoning, the sources it cites and
errors go to stderr.

What the server sends is not trusted.  On a terminal, every control
character in it (escape sequences that set titles, write the clipboard,
move the cursor or clear the screen; backspaces; bidirectional overrides) is
shown as a visible escape such as ^[ and never acted on: in replies, errors,
tool calls, model ids, loaded history, everywhere.  stderr is always treated
so.  Into a pipe or a file, stdout is the reply exactly as it came, in
UTF-8 whatever the locale.

On a Python built without ssl, http:// works and https:// is one line
saying so; without readline, termios or fcntl (Windows, minimal builds) the
chat works, and what it does without them is said once.

Options:
  -m, --model NAME      model to use (env OPENAI_MODEL, default gpt-4o-mini)
  -s, --system TEXT     system message that starts the conversation
  -i, --interactive     keep chatting after the PROMPT / piped reply
  --base-url URL        API base URL (env OPENAI_BASE_URL, default
                        https://api.openai.com/v1); a trailing slash or
                        /chat/completions is fine, and a URL without a scheme
                        means http:// for local hosts, https:// otherwise
  --api-key KEY         API key (env OPENAI_API_KEY); not needed for a local
                        server (localhost, a private address, a bare hostname).
                        Other users can read it in the process list: prefer
                        OPENAI_API_KEY or --api-key-file
  --api-key-file FILE   read the API key from the first line of FILE
  --allow-insecure-key  send the key over plain http to another machine, server
                        or proxy (refused otherwise: anyone on the path could
                        read it).  A base URL with user:password@ is sent with
                        Basic authentication instead of the key, under the
                        same rule; this machine is never reached by a proxy
  --organization ID     OpenAI-Organization header (env OPENAI_ORG_ID)
  --project ID          OpenAI-Project header (env OPENAI_PROJECT_ID)
  -H, --header 'NAME: VALUE'
                        extra HTTP header; repeatable; overrides the defaults
  --no-stream           ask for the whole reply at once instead of streaming
  -o, --output FORMAT   text (default) or json: the complete chat.completion
                        object, streamed or not, as the only thing on stdout
                        (streaming, it asks for usage so the document has it)
  --timeout SECONDS     limit for connecting and for each wait for the next
                        byte, not for the whole reply (default 60)
  --retries N           retry 408, 409, 429, 500, 502, 503 and 504 answers and
                        refused or reset connections N times (default 2), with
                        backoff that honours Retry-After; never once text has
                        been shown
  --check               diagnose the connection: server, API path, key, model,
                        a one-token streamed request; exit 0 if all works
  (One connection to the server stays open for the whole run, http or https,
  direct or through a proxy's tunnel: each turn, tool round and retry after
  the first skips the connect and the TLS handshake.)
  -c, --continue        carry on the most recent conversation (one-shot or in
                        the chat), at the endpoint it was held at; its turns
                        go on in the same kept file
  --resume ID           carry on the kept conversation ID (see --list); any
                        part of an ID that names one conversation is enough,
                        here and for --show, --reply and --delete
  --list [TEXT]         list the kept conversations, newest first, in columns:
                        ID, date, where (profile or host), model, turns,
                        first line; TEXT keeps those with it in any message;
                        -n N lists N (default 100)
  --show [ID]           print a conversation (default: the latest) as
                        Markdown: a heading per message, tool calls and
                        results; with --output json, its request body
  -r, --reply [ID]      print only the last reply of a conversation (default:
                        the latest), exactly as received: for pipes
  --delete ID           remove a kept conversation
  -x, --extract         stdout gets only the reply's first fenced code
                        block, without its fences (the whole reply is kept);
                        a reply with none is printed whole, with a notice.
                        One-shot, and with -r (the last reply) and --show
                        (each reply's block)
  --xl, --extract-last  the same with the last fenced code block
  --no-log              keep nothing of this run (also: log = false)
  -p, --profile NAME    use the config file's [NAME] (env CHAT_PY_PROFILE)
  --config FILE         the config file (default: see "The config file")
  --models              print the server's model ids, one a line, sorted
  --save FILE           save the conversation after every turn, as a request
                        body (model, messages, parameters): curl -d @FILE
                        replays it; written atomically, mode 0600, no key
  --load FILE           resume a conversation saved with --save or /save, or
                        a JSON list of messages; --load F --save F with no F
                        yet starts one that is saved to F
  --max-context TOKENS  keep requests within TOKENS by dropping the oldest
                        exchanges (never the system message or the last user
                        message); counts with the server's own usage report
                        and about 4 characters a token for new text.  Without
                        it, the limit is learnt from the server's first
                        context-length error, which is then retried once
  --no-color            no color in notices, prompts and replies (also: NO_COLOR
                        set, or TERM=dumb)
  --no-markdown         do not highlight replies as markdown; on a terminal
                        with color they are, as they stream, with every
                        character left where it is
  -q, --quiet           no status line (also: status = false).  On a terminal,
                        any wait longer than half a second shows one dim line
                        on stderr saying what chat.py waits for and how long:
                        connecting to HOST, waiting for the model (with the
                        hidden reasoning tokens so far), sending an upload,
                        running a tool, a retry's countdown, and with
                        stdout piped, the reply's tokens and rate; it is
                        erased before anything else is written, and never
                        drawn over a reply's unfinished line or the prompt

Request fields (only what you set is sent; each is checked before sending):
  --temperature T       0 to 2                --top-p P          0 to 1
  -n N                  choices, 1 or more    --seed N           for repeatable replies
  --max-tokens N        reply length limit    --max-completion-tokens N  (newer
                        OpenAI models; a server that asks for it gets it)
  --stop TEXT           stop sequence; up to 4, repeat the flag
  --presence-penalty X, --frequency-penalty X   -2 to 2
  --logit-bias TOKEN_ID=BIAS   -100 to 100; repeatable
  --logprobs            show each token's probability after the reply
  --top-logprobs N      and the N (0 to 20) likeliest alternatives
  --user ID, --service-tier TIER
  --response-format json_object|text
  --json-schema FILE    structured output: the schema in FILE (or a
                        {name, schema, strict} object), sent as json_schema
  --param KEY=JSON      any other field, e.g. --param reasoning_effort='"low"'
                        (a value that is not JSON is sent as a string)
  --system-role developer   send -s as a developer message (reasoning models)
  --usage               ask for usage when streaming; after each reply show
                        prompt, completion and total tokens (with cached,
                        reasoning, audio and prediction tokens where the
                        server counts them), time to first token and tokens
                        per second
  --image PATH|URL      attach an image to the PROMPT (repeatable); local
                        files up to 20 MB go as data: URLs
  --audio FILE          attach recorded speech, WAV or MP3 (repeatable)
  --file FILE           attach a PDF (sent as a file part, up to 32 MB) or a
                        UTF-8 text file (put in the message, marked with its
                        name); repeatable
  --audio-out FILE      ask for a spoken reply too and write it to FILE: when
                        streaming, as WAV (24 kHz mono 16-bit; .pcm: raw);
                        with --no-stream, in the format of FILE's extension
                        (wav, mp3, flac, opus, aac, pcm).  The transcript is
                        the reply's text
  --voice NAME          the voice for --audio-out (default alloy)
  --reasoning-effort LEVEL  reasoning_effort, e.g. low, medium or high
  --hide-reasoning      do not show the model's reasoning (DeepSeek's
                        reasoning_content, OpenRouter's and Ollama's
                        reasoning), which is otherwise shown on stderr, dim,
                        as it arrives; --output json keeps it either way

Tools:
  --tools FILE          a JSON list of tool definitions the model may call
  --tool-choice auto|none|required|NAME
  --no-parallel-tool-calls
  --functions FILE, --function-call auto|none|NAME   the legacy form
  --tool-exec NAME=COMMAND   answer calls of tool NAME by running COMMAND (no
                        shell): the arguments JSON on its stdin, its stdout
                        the result; a failure is sent as an error result.
                        Repeatable.  Each run is asked for (y/N, showing
                        the call once: the tool, the command and the
                        arguments it gets, parsed once, each name on one
                        line; v shows arguments cut to fit the screen)
                        on the terminal, never on piped input, unless --yes;
                        what was typed before the question is discarded.
                        Ctrl-D there means no, Ctrl-C no and stop the turn.
                        Arguments that repeat a key are refused.  With no
                        terminal to ask on, the tool is not run and the
                        model is told.  A NAME no --tools file (or params,
                        or loaded conversation) defines is offered as a tool
                        with one free-text input, which COMMAND reads on
                        its stdin
  --tool-description NAME=TEXT   what such a tool does, as the model reads it
                        (default: the command line it runs)
  --mcp FILE|NAME=COMMAND   offer the tools of MCP (Model Context Protocol)
                        servers; repeatable (also: mcp = FILE in the config,
                        or a line mcp = NAME=COMMAND).  NAME=COMMAND is one
                        stdio server, NAME=URL one over streamable HTTP,
                        whatever files there are; anything else is a file of
                        the JSON editors keep: {"mcpServers": {NAME: {"command",
                        "args", "env"} or {"url", "headers"}}} (Claude
                        Desktop, Cursor, Claude Code) or VS Code's {"servers":
                        {NAME: {"type", ...}}}, with ${VAR}, ${VAR:-default}
                        and ${env:VAR} expanded, but chat.py's key variables
                        (OPENAI_API_KEY, api_key_env's) left empty, with a
                        notice, in a url or headers ("type": "sse": the
                        2024-11-05 HTTP+SSE transport).  A config's file
                        names and relative commands are taken from its
                        folder.  An entry with "disabled": true is skipped,
                        one chat.py cannot use is skipped with a notice.  A
                        stdio server starts with the environment less
                        chat.py's secrets (its key's variables, proxy
                        passwords), plus its env; a server's tokens are
                        blanked wherever chat.py writes.
                        Tools are offered as SERVER__TOOL; each call is asked
                        for as a --tool-exec command is (a allows that tool of
                        that server, by its name and command or URL, for the
                        session), bounded by --tool-timeout (progress
                        extends it, to 30 minutes at most; Ctrl-C cancels it
                        and ends the turn); a server that dies is restarted
                        when its tool is next called (3 times at most); a
                        server's stderr goes to $XDG_STATE_HOME/chat.py/
                        mcp-NAME.log (kept under 1 MiB, the rest in .log.1).
                        Servers are told the current folder as their root; a
                        form a server asks for is asked on the terminal field
                        by field (declined under --yes); a URL it asks you to
                        visit is shown, never opened; roots = in the config
                        names other folders (relative: to the config's)
  --mcp-startup-timeout SECONDS   how long a turn waits for MCP servers still
                        starting, from their start (default 10; a server's
                        own "startup_timeout" in the JSON wins); the late
                        ones join when ready, each named with its last words
  --no-mcp              start no MCP server this time
  --yes                 run --tool-exec commands and MCP tools without asking
  --tool-timeout SECONDS   how long a command may run (default 60)
  --max-tool-rounds N   rounds of calls and results before stopping (default 8)
  A tool with no command is answered in the chat by typing its result (or
  @FILE); in one-shot mode without --tool-exec the calls are printed to stdout
  as JSON (inside the document with --output json) and chat.py exits 0.

Help:
  -h, --help            a one-screen summary of the everyday options
  --manual              this manual
  --version             show the version and exit

Conversations kept:
  Every conversation, in the chat or one-shot, is kept after each turn as a
  replayable request body (as --save writes it) in
  $XDG_STATE_HOME/chat.py/conversations/ (default ~/.local/state/...): the
  folder is yours alone (0700), each file 0600, written atomically, never
  the key.  --list shows them, -c and --resume ID carry one on, --show and
  --reply print one, --delete removes one, --no-log (or log = false in the
  config) keeps nothing.  A file there that is not a conversation, or whose
  messages are not well formed, is skipped with a notice (and refused by
  --resume).  Each records where it was held (the base URL without its
  credentials, and the profile) in its metadata; -c and --resume go back
  there, and a --base-url or -p (or CHAT_PY_PROFILE) given with them moves
  it, with a notice.  A key goes only where it was given for: the
  environment's and [default]'s to the endpoint they name, a profile's to
  its base_url, --api-key's to this run's; going back elsewhere, the
  conversation goes on without it, and the notice (and a 401 there) says
  how to give it one (--api-key, or -p NAME).
  A turn is never lost: a new conversation's file is created exclusively;
  one that another chat.py changed meanwhile is not overwritten, the
  conversation goes on in a new file that says where it forked from; a
  turn that would make the file larger than chat.py reads back (64 MiB) is
  refused before it is sent, and a reply that would is kept in a new file
  that names the full one, from the last message on (one too large even
  for that is an error, exit 1); a failed save leaves
  no empty file, and a folder that cannot be written is one notice a run;
  --delete refuses an empty ID; Ctrl-C during a save lets it finish.  Fields a
  loaded conversation sends (n, store, service_tier...) are named once.

The config file:
  $XDG_CONFIG_HOME/chat.py/config.ini (default ~/.config/chat.py/config.ini,
  or --config FILE).  [default] always applies; [NAME] when chosen with
  -p NAME (or CHAT_PY_PROFILE).  Keys: base_url, model, api_key_env (the
  variable that holds the key), api_key_command (run without a shell; its
  first output line is the key, e.g. from a password manager), api_key,
  organization, project, headers (lines of 'Name: value'), system,
  system_role, params (a JSON object of request fields), timeout, retries,
  log, markdown, color, status, mcp, roots (the folders MCP servers are told
  to work in; otherwise the current folder).  Precedence: flags, then the
  chosen profile, then the OPENAI_* variables, then [default], then the
  built-in defaults.  An unknown profile or key, or a value that fails its
  check, is a usage error naming the file, the section and the key; a file
  holding a key (api_key, or a credential header) that others can read is
  refused until chmod 600.
    [default]
    model = gpt-4o-mini
    [local]
    base_url = localhost:11434/v1
    model = llama3.2
    [work]
    base_url = https://gateway.example.com/v1
    api_key_command = pass show work/openai

Environment:
  OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL, OPENAI_ORG_ID,
  OPENAI_PROJECT_ID are used when the matching flag is not given (a chosen
  profile comes before them).  CHAT_PY_PROFILE names a profile.
  XDG_STATE_HOME holds the console's input history and the kept
  conversations; XDG_CONFIG_HOME the config file.  VISUAL or EDITOR is the
  editor /edit runs.
  HTTPS_PROXY, HTTP_PROXY and NO_PROXY are honoured; TLS certificates are
  always verified (SSL_CERT_FILE names a private CA bundle).

In the chat:
  /help                 list the commands
  /exit, /quit          leave (so do Ctrl-D and Ctrl-C twice at an empty prompt)
  /reset                clear the conversation, keep the system message
  /system [TEXT]        show or set the system message
  /model [NAME]         show or set the model
  /history              show the conversation
  /undo                 drop the last exchange
  /retry                ask again for the last reply
  /continue             ask for more of a reply cut short by Ctrl-C, an error
                        or the token limit; it joins that reply
  /save [FILE]          save the conversation (default: the --save file)
  /load FILE            load a saved conversation
  /set KEY VALUE        set a request field; VALUE is JSON, or else text
  /unset KEY            stop sending a field
  /params               show the fields sent with each request
  /image PATH|URL       attach an image to the next message
  /audio FILE           attach recorded speech (WAV or MP3) to the next message
  /file FILE            attach a PDF or a text file to the next message
  /usage                show the tokens used in this session
  /models               list the server's models (Tab after /model completes them)
  /edit [TEXT]          write the next message in $VISUAL or $EDITOR; an empty
                        file or a failed editor sends nothing
  /copy [code]          put the last reply (or its last code block) on the
                        clipboard, through the terminal (OSC 52; works over SSH)
  /tools                list every tool the model may call, with its server
  /mcp                  the MCP servers: state, protocol, tools, last error
  /curl [TEXT]          show a curl command for the request that sending TEXT
                        would make (no TEXT: the last request, as /retry would
                        send it); the key shows as $OPENAI_API_KEY
  //TEXT                send TEXT starting with a single slash
  \"\"\"                   on a line of its own: start or end a block of lines,
                        sent as one message (for pasting)
  TEXT\\                 a backslash at the end of a line continues it
  (a paste)             several lines pasted at the prompt are one message
  Tab                   completes command names, file names after /save,
                        /load, /image, /audio and /file (~ works there too),
                        and model ids after /model
  Ctrl-C                abandon the line being typed, or stop the reply being
                        written (its text stays in the conversation)
  (typing ahead)        keys typed while a reply streams are not shown in it;
                        they start the next prompt (a question to run a tool
                        discards them)

Exit status:
  0 success, 1 API or network failure, 2 usage error (bad flag, missing key),
  130 interrupted.  A reader that stops reading (`chat.py ... | head`) is
  not a failure: the reply stops there, is kept cut short, and the exit is 0.

Examples:
  OPENAI_API_KEY=sk-... chat.py "Explain SSE in one sentence"
  chat.py --check --base-url localhost:11434/v1          # why won't it connect?
  git diff | chat.py -s "You review code." "Review this change:"
  chat.py --base-url localhost:11434/v1 -m llama3.2      # Ollama
  chat.py --base-url localhost:8080/v1                   # llama.cpp server

From Python:
  python3 -c 'import chat; help(chat)' shows the example and the map of one
  turn; every class and function says what it takes.

"""

HELP = """\
usage: chat.py [options] [PROMPT...]       chat.py --manual: every option

  chat.py                       chat in the terminal (/help lists commands)
  chat.py PROMPT...             one-shot: the reply goes to stdout, then exit
  echo TEXT | chat.py [PROMPT]  one-shot with piped input
  chat.py -i [PROMPT...]        keep chatting (piped stdin: a turn a line)

The server and the model:
  --base-url URL        the API (env OPENAI_BASE_URL, default api.openai.com),
                        e.g. localhost:11434/v1 for Ollama
  -m, --model NAME      the model (env OPENAI_MODEL, default gpt-4o-mini)
  --api-key-file FILE   read the key from FILE (else env OPENAI_API_KEY)
  -p, --profile NAME    an endpoint named in ~/.config/chat.py/config.ini
  --models, --check     list the models; diagnose the connection and key

The conversation (each is kept; --no-log keeps nothing):
  -c, --continue        carry on the last conversation, where it was held
  --list [TEXT], --resume ID   find a kept conversation, carry it on
  --show [ID], -r, --reply [ID], --delete ID   print one, or its last reply
  -s, --system TEXT     the system message
  --save FILE, --load FILE     keep a conversation in FILE, carry it on
  --image PATH|URL, --file FILE, --audio FILE   attach (each repeatable)

The reply:
  -o, --output json     the whole chat.completion as JSON on stdout
  -x, --xl              only the first (last) fenced code block of the reply
  --temperature T, --max-tokens N, --seed N, --stop TEXT, -n N, --no-stream
  --param KEY=JSON      any other request field
  --usage               show tokens used and speed after each reply
  --no-color, --no-markdown    plain text (so does NO_COLOR=1)

Tools:
  --tools FILE          tool definitions the model may call
  --tool-exec NAME=COMMAND   answer NAME's calls by running COMMAND (no shell)
  --mcp FILE            offer the tools of the MCP servers FILE names
  --yes                 run those commands and tools without asking

  -h, --help, --manual, --version
Exit status: 0 success, 1 API or network failure, 2 usage error, 130 Ctrl-C.
"""


class _Outputs:
    """stdout and stderr as main() writes to them: replaced by guarded ones
    once the settings tell the secrets to blank, color and the status line."""

    def __init__(self, raw, stderr):
        self.raw, self.out, self.stderr = raw, raw, stderr
        self.err = _ErrorStream(stderr)   # until the settings are known: no color, no key yet
        self.status = None

    def settle(self, settings, environ):
        """The streams the settings ask for, with the run's one Redactor (made
        from settings.secrets; self.err.redactor for every other sink: the
        client, the tools' results, so what is kept)."""
        redactor = Redactor(settings.secrets)   # (only stdout streams through its feed)
        color = _color_wanted(settings, environ, self.stderr)
        if _status_wanted(settings, environ, self.stderr):
            self.status = StatusLine(self.stderr, color=color, redactor=redactor)
        self.err = _ErrorStream(self.stderr, color=color, redactor=redactor, status=self.status)
        same_screen = self.status if _is_terminal(self.raw) else None
        if redactor or same_screen:   # (only then: a wrapper costs a call per write)
            self.out = _GuardedStdout(self.raw, redactor=redactor or None, status=same_screen)

    def end(self):
        _stdout_end(self.out)
        if self.status is not None:
            self.status.clear()
        _stdout_write(self.out, "")   # flushed here, or the failure would come at exit


def main(argv=None, stdin=None, stdout=None, stderr=None, environ=None):
    """Run chat.py; return the exit status.  Every argument defaults to the process's own."""
    if argv is None:   # bytes that are not UTF-8 become U+FFFD rather than fail later
        argv = [os.fsencode(arg).decode("utf-8", "replace") for arg in sys.argv[1:]]
    stdin = _forgiving("stdin") if stdin is None else stdin
    stderr = _forgiving("stderr") if stderr is None else stderr
    environ = os.environ if environ is None else environ
    if stderr is None:   # started with 2>&-
        stderr = open(os.devnull, "w")
    outputs = _Outputs(_forgiving("stdout") if stdout is None else stdout, stderr)
    if outputs.raw is None:   # started with >&-
        _stderr_notice(outputs.err, "error: stdout is closed: there is nowhere to put the answer")
        return 2
    try:
        return _main(argv, stdin, environ, outputs)
    except StdoutClosed:   # the reader stopped reading (`| head`): its choice
        if outputs.status is not None:
            outputs.status.clear()   # (nothing more is written to erase it)
        return 0
    except ChatError as exc:
        _stderr_notice(outputs.err, "error: %s" % explained(exc))
        if isinstance(exc, StdoutError):
            _silence(outputs.raw)
        return exc.exit_code
    except KeyboardInterrupt:
        _write_sanitized(outputs.err, "\n[interrupted]\n")
        return 130
    except BrokenPipeError:   # stderr's reader went away too (`2>&1 | head`)
        _silence(outputs.stderr)
        _silence(outputs.raw)
        return 0
    except (RecursionError, MemoryError):   # the last net: bounds should catch these first
        _stderr_notice(outputs.err, "error: the answer is too large or too deeply nested to handle")
        return 1


def _main(argv, stdin, environ, outputs):
    args = _arguments(argv)
    if args.help or args.manual:
        _stdout_write(outputs.out, HELP if args.help else MANUAL)
        return 0
    if args.version:
        _stdout_write(outputs.out, "chat.py %s\n" % __version__)
        return 0
    if _reads_the_log(args):   # needs no server, no key, no config
        return _conversations(args, _conversation_log(environ), outputs.out,
                              lambda text: _stderr_notice(outputs.err, text))
    args.carried, args.carried_body, args.seen, args.origin = None, None, None, {}
    if args.resume or args.resume_last:
        _go_back(args, environ, outputs.err)
    settings = _settings(args, environ)
    outputs.settle(settings, environ)
    moving = args.carried and _moving(args, settings, environ)
    if moving:
        _stderr_notice(outputs.err, moving)
    code = _run(args, settings, stdin, outputs.out, outputs.err, environ)
    outputs.end()
    return code


if __name__ == "__main__":
    sys.exit(main())
