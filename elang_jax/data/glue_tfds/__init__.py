"""GLUE as a tensorflow-datasets builder (`glue_tfds/<task>`), readable without TensorFlow.

Importing this package registers the `glue_tfds` builder with tfds.
"""

from elang_jax.data.glue_tfds.glue_tfds_dataset_builder import (
    FEATURE_NAMES,
    GlueTfds,
    build_glue_tfds,
)

__all__ = ["FEATURE_NAMES", "GlueTfds", "build_glue_tfds"]
