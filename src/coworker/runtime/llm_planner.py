"""The LLM planner: asks any OpenAI-compatible ``/chat/completions`` endpoint for a collaboration's plan.

The prompt and the reading of the answer are pure (:func:`coworker.core.plans.planner_messages` and
:func:`coworker.core.plans.plan_from_answer`); this module only does the HTTP request. The API key is read from a
file, never from an environment variable, and appears in no log, message or ``repr``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from coworker._errors import ConfigurationError
from coworker.core.planning import OtherCards, plan_from_answer, planner_messages

log = logging.getLogger("coworker.planner")

BASE_URL_VARIABLE = "COWORKER_LLM_BASE_URL"
MODEL_VARIABLE = "COWORKER_LLM_MODEL"
KEY_FILE_VARIABLE = "COWORKER_LLM_API_KEY_FILE"
MAX_ANSWER_BYTES = 1_000_000


class LLMPlanner:
    """Plans a collaboration with a language model behind an OpenAI-compatible API (OpenAI, vLLM, Ollama,
    llama.cpp's server, LiteLLM, ...). The plan it answers is checked like one given by hand.

    Args:
        base_url: the API's base URL, to which ``/chat/completions`` is appended (e.g.
            ``http://127.0.0.1:11434/v1``); default ``$COWORKER_LLM_BASE_URL``.
        model: the model's name; default ``$COWORKER_LLM_MODEL``.
        api_key_file: a file holding the API key (sent as a bearer token); default
            ``$COWORKER_LLM_API_KEY_FILE``; None: no key (local servers need none).
        timeout: seconds the endpoint has to answer.
        transport: an ``httpx`` transport (tests pass ``httpx.MockTransport``).

    Raises:
        ConfigurationError: no base URL or model, or the key file cannot be read.

    Example::

        # COWORKER_LLM_BASE_URL=http://127.0.0.1:8080/v1 COWORKER_LLM_MODEL=qwen2.5-7b-instruct
        result = await agent.collaborate(wallet, "Research AI agents and write a report", planner=LLMPlanner())
    """

    def __init__(self, base_url: str | None = None, model: str | None = None,
                 api_key_file: str | Path | None = None, *, timeout: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        base_url = base_url or os.environ.get(BASE_URL_VARIABLE) or ""
        model = model or os.environ.get(MODEL_VARIABLE) or ""
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"the LLM planner needs the base URL of an OpenAI-compatible API (http:// or "
                                     f"https://): pass base_url= or set {BASE_URL_VARIABLE} (got {base_url!r})")
        if not model:
            raise ConfigurationError(f"the LLM planner needs a model name: pass model= or set {MODEL_VARIABLE}")
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self._transport = transport
        key_file = api_key_file if api_key_file is not None else os.environ.get(KEY_FILE_VARIABLE) or None
        self._key = self._read_key(Path(key_file).expanduser()) if key_file else None

    @staticmethod
    def _read_key(path: Path) -> str:
        try:
            key = path.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the LLM API key file {path}: {exc.strerror or exc}") from None
        if not key:
            raise ConfigurationError(f"the LLM API key file {path} is empty")
        if path.stat().st_mode & 0o077:
            log.warning("the LLM API key file %s can be read by other users (chmod 600 it)", path)
        return key

    def __repr__(self) -> str:  # never the key
        return f"LLMPlanner(url={self.url!r}, model={self.model!r})"

    async def plan(self, goal: str, own: Sequence[Mapping[str, Any]], peer: OtherCards) -> Any:
        """Ask the model for plan data for ``goal`` given both agents' skill cards (or, with several members,
        each member's by wallet).

        Raises:
            ConfigurationError: the endpoint cannot be reached, refuses the request, or answers no JSON plan;
                the message names the URL.
        """
        content = await self.chat(planner_messages(goal, own, peer))
        try:
            data = plan_from_answer(content)
        except ConfigurationError as exc:
            raise ConfigurationError(f"the LLM at {self.url} answered no usable plan: {exc}") from None
        log.info("the LLM at %s (%s) planned %s", self.url, self.model, goal[:80])
        return data

    async def chat(self, messages: Sequence[Mapping[str, str]], *, temperature: float = 0) -> str:
        """Send a chat to the endpoint and return the model's answer (the planner's and instruction skills' call).

        Raises:
            ConfigurationError: the endpoint cannot be reached, refuses the request, or answers no text; the
                message names the URL.
        """
        body = {"model": self.model, "messages": list(messages), "temperature": temperature}
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        try:
            async with httpx.AsyncClient(timeout=self.timeout, transport=self._transport) as client:
                response = await client.post(self.url, json=body, headers=headers)
        except httpx.TimeoutException:
            raise ConfigurationError(f"the LLM at {self.url} did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise ConfigurationError(f"cannot reach the LLM at {self.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise ConfigurationError(f"the LLM at {self.url} answered HTTP {response.status_code}: "
                                     f"{response.text[:300]!r}")
        if len(response.content) > MAX_ANSWER_BYTES:
            raise ConfigurationError(f"the LLM at {self.url} answered {len(response.content)} bytes, over the "
                                     f"limit of {MAX_ANSWER_BYTES}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ConfigurationError(f"the LLM at {self.url} did not answer like an OpenAI-compatible chat "
                                     f"completion: {response.text[:300]!r}") from None
        if not isinstance(content, str):
            raise ConfigurationError(f"the LLM at {self.url} answered no text: {content!r}"[:400])
        return content
