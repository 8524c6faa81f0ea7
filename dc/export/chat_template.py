"""A Jinja chat template that renders a dc `ChatTemplate` for Hugging Face processors and tokenizers.

The rendered string, tokenized by the exported tokenizer (`processor(text=..., images=...)` or
`processor.apply_chat_template(..., tokenize=True)`), must give the ids of dc's `template.prompt` / `encode` with
each `<image>` expanded to the visual tokens. Four things make that hold:

* **Text.** The Jinja writes exactly the segments of dc's template (system prompt, role headers, separators, end
  tokens) and normalises `<image>` like dc: moved to the front of its turn, followed by `\\n`. Message content may
  be a string (lmms-eval) or a list of `{"type": "image"}` / `{"type": "text", "text": ...}` parts.
* **BOS.** Processors tokenize with the tokenizer's own special tokens, so a tokenizer that prepends BOS itself
  (Llama-2/Vicuna, Llama-3) gets a template *without* a leading BOS, and one that does not (the tiny byte-level
  tokenizer) gets the BOS written literally. A dc prompt without BOS on a tokenizer that adds one is refused.
* **After the image.** dc (like LLaVA) tokenizes the text after an image as a fresh string; a processor tokenizes
  it as a continuation after the `<image>` token. SentencePiece tokenizers with prefix scheme "first" give the
  fresh string a "▁" the continuation lacks; writing `"<image> \n"` restores exactly that (`image_separator`).
* **Checked, not assumed.** `to_hf_llava` tokenizes probe conversations both ways and refuses to export on any
  difference (`dc.export.verify`).

Literal text is emitted as Jinja string expressions (never raw template text), because Hugging Face renders with
`trim_blocks`/`lstrip_blocks`, which would eat the newlines of headers such as Llama-3's `\\n\\n`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from transformers import PreTrainedTokenizerBase

from dc.constants import IMAGE_PLACEHOLDER
from dc.export.errors import ExportError
from dc.models.llms.templates import ChatTemplate
from dc.models.llms.templates.chatml import ChatML
from dc.models.llms.templates.llama3 import Llama3
from dc.models.llms.templates.plain import Plain
from dc.models.llms.templates.tokenization import tokenizer_adds_bos
from dc.models.llms.templates.vicuna import VicunaV1
from dc.utils.errors import ConfigError
from dc.utils.instantiate import instantiate

TEMPLATE_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "llm" / "template"

_ROLES = (
    "{%- if message['role'] not in ['user', 'assistant'] -%}"
    "{{ raise_exception('dc chat template: only user/assistant messages (the system prompt is fixed), got ' "
    "~ message['role']) }}{%- endif -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('dc chat template: messages must alternate user/assistant, starting with user') }}"
    "{%- endif -%}"
)
_NEXT = "(not loop.last or add_generation_prompt)"
_PROBE = "\nWhat is in the image?"


def template_names(folder: Path = TEMPLATE_CONFIGS) -> list[str]:
    """Dc's chat template options: the names of `configs/llm/template/*.yaml`."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def check_template_name(name: str, key: str = "template", folder: Path = TEMPLATE_CONFIGS) -> None:
    """Refuse a template name that is not one of `template_names()`, naming `key` (a command's option)."""
    names = template_names(folder)
    if not isinstance(name, str) or name not in names:
        raise ConfigError(f"{key}={name!r}: expected one of {names} (configs/llm/template/*.yaml)")


def load_template(name: str, key: str = "template") -> ChatTemplate:
    """The chat template `configs/llm/template/<name>.yaml` builds.

    Raises:
        ConfigError: not one of `template_names()` (the message names `key` and lists them).
    """
    check_template_name(name, key)
    return instantiate(OmegaConf.load(TEMPLATE_CONFIGS / f"{name}.yaml"))


def lit(text: str) -> str:
    """`text` as a Jinja expression that outputs it verbatim."""
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return '{{ "' + escaped + '" }}'


def _content(image_sep: str) -> str:
    """Jinja setting `text`: the content as one string (images as "<image>"), normalised as dc does, with
    `image_sep` between `<image>` and the newline after it (see `image_separator`).
    """
    sep = image_sep.replace("'", "\\'")
    return (
        "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
        "{%- else -%}{%- set ns = namespace(text='') -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{%- set ns.text = ns.text ~ '<image>' -%}"
        "{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text ~ part['text'] -%}{%- endif -%}"
        "{%- endfor -%}{%- set text = ns.text -%}{%- endif -%}"
        "{%- if '<image>' in text -%}"
        "{%- set text = ('<image>\\n' ~ (text | replace('<image>', '') | trim)) | trim -%}"
        + ("{%- set text = text | replace('<image>\\n', '<image>" + sep + "\\n') -%}" if sep else "")
        + "{%- endif -%}"
    )


