"""Chat templates against the real tokenizer classes, built offline from BPE models trained here on a tiny corpus.

For every template: the supervised label spans decode to exactly the assistant replies plus their end token and
nothing else is supervised; the rendered prompt text is the documented literal; `prompt()` is the prefix of
`encode()`; `IMAGE_TOKEN_INDEX` sits where `<image>` was; BOS appears once; and piece-by-piece tokenisation gives
the same ids as tokenising the whole text (both SentencePiece prefix schemes included).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CodeGenTokenizerFast, LlamaTokenizerFast, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from dc.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dc.models.llms.templates import ChatTemplate, normalize_image_placeholder
from dc.models.llms.templates.chatml import CHATML_SYSTEM
from dc.models.llms.templates.llama3 import LLAMA_3_SYSTEM
from dc.models.llms.templates.vicuna import VICUNA_SYSTEM

from dc_testing import config_options, make_template
from dc_testing import tiny_tokenizer as build_tiny_tokenizer

TEMPLATES = config_options("llm/template")  # the registry is the config folder
get_template = make_template

QUESTION = "What is in the picture?"
REPLIES = ["A brown dog is sleeping on a red mat.", "The mat is red.", "No, it is asleep."]
# `<image>` at the end of the first turn: the template must move it to the front, as LLaVA does.
CONVERSATION = [
    {"from": "human", "value": f"{QUESTION} <image>"},
    {"from": "gpt", "value": REPLIES[0]},
    {"from": "human", "value": "What colour is the mat?"},
    {"from": "gpt", "value": REPLIES[1]},
    {"from": "human", "value": "Is the dog awake?"},
    {"from": "gpt", "value": REPLIES[2]},
]
ONE_TURN = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": REPLIES[0]}]
TEXT_ONLY = [{"from": "human", "value": QUESTION}] + CONVERSATION[1:]

# Every character the tests encode appears here, so SentencePiece-style models never fall back to <unk>.
# No "\n" followed by a letter: merges across a template boundary would make whole-text ids differ by design.
CORPUS = [
    VICUNA_SYSTEM,
    LLAMA_3_SYSTEM,
    CHATML_SYSTEM,
    "USER: ASSISTANT: system user assistant",
    QUESTION,
    *REPLIES,
    *(turn["value"] for turn in CONVERSATION[2::2]),
    "\n",
]
LLAMA_3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|reserved_special_token_0|>",
]
# The GPT-4 / Llama-3 pre-tokenizer split pattern.
LLAMA_3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)


# ---------------------------------------------------------------------------------------------------------------
# Offline tokenizers


def _vocab_and_merges(tok: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


@functools.cache
def _sentencepiece_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A SentencePiece-like BPE: "▁" marks word starts and merges never cross words (split=True in training)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return _vocab_and_merges(tok)


def _byte_level_bpe(pre_tokenizer: pre_tokenizers.PreTokenizer, specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@functools.cache
def llama2_tokenizer(legacy: bool = False) -> PreTrainedTokenizerBase:
    """Vicuna / Llama-2 style: Metaspace + byte fallback, BOS added by the tokenizer.

    `legacy=False` gives prepend_scheme "first" (no "▁" after special tokens), `legacy=True` gives "always".
    """
    vocab, merges = _sentencepiece_bpe()
    return LlamaTokenizerFast(vocab=vocab, merges=merges, add_bos_token=True, legacy=legacy)


@functools.cache
def chatml_tokenizer(add_bos: bool = False, legacy: bool = False) -> PreTrainedTokenizerBase:
    """Yi / Nous-Hermes-2 style: a Llama tokenizer with ChatML tokens; Yi does not add its BOS."""
    vocab, merges = _sentencepiece_bpe()
    tok = LlamaTokenizerFast(
        vocab=vocab,
        merges=merges,
        bos_token="<s>",
        eos_token="<|im_end|>",
        add_bos_token=add_bos,
        legacy=legacy,
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


@functools.cache
def llama3_tokenizer() -> PreTrainedTokenizerBase:
    """Llama-3 style: regex split + byte-level BPE; like the real one it prepends `<|begin_of_text|>` itself."""
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA_3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok = _byte_level_bpe(pre, LLAMA_3_SPECIALS)
    bos_id = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos_id)],
    )
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|reserved_special_token_0|>",
    )


@functools.cache
def phi2_tokenizer() -> PreTrainedTokenizerBase:
    """Phi-2 style: GPT-2 byte-level BPE with `<|endoftext|>` as BOS = EOS = UNK, no BOS added."""
    tok = _byte_level_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"])
    vocab, merges = _vocab_and_merges(tok)
    return CodeGenTokenizerFast(vocab=vocab, merges=merges)


@functools.cache
def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """The project's built-in byte-level tokenizer (the tiny default LLM's)."""
    return build_tiny_tokenizer()


def chat_literal(name: str, user: str, reply: str) -> str:
    """The one-turn text of each template, written out by hand (BOS excluded)."""
    if name in ("vicuna_v1", "phi2"):
        end = "</s>" if name == "vicuna_v1" else "<|endoftext|>"
        return f"{VICUNA_SYSTEM} USER: {user} ASSISTANT: {reply}{end}"
    if name in ("llama_3", "llama_3_dc"):
        role = "assistant" if name == "llama_3" else "system"
        return (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            f"{LLAMA_3_SYSTEM}<|eot_id|>"
            f"<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
            f"<|start_header_id|>{role}<|end_header_id|>\n\n{reply}<|eot_id|>"
        )
    if name == "chatml":
        return (
            f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n{reply}<|im_end|>\n"
        )
    if name == "plain":
        return f"<image>{reply}\n"
    raise KeyError(name)


# (template, tokenizer factory, lead, end token of a reply). In Vicuna/Phi-2 the space after "ASSISTANT:" is
# part of the reply's first token, so a decoded span starts with it (`lead`), except that Llama's decoder
# strips one leading space from whatever it decodes.
CHAT_CASES: list[tuple[str, Callable[[], PreTrainedTokenizerBase], str, str]] = [
    ("vicuna_v1", llama2_tokenizer, "", "</s>"),
    ("vicuna_v1", functools.partial(llama2_tokenizer, legacy=True), "", "</s>"),
    ("vicuna_v1", tiny_tokenizer, " ", "</s>"),
    ("phi2", phi2_tokenizer, " ", "<|endoftext|>"),
    ("llama_3", llama3_tokenizer, "", "<|eot_id|>"),
    ("llama_3_dc", llama3_tokenizer, "", "<|eot_id|>"),
    ("chatml", chatml_tokenizer, "", "<|im_end|>"),
    ("chatml", functools.partial(chatml_tokenizer, add_bos=True), "", "<|im_end|>"),
    ("chatml", functools.partial(chatml_tokenizer, legacy=True), "", "<|im_end|>"),
]
CHAT_IDS = [
    "vicuna-llama",
    "vicuna-llama-legacy",
    "vicuna-tiny",
    "phi2",
    "llama3",
    "llama3dc",
    "chatml",
    "chatml-bos",
    "chatml-legacy",
]
# Cases whose decoded text is the literal string (legacy schemes add a "▁" after special tokens by design).
LITERAL_CASES = [
    ("vicuna_v1", llama2_tokenizer),
    ("vicuna_v1", tiny_tokenizer),
    ("phi2", phi2_tokenizer),
    ("llama_3", llama3_tokenizer),
    ("llama_3_dc", llama3_tokenizer),
    ("chatml", chatml_tokenizer),
    ("chatml", functools.partial(chatml_tokenizer, add_bos=True)),
    ("plain", llama2_tokenizer),
    ("plain", tiny_tokenizer),
]
LITERAL_IDS = [
    "vicuna-llama",
    "vicuna-tiny",
    "phi2",
    "llama3",
    "llama3dc",
    "chatml",
    "chatml-bos",
    "plain-llama",
    "plain-tiny",
]


def supervised_spans(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """Maximal runs of supervised positions, as id lists (and every supervised label equals its id)."""
    spans: list[list[int]] = []
    previous = False
    for tid, label in zip(input_ids, labels, strict=True):
        supervised = label != IGNORE_INDEX
        if supervised:
            assert label == tid
            if not previous:
                spans.append([])
            spans[-1].append(tid)
        previous = supervised
    return spans


def strip_bos(template: ChatTemplate, tok: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    """`ids` without the BOS the template added, checking that BOS, if any, is first and there only once."""
    bos = tok.bos_token_id
    if bos is not None and bos not in (tok.eos_token_id, tok.unk_token_id):  # Phi-2: BOS = EOS = UNK
        assert ids.count(bos) <= 1 and (bos not in ids or ids[0] == bos)
    if template.add_bos(tok):
        assert ids[0] == bos
        return ids[1:]
    return ids


def decode_with_images(tok: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """Decode text between `IMAGE_TOKEN_INDEX` ids separately and put `<image>` back where each one stood."""
    chunks: list[list[int]] = [[]]
    for tid in ids:
        if tid == IMAGE_TOKEN_INDEX:
            chunks.append([])
        else:
            chunks[-1].append(tid)
    return "<image>".join(tok.decode(chunk) for chunk in chunks)


# ---------------------------------------------------------------------------------------------------------------
# Label masking


@pytest.mark.parametrize(("name", "make", "lead", "end"), CHAT_CASES, ids=CHAT_IDS)
def test_supervised_spans_are_exactly_the_replies(name, make, lead, end):
    tok, template = make(), get_template(name)
    enc = template.encode(CONVERSATION, tok)
    spans = supervised_spans(enc.input_ids, enc.labels)
    assert [tok.decode(span) for span in spans] == [lead + reply + end for reply in REPLIES]
    assert enc.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    assert enc.labels[enc.input_ids.index(IMAGE_TOKEN_INDEX)] == IGNORE_INDEX


@pytest.mark.parametrize(("name", "make", "lead", "end"), CHAT_CASES, ids=CHAT_IDS)
def test_a_text_longer_than_the_tokenizers_limit_gets_no_indexing_warning(name, make, lead, end, capfd, caplog):
    """Lengths are dc's to check after visual-token expansion (`data.overlength`): the tokenizer's "will result in
    indexing errors" warning about its own `model_max_length` would be false for a sample dc truncates or skips."""
    tok, template = copy.deepcopy(make()), get_template(name)
    tok.model_max_length = 8
    long = [{"from": "human", "value": "<image>\n" + "the shape " * 40}, {"from": "gpt", "value": "a square"}]
    capfd.readouterr()
    with caplog.at_level("WARNING"):
        enc = template.encode(long, tok)
    assert len(enc.input_ids) > 8 * 4
    assert "sequence length is longer than" not in capfd.readouterr().err + caplog.text


