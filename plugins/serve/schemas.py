"""The server's request bodies: OpenAI-compatible completions, classify and tokenize."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    # OpenAI clients send fields this server does not use (user, logit_bias...): ignored.
    model_config = ConfigDict(extra="ignore")


class CompletionRequest(_Body):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int | None = Field(None, ge=0, description="default: the bundle's max_new_tokens")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    seed: int | None = Field(None, ge=0)
    n: int = Field(1, description="completions per prompt: only 1")
    stop: str | list[str] | None = None
    stream: bool = False


class ClassifyRequest(_Body):
    model: str | None = None
    input: str | list[str]


class TokenizeRequest(_Body):
    model: str | None = None
    input: str
