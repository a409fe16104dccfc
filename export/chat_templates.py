"""Chat templates of model families, for GGUF files that carry none.

A GGUF's `tokenizer.chat_template` is optional, and some files (Gemma 3 270M's Q4_K_M) have none;
llama.cpp then falls back to the template it knows for the architecture. These are those families'
own templates (from their tokenizer_config.json), text only.
"""

from __future__ import annotations

# Gemma 2 and 3 (google/gemma-3-270m-it): a system message is prepended to the first user turn;
# the assistant's role is called "model"; every turn ends with <end_of_turn>
GEMMA = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

_BY_GGUF_ARCHITECTURE = {"gemma2": GEMMA, "gemma3": GEMMA}


def family_chat_template(gguf_architecture: str) -> str | None:
    """The known chat template of a GGUF architecture's family, or None."""
    return _BY_GGUF_ARCHITECTURE.get(gguf_architecture)