def test_plain_supervises_caption_and_newline_only():
    tok, template = llama2_tokenizer(), get_template("plain")
    enc = template.encode(ONE_TURN, tok)
    assert enc.input_ids[:2] == [tok.bos_token_id, IMAGE_TOKEN_INDEX]
    assert enc.labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]
    assert [tok.decode(span) for span in supervised_spans(enc.input_ids, enc.labels)] == [REPLIES[0] + "\n"]


@pytest.mark.parametrize(("name", "make", "lead", "end"), CHAT_CASES, ids=CHAT_IDS)
def test_pieces_tokenise_like_the_whole_text(name, make, lead, end):
    """Segment-wise ids equal the tokenizer's ids for the whole rendered text (no stray prefix spaces)."""
    tok, template = make(), get_template(name)
    enc = template.encode(TEXT_ONLY, tok)
    text = template.render(TEXT_ONLY, tok)
    bos = template.add_bos(tok)
    body = text.removeprefix(tok.bos_token) if bos else text
    assert enc.input_ids == bos + tok.encode(body, add_special_tokens=False)


@pytest.mark.parametrize(("name", "make", "lead", "end"), CHAT_CASES, ids=CHAT_IDS)
def test_encoding_is_incremental(name, make, lead, end):
    """Encoding the first k rounds gives a prefix of encoding all of them (later text never re-tokenises)."""
    tok, template = make(), get_template(name)
    full = template.encode(CONVERSATION, tok)
    for rounds in (1, 2):
        part = template.encode(CONVERSATION[: 2 * rounds], tok)
        assert full.input_ids[: len(part.input_ids)] == part.input_ids
        assert full.labels[: len(part.labels)] == part.labels


