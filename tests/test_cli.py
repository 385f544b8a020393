"""`elang-jax convert` both ways, through the installed console entry point's main()."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from elang_jax import BertConfig, BertForSequenceClassification, from_pretrained, save_pretrained
from elang_jax.cli import main
from elang_jax.hf._native import load_native


def _leaves(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_convert_hf_to_native_and_back(tmp_path, capsys):
    model = BertForSequenceClassification(BertConfig.tiny(num_labels=3), rngs=nnx.Rngs(3))
    save_pretrained(model, tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "native")]) == 0
    native = load_native(tmp_path / "native")
    assert main(["convert", str(tmp_path / "native"), str(tmp_path / "hf2")]) == 0
    back = from_pretrained(tmp_path / "hf2")
    for a, b, c in zip(_leaves(model), _leaves(native), _leaves(back), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert main(["info", str(tmp_path / "native")]) == 0
    assert "BertForSequenceClassification" in capsys.readouterr().out


def test_convert_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["convert", str(tmp_path / "a" / "b" / "c"), str(tmp_path / "out")])
