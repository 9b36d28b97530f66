"""An OpenAI-compatible chat-completions client for the consistency judge (off unless configured).

The consistency reward asks a judge model whether a response's final answer follows from its
own reasoning (the authors' "consistency ×1 (LLM judge)"). Any server speaking the OpenAI
``POST {base_url}/chat/completions`` protocol works (vLLM, SGLang, a hosted API). Requests
are bounded: a per-request timeout, at most ``max_retries`` retries with exponential
back-off on connection errors, timeouts, HTTP 429 and 5xx (other HTTP errors are not
retried), and a cache of replies keyed by (model, prompt) — in memory, and in an SQLite
file shared by the reward worker processes when ``cache_path`` is set. Standard library
only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from mapo_verl.data.mcqa import LETTERS

__all__ = ["JudgeError", "JudgeSettings", "JudgeClient", "get_judge_client", "consistency_prompt", "judge_consistency"]

_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


class JudgeError(RuntimeError):
    """The judge gave no usable verdict (unreachable after retries, an HTTP error, an unreadable reply)."""


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is and how long to wait for it.

    Args:
        base_url: the API root, e.g. ``http://judge-host:8000/v1``.
        model: the served model name.
        api_key_env: environment variable holding the API key (no ``Authorization`` header when unset).
        timeout_s: per-request timeout in seconds (> 0).
        max_retries: retries after the first attempt (>= 0).
        backoff_s: first back-off in seconds, doubled after each retry (>= 0).
        cache_path: SQLite file caching replies across processes and runs (None: memory only).
        max_tokens: completion length limit of the verdict.
        max_reasoning_chars: the reasoning sent to the judge is cut to its last this-many characters.
    """

    base_url: str
    model: str
    api_key_env: str = "MAPO_JUDGE_API_KEY"
    timeout_s: float = 20.0
    max_retries: int = 2
    backoff_s: float = 0.5
    cache_path: str | None = None
    max_tokens: int = 16
    max_reasoning_chars: int = 6000

    def __post_init__(self):
        checks = {
            "judge_base_url": (isinstance(self.base_url, str) and self.base_url.startswith(("http://", "https://")),
                               "an http(s) URL"),
            "judge_model": (isinstance(self.model, str) and bool(self.model), "a non-empty model name"),
            "judge_timeout_s": (self.timeout_s > 0, "> 0"),
            "judge_max_retries": (isinstance(self.max_retries, int) and self.max_retries >= 0, "an integer >= 0"),
            "judge_backoff_s": (self.backoff_s >= 0, ">= 0"),
            "judge_max_tokens": (isinstance(self.max_tokens, int) and self.max_tokens > 0, "an integer > 0"),
            "judge_max_reasoning_chars": (self.max_reasoning_chars > 0, "> 0"),
        }
        for key, (ok, allowed) in checks.items():
            if not ok:
                raise ValueError(f"reward.custom_reward_function.reward_kwargs.{key} must be {allowed}, "
                                 f"got {getattr(self, key.removeprefix('judge_'))!r}")


class JudgeClient:
    """Chat completions with timeouts, bounded retries and a reply cache; thread-safe."""

    def __init__(self, settings: JudgeSettings):
        self.settings = settings
        self.attempts = 0  # HTTP requests sent, retries included
        self._memory: dict[str, str] = {}
        self._lock = threading.Lock()
        self._db = None
        if settings.cache_path:
            self._db = sqlite3.connect(settings.cache_path, timeout=30.0, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS judge_cache (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
            self._db.commit()

    def _cache_key(self, prompt: str) -> str:
        return hashlib.sha256(json.dumps([self.settings.model, prompt]).encode()).hexdigest()

    def _cached(self, key: str) -> str | None:
        with self._lock:
            if key in self._memory:
                return self._memory[key]
            if self._db is not None:
                row = self._db.execute("SELECT reply FROM judge_cache WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    self._memory[key] = row[0]
                    return row[0]
        return None

    def _store(self, key: str, reply: str) -> None:
        with self._lock:
            self._memory[key] = reply
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO judge_cache (key, reply) VALUES (?, ?)", (key, reply))
                self._db.commit()

    def _request(self, prompt: str) -> str:
        body = json.dumps({
            "model": self.settings.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": self.settings.max_tokens,
        }).encode()
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.settings.api_key_env)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(self.settings.base_url.rstrip("/") + "/chat/completions", data=body,
                                         headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
            payload = json.loads(response.read().decode("utf-8"))
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as error:
            raise JudgeError(f"judge reply has no choices[0].message.content: {str(payload)[:200]}") from error

    def ask(self, prompt: str) -> str:
        """The judge's reply to ``prompt`` (cached); :class:`JudgeError` after the retries are spent."""
        key = self._cache_key(prompt)
        cached = self._cached(key)
        if cached is not None:
            return cached
        last_error: Exception | None = None
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                time.sleep(self.settings.backoff_s * 2 ** (attempt - 1))
            with self._lock:
                self.attempts += 1
            try:
                reply = self._request(prompt)
            except urllib.error.HTTPError as error:
                if error.code not in _RETRYABLE_STATUS:
                    raise JudgeError(f"judge at {self.settings.base_url} answered HTTP {error.code}") from error
                last_error = error
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as error:
                last_error = error
            else:
                self._store(key, reply)
                return reply
        raise JudgeError(f"judge at {self.settings.base_url} gave no reply after "
                         f"{self.settings.max_retries + 1} attempt(s): {last_error}") from last_error


@functools.lru_cache(maxsize=8)
def get_judge_client(settings: JudgeSettings) -> JudgeClient:
    """One client per settings and process (reward functions are called once per response)."""
    return JudgeClient(settings)


def consistency_prompt(question: str, choices: Sequence[str], reasoning: str, answer: str,
                       max_reasoning_chars: int) -> str:
    options = "\n".join(f"({LETTERS[i]}) {choice}" for i, choice in enumerate(choices))
    reasoning = reasoning.strip()
    if len(reasoning) > max_reasoning_chars:
        reasoning = "..." + reasoning[-max_reasoning_chars:]
    return (
        "You check whether a model's final answer to a multiple-choice question about an audio clip follows "
        "from the model's own reasoning. Do not judge whether the answer is correct.\n"
        f"Question: {question}\nOptions:\n{options}\n"
        f"Reasoning:\n{reasoning}\n"
        f"Final answer: {answer}\n"
        "Does the reasoning lead to this final answer rather than to another option? "
        "Reply with one word: yes or no."
    )


def judge_consistency(client: JudgeClient, question: str, choices: Sequence[str], reasoning: str,
                      answer: str) -> float:
    """1.0 when the judge says the reasoning supports the answer, 0.0 when it says not.

    Raises :class:`JudgeError` when there is no usable verdict.
    """
    reply = client.ask(consistency_prompt(question, choices, reasoning, answer, client.settings.max_reasoning_chars))
    verdict = re.match(r"\W*(yes|no)\b", reply, re.IGNORECASE)
    if verdict is None:
        raise JudgeError(f"judge reply is neither yes nor no: {reply[:100]!r}")
    return 1.0 if verdict.group(1).lower() == "yes" else 0.0