# ---------------------------------------------------------------------------------------------------------------
# Prompt text and train/inference consistency


@pytest.mark.parametrize(("name", "make"), LITERAL_CASES, ids=LITERAL_IDS)
def test_one_turn_text_is_the_literal(name, make):
    tok, template = make(), get_template(name)
    ids = strip_bos(template, tok, template.encode(ONE_TURN, tok).input_ids)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    assert decode_with_images(tok, ids) == chat_literal(name, f"<image>\n{QUESTION}", REPLIES[0])


@pytest.mark.parametrize(("name", "make"), LITERAL_CASES, ids=LITERAL_IDS)
def test_prompt_is_the_prefix_of_encode(name, make):
    tok, template = make(), get_template(name)
    enc = template.encode(ONE_TURN, tok)
    prompt = template.prompt(ONE_TURN[0]["value"], tok)
    assert enc.input_ids[: len(prompt)] == prompt
    # Supervision starts exactly where generation starts.
    assert set(enc.labels[: len(prompt)]) == {IGNORE_INDEX}
    assert enc.labels[len(prompt)] != IGNORE_INDEX
    # The image placeholder is moved to the front at inference as in training.
    moved = template.prompt(f"{QUESTION} <image>", tok)
    assert moved == prompt


@pytest.mark.parametrize(("name", "make", "lead", "end"), CHAT_CASES, ids=CHAT_IDS)
def test_stop_tokens(name, make, lead, end):
    tok, template = make(), get_template(name)
    stops = template.stop_token_ids(tok)
    assert tok.convert_tokens_to_ids(end) in stops
    assert tok.eos_token_id in stops
    assert len(set(stops)) == len(stops)