def _conversation(prefix: str, user: str, header: str, assistant: str, image_sep: str) -> str:
    """Prefix, then per message the user part (+ the assistant header when a reply follows) or the reply."""
    return (
        prefix
        + "{%- for message in messages -%}"
        + _ROLES
        + _content(image_sep)
        + "{%- if message['role'] == 'user' -%}"
        + user
        + "{%- if "
        + _NEXT
        + " -%}"
        + header
        + "{%- endif -%}"
        + "{%- else -%}"
        + assistant
        + "{%- endif -%}"
        + "{%- endfor -%}"
    )


def image_separator(tokenizer: PreTrainedTokenizerBase) -> str:
    """Text to write between `<image>` and the newline after it so the whole-string tokenization matches dc's.

    dc (like LLaVA) tokenizes the text after an image as a fresh string, so SentencePiece-style tokenizers put
    their prefix "▁" there. A processor tokenizes the whole prompt, and the text after the added `<image>` token
    gets a prefix only if the tokenizer prefixes every split (legacy Llama-2); with prefix scheme "first" it
    gets none, and a literal space restores exactly that "▁". Byte-level tokenizers need nothing.

    `tokenizer` must already hold `<image>` as an added token.

    Raises:
        ExportError: neither choice reproduces the fresh-string tokenization.
    """
    fresh = list(tokenizer.encode(_PROBE, add_special_tokens=False))
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    for sep in ("", " "):
        ids = list(tokenizer.encode(IMAGE_PLACEHOLDER + sep + _PROBE, add_special_tokens=False))
        if ids[:1] == [image_id] and ids[1:] == fresh:
            return sep
    raise ExportError(
        f"{type(tokenizer).__name__}: the text after <image> tokenizes differently inside a prompt than as a fresh "
        f"string (dc's and LLaVA's convention), with or without a separating space; no chat template reproduces it"
    )


def bos_is_literal(template: ChatTemplate, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the Jinja must write BOS itself (dc's prompt starts with it and the tokenizer would not add it).

    Raises:
        ExportError: dc's prompt has no BOS but the tokenizer prepends one (a processor would add it).
    """
    ids = template.prompt("<image>\nx", tokenizer)
    bos = tokenizer.bos_token_id
    leads = bos is not None and len(ids) > 0 and ids[0] == bos
    adds = tokenizer_adds_bos(tokenizer)
    if adds and not leads:
        raise ExportError(
            f"template {template.name!r} builds prompts without BOS but the tokenizer prepends "
            f"{tokenizer.bos_token!r} itself, so Hugging Face processors would feed a BOS the model never saw"
        )
    return leads and not adds


def chat_template_jinja(template: ChatTemplate, tokenizer: PreTrainedTokenizerBase) -> str:
    """The Jinja chat template of dc's `template` for `tokenizer` (the exported tokenizer, `<image>` added).

    Raises:
        ExportError: a template this module has no rendering for, or a tokenizer behaviour processors cannot
            reproduce (see `bos_is_literal`, `image_separator`).
    """
    bos = lit(tokenizer.bos_token) if bos_is_literal(template, tokenizer) else ""
    sep = image_separator(tokenizer)
    if isinstance(template, Llama3):  # also Llama3DC (assistant turns under the "system" header)
        head = Llama3.header
        # dc writes <|begin_of_text|> literally; it is the tokenizer's BOS, kept only if the tokenizer does not add it.
        prefix = (lit("<|begin_of_text|>") if bos else "") + lit(head("system") + template.system + "<|eot_id|>")
        user = lit(head("user")) + "{{ text }}" + lit("<|eot_id|>")
        reply = "{{ text }}" + lit("<|eot_id|>")
        return _conversation(prefix, user, lit(head(template.assistant_role)), reply, sep)
    if isinstance(template, VicunaV1):  # also Phi2 (its own end token)
        user = "{%- if loop.first -%}" + lit(" ") + "{%- endif -%}" + lit("USER: ") + "{{ text }}"
        reply = lit(" ") + "{{ text }}" + lit(template.end_token(tokenizer))
        return _conversation(bos + lit(template.system), user, lit(" ASSISTANT:"), reply, sep)
    if isinstance(template, ChatML):
        prefix = bos + lit(f"<|im_start|>system\n{template.system}<|im_end|>\n")
        user = lit("<|im_start|>user\n") + "{{ text }}" + lit("<|im_end|>\n")
        return _conversation(prefix, user, lit("<|im_start|>assistant\n"), "{{ text }}" + lit("<|im_end|>\n"), sep)
    if isinstance(template, Plain):
        # Stage-1 captioning: only the first exchange counts (the image, then the caption); the prompt text is
        # dropped. The caption follows the image directly: the same separator gives it dc's fresh-string prefix.
        user = "{%- if loop.first and '<image>' in text -%}" + lit("<image>") + "{%- endif -%}"
        caption = "{%- if loop.index0 == 1 -%}" + lit(sep) + "{{ text }}" + lit("\n") + "{%- endif -%}"
        return _conversation(bos, user, "", caption, sep)
    raise ExportError(f"template {template.name!r} has no Jinja rendering in dc.export.chat_template")
