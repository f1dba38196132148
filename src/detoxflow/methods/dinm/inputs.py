"""Turn a SafeEdit record into the token ids DINM works on.

Prompt and response are tokenised together (the response may merge with the
prompt's last characters, and a tokenizer's special tokens appear once), and
the prompt's tokens are masked out of the labels by the longest common prefix
with the prompt tokenised alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...data.safeedit import format_prompt
from ...errors import DetoxflowError

IGNORE = -100


@dataclass
class EditInputs:
    """The texts of one instance, already formatted for the model."""

    id: Any
    prompt: str              # adversarial prompt (+ suffix, chat template)
    safe: str                # the response the edit teaches
    unsafe: str              # the response it moves away from (used to locate)
    knowledge_prompt: str    # general instruction (same formatting)
    knowledge_answer: str    # its answer: the KL constraint's tokens
    special_tokens: bool     # add the tokenizer's special tokens (False when a chat template supplies them)


@dataclass
class Encoded:
    input_ids: torch.Tensor   # (1, L)
    labels: torch.Tensor      # (1, L), IGNORE on prompt tokens
    n_prompt: int

    @property
    def response_mask(self) -> torch.Tensor:
        """(L,) bool: positions holding response tokens."""
        return self.labels[0] != IGNORE

    def to(self, device) -> "Encoded":
        return Encoded(self.input_ids.to(device), self.labels.to(device), self.n_prompt)


def instance_inputs(record: dict, tokenizer, *, suffix: str, chat_template: bool) -> EditInputs:
    know = record["knowledge constrain"]
    return EditInputs(
        id=record.get("id"),
        prompt=format_prompt(record["adversarial prompt"], tokenizer, suffix=suffix, chat_template=chat_template),
        safe=record["safe generation"],
        unsafe=record["unsafe generation"],
        knowledge_prompt=format_prompt(know["prompt"], tokenizer, suffix=suffix, chat_template=chat_template),
        knowledge_answer=know["answer"],
        special_tokens=not chat_template,
    )


def join(prompt: str, response: str) -> str:
    """Prompt and response as one text: a space between them unless the prompt ends in whitespace."""
    if not prompt or prompt[-1].isspace():
        return prompt + response
    return prompt + " " + response.lstrip()


def encode_pair(tokenizer, prompt: str, response: str, *, special_tokens: bool = True,
                max_length: int | None = None) -> Encoded:
    """Token ids of ``prompt`` + ``response`` with labels only on the response's tokens."""
    prompt_ids = tokenizer(prompt, add_special_tokens=special_tokens)["input_ids"]
    ids = tokenizer(join(prompt, response), add_special_tokens=special_tokens)["input_ids"]
    n = 0
    while n < min(len(prompt_ids), len(ids)) and prompt_ids[n] == ids[n]:
        n += 1
    if max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]
    if n >= len(ids):
        raise DetoxflowError(
            f"the response adds no token after the prompt ({len(prompt_ids)} prompt tokens"
            + (f", max_length {max_length}" if max_length else "") + "): empty response or prompt too long"
        )
    input_ids = torch.tensor([ids], dtype=torch.long)
    labels = input_ids.clone()
    labels[0, :n] = IGNORE
    return Encoded(input_ids, labels, n)
