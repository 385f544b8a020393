"""T5 / Flan-T5 <-> Hugging Face tensor names and config.json.

Two facts about transformers 5 shape these rules:
  * Its T5Config always says `tie_word_embeddings: true` and records whether the decoder
    output is scaled (v1.0) in `scale_decoder_outputs`. A v1.1 model it initialises has its
    LM head tied to `shared` (no `lm_head.weight` written); a v1.1 checkpoint from the hub
    stores its own `lm_head.weight`, and transformers then leaves the two untied. Hence: our
    `tie_word_embeddings` is "scaled, tied head" (v1.0), read from `scale_decoder_outputs`
    when present; an untied model loads `lm_head.weight`, or `shared.weight` when absent.
  * `encoder.embed_tokens.weight` / `decoder.embed_tokens.weight` are tied copies of
    `shared.weight`: read as aliases when present, never written (transformers' own
    save_pretrained does not write them and its from_pretrained does not need them).
"""

from __future__ import annotations

from elang_jax.hf import _rules as R
from elang_jax.hf._registry import Family, RuleSet, register
from elang_jax.models._t5 import T5Config, T5EncoderModel, T5ForConditionalGeneration

_EMBED_COPIES = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]


def config_from_hf(d: dict) -> T5Config:
    scale = d.get("scale_decoder_outputs")
    tied = d.get("tie_word_embeddings", True) is not False if scale is None else bool(scale)
    eos = d.get("eos_token_id", 1)
    if isinstance(eos, list):
        if len(eos) != 1:
            raise ValueError(f"eos_token_id={eos}: only a single EOS token is supported")
        eos = eos[0]
    pad = d.get("pad_token_id")
    pad = 0 if pad is None else pad
    start = d.get("decoder_start_token_id")
    return T5Config(
        vocab_size=d["vocab_size"],
        d_model=d["d_model"],
        d_kv=d["d_kv"],
        d_ff=d["d_ff"],
        num_layers=d["num_layers"],
        num_decoder_layers=d.get("num_decoder_layers"),
        num_heads=d["num_heads"],
        relative_attention_num_buckets=d.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=d.get("relative_attention_max_distance", 128),
        dropout_rate=d.get("dropout_rate", 0.1),
        layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-6),
        feed_forward_proj=d.get("feed_forward_proj", "relu"),
        tie_word_embeddings=tied,  # pyright: ignore[reportCallIssue]  # **kwargs
        pad_token_id=pad,
        eos_token_id=1 if eos is None else eos,
        # T5 starts decoding from the pad token.
        decoder_start_token_id=pad if start is None else start,  # pyright: ignore[reportCallIssue]  # **kwargs
    )


def config_to_hf(config: T5Config, architecture: str):
    import transformers

    return transformers.T5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.d_kv,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        num_decoder_layers=config.num_decoder_layers,
        num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        dropout_rate=config.dropout_rate,
        layer_norm_epsilon=config.layer_norm_epsilon,
        feed_forward_proj=config.feed_forward_proj,
        tie_word_embeddings=config.tie_word_embeddings,  # pyright: ignore[reportCallIssue]
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.decoder_start_token_id,  # pyright: ignore[reportCallIssue]
        architectures=[architecture],
    )


def export_architecture(config: T5Config, head: str) -> str:
    return {"seq2seq_lm": "T5ForConditionalGeneration", "encoder": "T5EncoderModel"}[head]


def _attention(hf: str, path: R.Path) -> list[R.Rule]:
    return [
        *R.linear(f"{hf}.q", (*path, "query"), bias=False),
        *R.linear(f"{hf}.k", (*path, "key"), bias=False),
        *R.linear(f"{hf}.v", (*path, "value"), bias=False),
        *R.linear(f"{hf}.o", (*path, "output"), bias=False),
    ]


def _ffn(config: T5Config, hf: str, path: R.Path) -> list[R.Rule]:
    if config.is_gated:
        # Gated: act(wi_0 x) * wi_1 x, i.e. wi_0 is the gate.
        rules = [
            *R.linear(f"{hf}.wi_0", (*path, "w_gate"), bias=False),
            *R.linear(f"{hf}.wi_1", (*path, "w_in"), bias=False),
        ]
    else:
        rules = R.linear(f"{hf}.wi", (*path, "w_in"), bias=False)
    return rules + R.linear(f"{hf}.wo", (*path, "w_out"), bias=False)


def _norm(hf: str, path: R.Path) -> R.Rule:
    return R.copy(f"{hf}.weight", (*path, "scale"))


def _stack(config: T5Config, name: str, decoder: bool) -> list[R.Rule]:
    """Rules for `encoder` or `decoder` (HF block.{i}.layer.{0: self-attn, 1: cross-attn or
    FFN, 2: FFN})."""
    path: R.Path = (name,)
    rules = [
        R.copy(
            f"{name}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (*path, "relative_bias", "embedding"),
        )
    ]
    n = config.num_decoder_layers if decoder else config.num_layers
    assert n is not None  # T5Config resolves num_decoder_layers
    for i in range(n):
        hb, ml = f"{name}.block.{i}.layer", (*path, "layers", i)
        rules += _attention(f"{hb}.0.SelfAttention", (*ml, "attention"))
        rules.append(_norm(f"{hb}.0.layer_norm", (*ml, "attention_norm")))
        if decoder:
            rules += _attention(f"{hb}.1.EncDecAttention", (*ml, "cross_attention"))
            rules.append(_norm(f"{hb}.1.layer_norm", (*ml, "cross_attention_norm")))
        f = 2 if decoder else 1
        rules += _ffn(config, f"{hb}.{f}.DenseReluDense", (*ml, "ffn"))
        rules.append(_norm(f"{hb}.{f}.layer_norm", (*ml, "ffn_norm")))
    rules.append(_norm(f"{name}.final_layer_norm", (*path, "final_norm")))
    return rules


def rules(config: T5Config, head: str, checkpoint_head: str | None) -> RuleSet:
    # Hugging Face's checkpoints of old carried an unused bias table in the first cross-
    # attention block; transformers ignores it too.
    ignore = ["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"]
    rs = [R.embedding("shared.weight", ("shared",))]
    aliases: dict[str, list[str]] = {"shared.weight": list(_EMBED_COPIES)}
    rs += _stack(config, "encoder", decoder=False)
    if head == "encoder":
        if checkpoint_head not in (None, "encoder"):
            ignore += ["decoder.*", "lm_head.*"]
        return RuleSet(rs, aliases, ignore)
    if head != "seq2seq_lm":
        raise ValueError(f"unknown head {head!r} for the T5 family")
    rs += _stack(config, "decoder", decoder=True)
    if config.tie_word_embeddings:
        # A tied copy of the embeddings, when a checkpoint stores it.
        aliases["shared.weight"].append("lm_head.weight")
    else:
        rs += R.linear("lm_head", ("lm_head",), bias=False)
        # transformers 5 ties a v1.1 head it initialised and then does not write it.
        aliases["lm_head.weight"] = ["shared.weight"]
    return RuleSet(rs, aliases, ignore)


FAMILY = register(
    Family(
        name="t5",
        model_types=("t5",),
        heads={"seq2seq_lm": T5ForConditionalGeneration, "encoder": T5EncoderModel},
        architectures={
            "T5ForConditionalGeneration": "seq2seq_lm",
            "T5WithLMHeadModel": "seq2seq_lm",
            "T5EncoderModel": "encoder",
        },
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        export_architecture=export_architecture,
        rules=rules,
    )
)
