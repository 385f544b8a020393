"""MPNet (all-mpnet-base-v2) <-> Hugging Face tensor names and config.json.

MPNet is a BERT-family model here (`BertConfig(model_type="mpnet")`): the tensor rules are
the BERT family's (`_bert_map.rules`, which knows MPNet's attention names and relative bias
table); only config.json and the architecture names are MPNet's own.
"""

from __future__ import annotations

from elang_jax.hf import _bert_map
from elang_jax.hf._registry import Family, register
from elang_jax.models._bert import BertForMaskedLM, BertForSequenceClassification, BertModel
from elang_jax.models._bert_config import MPNET_DEFAULTS, MPNET_RELATIVE_BUCKETS, BertConfig


def config_from_hf(d: dict) -> BertConfig:
    buckets = d.get("relative_attention_num_buckets", MPNET_RELATIVE_BUCKETS)
    if buckets != MPNET_RELATIVE_BUCKETS:
        # transformers builds a table of this size but always computes 32 buckets, so any
        # other value is a checkpoint no reference implementation agrees on.
        raise ValueError(
            f"relative_attention_num_buckets={buckets} is not supported (MPNet uses "
            f"{MPNET_RELATIVE_BUCKETS})"
        )
    # pad_token_id is not read: transformers' MPNetEmbeddings counts positions from padding
    # index 1 whatever the config says, and so does BertConfig(model_type="mpnet").
    return BertConfig(**_bert_map.shared_config_fields(d), model_type="mpnet", **MPNET_DEFAULTS)


def config_to_hf(config: BertConfig, architecture: str):
    import transformers

    return transformers.MPNetConfig(
        **_bert_map.shared_hf_fields(config, architecture),
        relative_attention_num_buckets=MPNET_RELATIVE_BUCKETS,
        pad_token_id=config.pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
    )


FAMILY = register(
    Family(
        name="mpnet",
        model_types=("mpnet",),
        heads={
            "base": BertModel,
            "sequence_classification": BertForSequenceClassification,
            "masked_lm": BertForMaskedLM,
        },
        architectures={
            "MPNetModel": "base",
            "MPNetForSequenceClassification": "sequence_classification",
            "MPNetForMaskedLM": "masked_lm",
        },
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        export_architecture=_bert_map.export_architecture,
        rules=_bert_map.rules,
        dropped_layers=_bert_map.dropped_layers,
    )
)