# ---------------------------------------------------------------------------------------------------------------
# BOS and the llama_3 quirk


def test_llama3_bos_comes_from_the_literal_once():
    tok = llama3_tokenizer()
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert tok("x").input_ids[0] == bos  # the tokenizer would add one on its own...
    for name in ("llama_3", "llama_3_dc"):
        template = get_template(name)
        for ids in (template.encode(CONVERSATION, tok).input_ids, template.prompt(QUESTION, tok)):
            assert ids[0] == bos and ids.count(bos) == 1  # ...but there is exactly one


def test_bos_policies():
    llama, phi, chatml, chatml_bos = llama2_tokenizer(), phi2_tokenizer(), chatml_tokenizer(), chatml_tokenizer(True)
    assert get_template("vicuna_v1").encode(ONE_TURN, llama).input_ids.count(llama.bos_token_id) == 1
    assert get_template("plain").encode(ONE_TURN, llama).input_ids[0] == llama.bos_token_id
    phi_ids = get_template("phi2").encode(ONE_TURN, phi).input_ids
    assert phi_ids[0] != phi.bos_token_id and phi_ids.count(phi.bos_token_id) == 1  # only the turn end
    assert get_template("plain").encode(ONE_TURN, phi).input_ids[0] == IMAGE_TOKEN_INDEX  # BOS = EOS: no BOS
    assert chatml.bos_token_id not in get_template("chatml").encode(ONE_TURN, chatml).input_ids
    assert get_template("chatml").encode(ONE_TURN, chatml_bos).input_ids.count(chatml_bos.bos_token_id) == 1


