"""Tokenizers: text <-> token ids, each with an end-of-document id (EOS).

    byte   UTF-8 bytes 0..255, EOS = 256 (vocab 257). Nothing to fit or download.
    char   the sorted characters of a text, EOS last (nanoGPT's shakespeare-char).
           `to_dict`/`from_dict` save and restore the vocabulary with a run.
    other  a Hugging Face tokenizer (e.g. EleutherAI/gpt-neox-20b, Zyda's), through the
           `tokenizers` package, from the hub or from a local tokenizer.json path.

`build_tokenizer(name, corpus_text=...)` picks one from `data.tokenizer`.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod

import numpy as np


class Tokenizer(ABC):
    name: str
    vocab_size: int
    eos_id: int

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without EOS."""

    @abstractmethod
    def decode(self, ids) -> str:
        """Text of `ids`; EOS ids are dropped."""

    def encode_array(self, text: str) -> np.ndarray:
        """`encode` as an int32 array (subclasses make this fast for megabytes of text)."""
        return np.asarray(self.encode(text), np.int32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    name = "byte"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", errors="replace"))   # lone surrogates -> '?'

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", errors="replace"), np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        # A model can emit any byte sequence: invalid UTF-8 becomes U+FFFD, not an exception.
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")


class CharTokenizer(Tokenizer):
    """One id per distinct character of the text it was built from (sorted), then EOS."""
    name = "char"

    def __init__(self, chars):
        chars = sorted(set(chars))
        if not chars:
            raise ValueError("a character vocabulary needs at least one character (the text is empty)")
        self.chars = chars
        self._codes = np.array([ord(c) for c in chars], np.int64)   # sorted, for searchsorted
        self.eos_id = len(chars)
        self.vocab_size = len(chars) + 1

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(set(text))

    def to_dict(self) -> dict:
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        if not isinstance(d, dict) or d.get("type") != "char" or not isinstance(d.get("chars"), str):
            raise ValueError(f"not a saved character vocabulary: {d!r:.200}")
        return cls(d["chars"])

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        # utf-32 gives one code point per 4 bytes; surrogatepass keeps lone surrogates as chars.
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32).astype(np.int64)
        ids = np.searchsorted(self._codes, codes)
        ok = (ids < len(self._codes)) & (self._codes[np.minimum(ids, len(self._codes) - 1)] == codes)
        if not ok.all():
            ch = chr(int(codes[np.argmin(ok)]))
            raise ValueError(
                f"character {ch!r} (U+{ord(ch):04X}) is not in the character vocabulary "
                f"({len(self.chars)} characters, built from the training text); "
                "use tokenizer: byte for text with unseen characters")
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                continue
            if not 0 <= i < len(self.chars):
                raise ValueError(f"token id {i} is outside the character vocabulary (0..{self.eos_id})")
            out.append(self.chars[i])
        return "".join(out)


# Names of the end-of-text token in common Hugging Face tokenizers, most common first.
_EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]")


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` from the hub (`name` like "EleutherAI/gpt-neox-20b") or a
    local tokenizer.json file."""

    def __init__(self, name: str):
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError:
            raise ImportError(
                f"tokenizer {name!r} needs the `tokenizers` package, which is not installed: "
                "pip install tokenizers (or use tokenizer: byte or char)") from None
        self.name = name
        if os.path.isfile(name):
            self._tok = _HF.from_file(name)
        else:
            try:
                self._tok = _HF.from_pretrained(name)
            except Exception as e:  # noqa: BLE001 -- hub errors come in many types
                raise RuntimeError(_hub_error(name, e)) from e
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        eos = next((t for t in _EOS_NAMES if self._tok.token_to_id(t) is not None), None)
        if eos is None:
            raise ValueError(f"tokenizer {name!r} has no end-of-text token (looked for "
                             f"{', '.join(_EOS_NAMES)}); documents could not be separated")
        self.eos_id = self._tok.token_to_id(eos)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids if int(i) != self.eos_id],
                                skip_special_tokens=True)


def _hub_error(name: str, e: Exception) -> str:
    kind = type(e).__name__
    if kind in ("RepositoryNotFoundError", "GatedRepoError"):
        return (f"could not load tokenizer {name!r} from the Hugging Face hub: {kind} "
                "(check the name, or log in for gated models); use tokenizer: byte or char")
    var = offline_env("HF_HUB_OFFLINE")
    why = f"{var} is set" if var else kind
    return (f"could not load tokenizer {name!r} from the Hugging Face hub (offline or "
            f"unreachable): {why}; use tokenizer: byte or char, or run where the hub is reachable")


def offline_env(*names: str) -> str | None:
    """The first of these environment variables that switches Hugging Face offline, if any."""
    for v in names:
        if os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return v
    return None


def build_tokenizer(name: str, *, corpus_text: str | None = None) -> Tokenizer:
    """`data.tokenizer` -> a Tokenizer. "char" builds its vocabulary from `corpus_text`."""
    if name == "byte":
        return ByteTokenizer()
    if name == "char":
        if corpus_text is None:
            raise ValueError("tokenizer 'char' builds its vocabulary from the corpus: pass "
                             "corpus_text (or restore a saved one with CharTokenizer.from_dict)")
        return CharTokenizer.from_text(corpus_text)
    return HFTokenizer(name)
