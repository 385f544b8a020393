"""BERT / RoBERTa / MiniLM <-> Hugging Face tensor names and config.json.

The tensor rules serve MPNet too (`_mpnet_map`): same embeddings, FFN and RoBERTa-style
heads; only the attention's names differ, and MPNet adds the encoder's relative bias table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from elang_jax.hf import _rules as R
from elang_jax.hf._registry import Family, RuleSet, register
from elang_jax.models._bert import BertForMaskedLM, BertForSequenceClassification, BertModel
from elang_jax.models._bert_config import BertConfig, PositionStyle

_ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
_HEAD_TENSORS = ("cls.*", "classifier.*", "lm_head.*", "qa_outputs.*")


def shared_config_fields(d: dict) -> dict[str, Any]:
    """The BertConfig fields every BERT-family config.json (BERT, RoBERTa, MPNet) states alike."""
    id2label = d.get("id2label")
    return dict(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=d["num_attention_heads"],
        intermediate_size=d["intermediate_size"],
        max_position_embeddings=d.get("max_position_embeddings", 512),
        layer_norm_eps=d.get("layer_norm_eps", 1e-12),
        hidden_act=d.get("hidden_act", "gelu"),
        hidden_dropout=d.get("hidden_dropout_prob", 0.1),
        attention_dropout=d.get("attention_probs_dropout_prob", 0.1),
        num_labels=len(id2label) if id2label else d.get("num_labels", 2),
    )


def shared_hf_fields(config: BertConfig, architecture: str) -> dict[str, Any]:
    """The inverse of `shared_config_fields`, as keyword arguments of a transformers config."""
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout,
        attention_probs_dropout_prob=config.attention_dropout,
        num_labels=config.num_labels,
        architectures=[architecture],
    )


def config_from_hf(d: dict) -> BertConfig:
    model_type = d.get("model_type", "bert")
    roberta = model_type in _ROBERTA_TYPES
    pos_type = d.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ValueError(f"position_embedding_type={pos_type!r} is not supported (only absolute)")
    pad = d.get("pad_token_id")
    return BertConfig(
        **shared_config_fields(d),
        type_vocab_size=d.get("type_vocab_size", 2),
        classifier_dropout=d.get("classifier_dropout"),
        pad_token_id=(1 if roberta else 0) if pad is None else pad,
        position_style=PositionStyle.ROBERTA if roberta else PositionStyle.ABSOLUTE,
        model_type="roberta" if roberta else "bert",
    )


def config_to_hf(config: BertConfig, architecture: str):
    import transformers

    cls = transformers.RobertaConfig if config.model_type == "roberta" else transformers.BertConfig
    extra: dict[str, Any] = (
        dict(bos_token_id=0, eos_token_id=2) if config.model_type == "roberta" else {}
    )
    return cls(
        **shared_hf_fields(config, architecture),
        type_vocab_size=config.type_vocab_size,
        classifier_dropout=config.classifier_dropout,
        pad_token_id=config.pad_token_id,
        **extra,
    )


_ARCHITECTURE_PREFIX = {"bert": "Bert", "roberta": "Roberta", "mpnet": "MPNet"}


def export_architecture(config: BertConfig, head: str) -> str:
    prefix = _ARCHITECTURE_PREFIX[config.model_type]
    return (
        prefix
        + {
            "base": "Model",
            "sequence_classification": "ForSequenceClassification",
            "masked_lm": "ForMaskedLM",
        }[head]
    )


# Names inside encoder.layer.{i} of the attention's projections (query, key, value, output)
# and its layer norm.
_ATTENTION_NAMES = {
    "bert": ("self.query", "self.key", "self.value", "output.dense", "output.LayerNorm"),
    "mpnet": ("attn.q", "attn.k", "attn.v", "attn.o", "LayerNorm"),
}


def _backbone(config: BertConfig, hf: str, path: R.Path, pooler: bool, optional_pooler: bool):
    """Rules for the encoder; `hf` is the name prefix ('' for a bare BertModel)."""
    p = f"{hf}." if hf else ""
    rules = [
        R.embedding(f"{p}embeddings.word_embeddings.weight", (*path, "embeddings", "word")),
        R.embedding(f"{p}embeddings.position_embeddings.weight", (*path, "embeddings", "position")),
        *R.layer_norm(f"{p}embeddings.LayerNorm", (*path, "embeddings", "norm")),
    ]
    if config.type_vocab_size:
        rules.append(
            R.embedding(
                f"{p}embeddings.token_type_embeddings.weight", (*path, "embeddings", "token_type")
            )
        )
    if config.relative_attention_num_buckets:
        rules.append(
            R.copy(
                f"{p}encoder.relative_attention_bias.weight",
                (*path, "relative_bias", "embedding"),
            )
        )
    *projections, norm = _ATTENTION_NAMES["mpnet" if config.model_type == "mpnet" else "bert"]
    for i in range(config.num_layers):
        hl, ml = f"{p}encoder.layer.{i}", (*path, "layers", i)
        for name, ours in zip(projections, ("query", "key", "value", "output"), strict=True):
            rules += R.linear(f"{hl}.attention.{name}", (*ml, "attention", ours))
        rules += [
            *R.layer_norm(f"{hl}.attention.{norm}", (*ml, "attention_norm")),
            *R.linear(f"{hl}.intermediate.dense", (*ml, "ffn", "w_in")),
            *R.linear(f"{hl}.output.dense", (*ml, "ffn", "w_out")),
            *R.layer_norm(f"{hl}.output.LayerNorm", (*ml, "ffn_norm")),
        ]
    if pooler:
        rules += R.linear(f"{p}pooler.dense", (*path, "pooler"), optional=optional_pooler)
    return rules


def rules(config: BertConfig, head: str, checkpoint_head: str | None) -> RuleSet:
    roberta = config.roberta_style_heads  # RoBERTa and MPNet heads share their layout
    prefix = config.model_type  # "bert", "roberta" or "mpnet": the base model's attribute
    other_head = checkpoint_head is not None and checkpoint_head != head
    ignore = ["*position_ids", "*token_type_ids", "*embeddings.position_ids"]
    if other_head:
        # Another head's tensors (and the pooler, which only some heads use) are dropped.
        ignore += list(_HEAD_TENSORS) + ["pooler.*", f"{prefix}.pooler.*"]
    if head == "base":
        rs = _backbone(config, "", (), config.add_pooler, other_head)
        aliases = {r.hf: [f"{prefix}.{r.hf}"] for r in rs}
        return RuleSet(rs, aliases, ignore)

    rs = _backbone(config, prefix, ("encoder",), config.add_pooler, other_head)
    # A bare BertModel checkpoint (e.g. all-MiniLM-L6-v2) stores the same names unprefixed.
    aliases = {r.hf: [r.hf[len(prefix) + 1 :]] for r in rs}
    if head == "sequence_classification":
        if roberta:
            rs += R.linear("classifier.dense", ("head", "dense"), optional=other_head)
            rs += R.linear("classifier.out_proj", ("head", "out"), optional=other_head)
        else:
            rs += R.linear("classifier", ("head", "out"), optional=other_head)
    elif head == "masked_lm":
        if roberta:
            rs += R.linear("lm_head.dense", ("transform",))
            rs += R.layer_norm("lm_head.layer_norm", ("transform_norm",))
            rs.append(R.copy("lm_head.bias", ("bias",)))
            aliases["lm_head.bias"] = ["lm_head.decoder.bias"]
            ignore.append("lm_head.decoder.weight")  # tied to the word embeddings
        else:
            rs += R.linear("cls.predictions.transform.dense", ("transform",))
            rs += R.layer_norm("cls.predictions.transform.LayerNorm", ("transform_norm",))
            rs.append(R.copy("cls.predictions.bias", ("bias",)))
            aliases["cls.predictions.bias"] = ["cls.predictions.decoder.bias"]
            ignore += ["cls.predictions.decoder.weight", "cls.seq_relationship.*"]
        if other_head:
            # A new masked-LM head on a checkpoint saved with another head.
            rs = [
                dataclasses.replace(r, optional=True) if r.hf.startswith(("lm_head", "cls")) else r
                for r in rs
            ]
    else:
        raise ValueError(f"unknown head {head!r} for the {config.model_type} family")
    return RuleSet(rs, aliases, ignore)


def dropped_layers(hf_config: dict, config: BertConfig) -> list[str]:
    return [
        f"*encoder.layer.{i}.*" for i in range(config.num_layers, hf_config["num_hidden_layers"])
    ]


FAMILY = register(
    Family(
        name="bert",
        model_types=("bert", *_ROBERTA_TYPES),
        heads={
            "base": BertModel,
            "sequence_classification": BertForSequenceClassification,
            "masked_lm": BertForMaskedLM,
        },
        architectures={
            "BertModel": "base",
            "RobertaModel": "base",
            "XLMRobertaModel": "base",
            "BertForSequenceClassification": "sequence_classification",
            "RobertaForSequenceClassification": "sequence_classification",
            "XLMRobertaForSequenceClassification": "sequence_classification",
            "BertForMaskedLM": "masked_lm",
            "BertForPreTraining": "masked_lm",
            "RobertaForMaskedLM": "masked_lm",
            "XLMRobertaForMaskedLM": "masked_lm",
        },
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        export_architecture=export_architecture,
        rules=rules,
        dropped_layers=dropped_layers,
    )
)
