"""The shipped text as byte-level token blocks for training small decoders here.

No decoder tokenizer installs offline, and a byte vocabulary keeps the LM head small (a
30k-word head would cost as much as ten layers of a 256-wide model, and the draft pays for
the head too). Ids 0-255 are bytes, 256 ends a sentence (EOS).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from elang_jax.checkpoints import cache_dir
from elang_jax.data import read_glue
from elang_jax.data._wmt import WMT_PAIRS, read_wmt
from elang_jax.models._gpt2 import GPT2Config, GPT2LMHeadModel

EOS = 256
VOCAB = 257


def encode(text: str) -> list[int]:
    """UTF-8 bytes as ids."""
    return list(text.strip().encode("utf-8"))


def decode(ids: Sequence[int]) -> str:
    """Ids back to text, stopping at EOS."""
    out = bytearray()
    for i in ids:
        if int(i) == EOS:
            break
        out.append(int(i))
    return out.decode("utf-8", errors="replace")


def training_sentences() -> list[str]:
    """SST-2 training sentences plus both sides of the shipped WMT test sets."""
    sents = [s for s in read_glue("sst2", "train").text_a if s.strip()]
    for pair in WMT_PAIRS:
        text = read_wmt(pair)
        sents += text.source + text.target
    return sents


def heldout_sentences() -> list[str]:
    """SST-2 dev sentences: never seen in training."""
    return [s for s in read_glue("sst2", "dev").text_a if s.strip()]


def token_blocks(
    sentences: Sequence[str], batch: int, length: int, seed: int = 0
) -> Iterator[np.ndarray]:
    """Endless [batch length] int32 blocks of the sentences joined by EOS, reshuffled each
    pass."""
    rng = np.random.RandomState(seed)
    encoded = [np.array([*encode(s), EOS], np.int32) for s in sentences]
    while True:
        order = rng.permutation(len(encoded))
        stream = np.concatenate([encoded[i] for i in order])
        n = len(stream) // (batch * length)
        # [n batch length] consecutive blocks
        blocks = stream[: n * batch * length].reshape(n, batch, length)
        yield from blocks


def byte_gpt2_config(**kw) -> GPT2Config:
    """The small byte-level GPT-2 trained here: 6 layers, width 256, 4 heads."""
    base = dict(
        vocab_size=VOCAB,
        n_positions=256,
        n_embd=256,
        n_layer=6,
        n_head=4,
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    return GPT2Config(**{**base, **kw})


def cache_path(name: str, config: GPT2Config, extra: str) -> Path:
    digest = hashlib.sha256(repr((config, extra)).encode()).hexdigest()[:12]
    return cache_dir() / "speculative" / f"{name}_{digest}.pkl"


def save_model(model: GPT2LMHeadModel, path: Path) -> None:
    """The model's parameters as a pickled dict of numpy arrays (written atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(jax_to_numpy(state)))
    tmp.replace(path)


def load_model(config: GPT2Config, path: Path) -> GPT2LMHeadModel:
    """A model of `config` with the parameters `save_model` wrote."""
    model = GPT2LMHeadModel(config, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, pickle.loads(path.read_bytes()))
    nnx.update(model, state)
    return model


def jax_to_numpy(tree):
    """Every array leaf as a numpy array (a picklable, device-free copy)."""
    return jax.tree.map(np.asarray, tree)
