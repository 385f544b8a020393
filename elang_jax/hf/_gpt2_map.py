"""GPT-2 <-> Hugging Face tensor names and config.json."""

from __future__ import annotations

from elang_jax.hf import _rules as R
from elang_jax.hf._registry import Family, RuleSet, register
from elang_jax.models._gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model

_PREFIX = "transformer"
# Tensors that never belong to our models: the causal-mask buffers of old checkpoints, the
# LM head (tied to wte: transformers 5 does not save it, older checkpoints do), and the
# heads of other GPT-2 architectures (sequence classification, double heads, QA, tagging).
_ALWAYS_IGNORED = ("*.attn.bias", "*.attn.masked_bias", "lm_head.weight")
_OTHER_HEADS = ("score.*", "multiple_choice_head.*", "qa_outputs.*", "classifier.*")


def config_from_hf(d: dict) -> GPT2Config:
    unsupported = {
        "scale_attn_weights": (True, "attention scores are always scaled by 1/sqrt(head_dim)"),
        "scale_attn_by_inverse_layer_idx": (False, "per-layer attention scaling"),
        "add_cross_attention": (False, "cross-attention"),
        "tie_word_embeddings": (True, "an LM head untied from wte"),
    }
    for key, (supported, what) in unsupported.items():
        if d.get(key, supported) != supported:
            raise ValueError(f"{key}={d[key]!r} is not supported ({what})")
    # reorder_and_upcast_attn only changes float16 numerics; attention here already runs its
    # softmax in float32.
    return GPT2Config(
        vocab_size=d["vocab_size"],
        n_positions=d.get("n_positions", 1024),
        n_embd=d.get("n_embd", 768),
        n_layer=d.get("n_layer", 12),
        n_head=d.get("n_head", 12),
        n_inner=d.get("n_inner"),
        activation_function=d.get("activation_function", "gelu_new"),
        resid_dropout=d.get("resid_pdrop", 0.1),
        embd_dropout=d.get("embd_pdrop", 0.1),
        attn_dropout=d.get("attn_pdrop", 0.1),
        layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        pad_token_id=d.get("pad_token_id"),
    )


def config_to_hf(config: GPT2Config, architecture: str):
    import transformers

    return transformers.GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.n_inner,
        activation_function=config.activation_function,
        resid_pdrop=config.resid_dropout,
        embd_pdrop=config.embd_dropout,
        attn_pdrop=config.attn_dropout,
        layer_norm_epsilon=config.layer_norm_epsilon,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=True,
        architectures=[architecture],
    )


def export_architecture(config: GPT2Config, head: str) -> str:
    return {"base": "GPT2Model", "causal_lm": "GPT2LMHeadModel"}[head]


def _backbone(config: GPT2Config, hf: str, path: R.Path) -> list[R.Rule]:
    """Rules for the decoder; `hf` is the name prefix ('' for a bare GPT2Model)."""
    p = f"{hf}." if hf else ""
    rules = [
        R.embedding(f"{p}wte.weight", (*path, "wte")),
        R.embedding(f"{p}wpe.weight", (*path, "wpe")),
    ]
    for i in range(config.n_layer):
        hl, ml = f"{p}h.{i}", (*path, "layers", i)
        attn = (*ml, "attention")
        rules += [
            *R.layer_norm(f"{hl}.ln_1", (*ml, "ln_1")),
            # Conv1D stores [in, 3 * out]: query, key and value side by side on the last axis.
            R.split_rule(
                f"{hl}.attn.c_attn.weight",
                [(*attn, name, "kernel") for name in ("query", "key", "value")],
                axis=-1,
            ),
            R.split_rule(
                f"{hl}.attn.c_attn.bias",
                [(*attn, name, "bias") for name in ("query", "key", "value")],
                axis=-1,
            ),
            *R.conv1d(f"{hl}.attn.c_proj", (*attn, "output")),
            *R.layer_norm(f"{hl}.ln_2", (*ml, "ln_2")),
            *R.conv1d(f"{hl}.mlp.c_fc", (*ml, "ffn", "w_in")),
            *R.conv1d(f"{hl}.mlp.c_proj", (*ml, "ffn", "w_out")),
        ]
    rules += R.layer_norm(f"{p}ln_f", (*path, "ln_f"))
    return rules


def rules(config: GPT2Config, head: str, checkpoint_head: str | None) -> RuleSet:
    ignore = list(_ALWAYS_IGNORED)
    if checkpoint_head != head:
        ignore += list(_OTHER_HEADS)
    if head == "base":
        rs = _backbone(config, "", ())
        # A GPT2LMHeadModel checkpoint stores the same tensors under "transformer.".
        aliases = {r.hf: [f"{_PREFIX}.{r.hf}"] for r in rs}
    elif head == "causal_lm":
        rs = _backbone(config, _PREFIX, ("transformer",))
        # A bare GPT2Model checkpoint stores them unprefixed.
        aliases = {r.hf: [r.hf[len(_PREFIX) + 1 :]] for r in rs}
    else:
        raise ValueError(f"unknown head {head!r} for the GPT-2 family")
    return RuleSet(rs, aliases, ignore)


FAMILY = register(
    Family(
        name="gpt2",
        model_types=("gpt2",),
        heads={"base": GPT2Model, "causal_lm": GPT2LMHeadModel},
        architectures={"GPT2LMHeadModel": "causal_lm", "GPT2Model": "base"},
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        export_architecture=export_architecture,
        rules=rules,
    )
)