def test_llama3_dc_puts_replies_under_the_system_header():
    tok = llama3_tokenizer()
    standard = get_template("llama_3").render(CONVERSATION, tok)
    quirk = get_template("llama_3_dc").render(CONVERSATION, tok)
    system_header = "<|start_header_id|>system<|end_header_id|>\n\n"
    assistant_header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert quirk == standard.replace(assistant_header, system_header)
    assert standard.count(assistant_header) == len(REPLIES)
    assert assistant_header not in quirk and quirk.count(system_header) == 1 + len(REPLIES)
    for reply in REPLIES:
        assert f"{system_header}{reply}<|eot_id|>" in quirk


def test_wrong_tokenizer_for_template_raises():
    with pytest.raises(ValueError, match=r"llama_3.*<\|begin_of_text\|>"):
        get_template("llama_3").encode(ONE_TURN, llama2_tokenizer())
    with pytest.raises(ValueError, match="<|im_start|>"):
        get_template("chatml").prompt(QUESTION, phi2_tokenizer())


# ---------------------------------------------------------------------------------------------------------------
# `<image>` placement


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{QUESTION} <image>", f"<image>\n{QUESTION}"),
        (f"<image>\n{QUESTION}", f"<image>\n{QUESTION}"),
        (f"  {QUESTION}\n<image>  ", f"<image>\n{QUESTION}"),
        ("What <image> is this?", "<image>\nWhat  is this?"),  # inner spaces are kept, as in LLaVA
        ("<image>", "<image>"),
        (f"<image>{QUESTION}<image>", f"<image>{QUESTION}<image>"),  # several images: interleaved, kept in place
        (QUESTION, QUESTION),
    ],
)
def test_normalize_image_placeholder(value, expected):
    conversation = [{"from": "human", "value": value}, {"from": "gpt", "value": "ok"}]
    snapshot = [dict(turn) for turn in conversation]
    out = normalize_image_placeholder(conversation)
    assert out[0]["value"] == expected and out[1] == snapshot[1]
    assert conversation == snapshot  # the input is not mutated


def test_interleaved_images_keep_their_places():
    """Two images: each tag stays where the text puts it (the second in a later turn), one slot each."""
    tok, template = tiny_tokenizer(), get_template("vicuna_v1")
    conversation = [
        {"from": "human", "value": "Compare <image> and"},
        {"from": "gpt", "value": REPLIES[0]},
        {"from": "human", "value": "this one: <image>"},
        {"from": "gpt", "value": REPLIES[1]},
    ]
    ids = strip_bos(template, tok, template.encode(conversation, tok).input_ids)
    text = decode_with_images(tok, ids)
    assert text == (
        f"{VICUNA_SYSTEM} USER: Compare <image> and ASSISTANT: {REPLIES[0]}</s>"
        f"USER: this one: <image> ASSISTANT: {REPLIES[1]}</s>"
    )
    assert ids.count(IMAGE_TOKEN_INDEX) == 2


def test_image_token_stands_where_the_moved_placeholder_is():
    tok, template = tiny_tokenizer(), get_template("vicuna_v1")
    ids = strip_bos(template, tok, template.encode(CONVERSATION, tok).input_ids)
    text = decode_with_images(tok, ids)
    assert text.startswith(f"{VICUNA_SYSTEM} USER: <image>\n{QUESTION} ASSISTANT: {REPLIES[0]}</s>")
    assert text.count("<image>") == 1


# ---------------------------------------------------------------------------------------------------------------
# Malformed conversations and the registry


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ([], "non-empty"),
        ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "turn 1 is from 'human'"),
        ([{"from": "human", "value": "a"}, {"from": "gpt"}], "turn 1 has no string 'value'"),
        ([{"from": "user", "value": "a"}, {"from": "gpt", "value": "b"}], "turn 0 has from='user'"),
        (
            [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "c"}],
            "turn 2 is a human turn with no assistant reply",
        ),
        ([{"from": "gpt", "value": "b"}], "no human turn"),
        (["hello"], "turn 0 is not a dict"),
    ],
)
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_malformed_conversations_raise_naming_the_turn(conversation, message, name):
    with pytest.raises(ValueError, match=message):
        get_template(name).encode(conversation, tiny_tokenizer())  # checked before any tokenisation


