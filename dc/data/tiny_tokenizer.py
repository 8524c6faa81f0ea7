"""An offline tokenizer for the tiny default model, built deterministically (no download, no file).

A byte-level BPE trained on a fixed corpus: the synthetic task's vocabulary and the chat templates' fixed
strings. Byte-level means any text encodes (no unknown token) and decodes back exactly. It lives beside the
synthetic task whose words it is trained on; the tiny LLM's config names it as its tokenizer
(`llm.tokenizer._target_`), so the model layer never imports the data layer.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from dc.data.synthetic import vocabulary_sentences
from dc.models.llms.templates.vicuna import VICUNA_SYSTEM

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
VOCAB_SIZE = 512


def _corpus() -> list[str]:
    return [VICUNA_SYSTEM, " USER: ", " ASSISTANT: ", "\n"] + vocabulary_sentences()


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Return the tiny model's tokenizer (identical on every call and every machine)."""
    tok = Tokenizer.from_str(_tokenizer_json())
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=4096,
    )