def test_leading_gpt_turn_is_dropped_like_llava():
    tok, template = tiny_tokenizer(), get_template("vicuna_v1")
    with_lead = [{"from": "gpt", "value": "Hi there."}, *ONE_TURN]
    assert template.encode(with_lead, tok) == template.encode(ONE_TURN, tok)


def test_registry_is_the_config_folder():
    assert {"plain", "vicuna_v1", "phi2", "llama_3", "llama_3_dc", "chatml"} <= set(TEMPLATES)
    assert all(isinstance(get_template(name), ChatTemplate) and get_template(name).name == name for name in TEMPLATES)


# ---------------------------------------------------------------------------------------------------------------
# Multi-turn generation prompts (the chat front-ends)


def next_turn_literal(name: str, user: str) -> str:
    """A later human turn and the assistant header after it, written out by hand."""
    if name in ("vicuna_v1", "phi2"):
        return f"USER: {user} ASSISTANT:"
    if name in ("llama_3", "llama_3_dc"):
        role = "assistant" if name == "llama_3" else "system"
        return (
            f"<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
            f"<|start_header_id|>{role}<|end_header_id|>\n\n"
        )
    if name == "chatml":
        return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    raise KeyError(name)


@pytest.mark.parametrize(("name", "make", "lead", "end"), CHAT_CASES, ids=CHAT_IDS)
def test_conversation_prompt_is_where_the_reply_starts_in_encode(name, make, lead, end):
    """For every round: the prompt is a prefix of the whole conversation's encoding and the k-th reply (alone)
    is supervised right after it, so a chat sees the ids the model was trained on."""
    tok, template = make(), get_template(name)
    full = template.encode(CONVERSATION, tok)
    for k, reply in enumerate(REPLIES):
        prompt = template.prompt_conversation(CONVERSATION[: 2 * k + 1], tok)
        assert full.input_ids[: len(prompt)] == prompt
        assert full.labels[len(prompt) - 1] == IGNORE_INDEX and full.labels[len(prompt)] != IGNORE_INDEX
        span = supervised_spans(full.input_ids[len(prompt) :], full.labels[len(prompt) :])[0]
        assert tok.decode(span) == lead + reply + end
        assert prompt.count(IMAGE_TOKEN_INDEX) == 1


@pytest.mark.parametrize(("name", "make"), [c for c in LITERAL_CASES if c[0] != "plain"], ids=LITERAL_IDS[:-2])
def test_two_turn_prompt_text_is_the_literal(name, make):
    tok, template = make(), get_template(name)
    ids = strip_bos(template, tok, template.prompt_conversation(CONVERSATION[:3], tok))
    first = chat_literal(name, f"<image>\n{QUESTION}", REPLIES[0])
    assert decode_with_images(tok, ids) == first + next_turn_literal(name, CONVERSATION[2]["value"])


@pytest.mark.parametrize(
    ("name", "make"), [(c[0], c[1]) for c in CHAT_CASES] + [("plain", tiny_tokenizer)], ids=[*CHAT_IDS, "plain"]
)
def test_one_turn_conversation_prompt_is_prompt(name, make):
    tok, template = make(), get_template(name)
    for text in (f"{QUESTION} <image>", QUESTION):
        assert template.prompt_conversation([{"from": "human", "value": text}], tok) == template.prompt(text, tok)


def test_conversation_prompt_refusals():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="turn 1 is an assistant reply"):
        get_template("vicuna_v1").prompt_conversation(ONE_TURN, tok)
    with pytest.raises(ValueError, match="turn 1 is from 'human'"):
        get_template("vicuna_v1").prompt_conversation([ONE_TURN[0], ONE_TURN[0]], tok)
    with pytest.raises(ValueError, match="'plain'.*one human turn, got 3 turns"):
        get_template("plain").prompt_conversation(CONVERSATION[:3], tok)
