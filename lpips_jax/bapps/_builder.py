"""The tensorflow-datasets builder ``bapps`` (imports tensorflow_datasets; never TensorFlow).

Prepare with ``file_format="array_record"`` and read with ``as_data_source()``: neither
needs TensorFlow. Images are stored as PNG (encoded here with Pillow) and decoded with
Pillow on read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lpips_jax.bapps import _layout

_CITATION = """\
@inproceedings{zhang2018perceptual,
  title={The Unreasonable Effectiveness of Deep Features as a Perceptual Metric},
  author={Zhang, Richard and Isola, Phillip and Efros, Alexei A and Shechtman, Eli
          and Wang, Oliver},
  booktitle={CVPR},
  year={2018}
}"""

_DESCRIPTION = {
    "2afc": (
        "BAPPS 2AFC: triplets (ref, p0, p1) of 64x64 patches and `judge`, the fraction of "
        "human raters who found p1 closer to ref than p0. Splits `train_{traditional,cnn,"
        "mix}` and `val_{traditional,cnn,superres,deblur,color,frameinterp}`."
    ),
    "jnd": (
        "BAPPS JND: pairs (p0, p1) of 64x64 patches and `same`, the fraction of human "
        "raters who found them identical. Splits `val_{traditional,cnn}`."
    ),
}


def _patch() -> tfds.features.Image:
    return tfds.features.Image(shape=(_layout.PATCH, _layout.PATCH, 3), encoding_format="png")


class Bapps(tfds.core.GeneratorBasedBuilder):
    """BAPPS (Zhang et al., CVPR 2018), from the official tarballs or extracted folder."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: official 2AFC and JND sets, one split per subset."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="2afc", description=_DESCRIPTION["2afc"]),
        tfds.core.BuilderConfig(name="jnd", description=_DESCRIPTION["jnd"]),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = _layout.INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config.name
        features = {part: _patch() for part in _layout.IMAGE_PARTS[config]}
        features[_layout.LABEL[config]] = tfds.features.Tensor(shape=(), dtype=np.float32)
        features["id"] = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION[config],
            features=tfds.features.FeaturesDict(features),
            homepage="https://richzhang.github.io/PerceptualSimilarity/",
            citation=_CITATION,
            # Keep the official (sorted-path) order: example i is the official index i.
            disable_shuffling=True,
        )

    def _manual_dir(self, dl_manager) -> Path:
        try:
            return Path(dl_manager.manual_dir)
        except AssertionError as e:  # tfds: manual dir missing or empty
            first = str(e).splitlines()[0] if str(e) else "manual directory missing or empty"
            raise _layout.BappsDataError(
                f"no BAPPS data: the manual directory is missing or empty ({first})\n\n{_layout.INSTRUCTIONS}"
            ) from None

    def _split_generators(self, dl_manager):
        config = self.builder_config.name
        manual = self._manual_dir(dl_manager)
        extract_root = Path(dl_manager.download_dir) / "bapps_extracted"
        found = _layout.locate(_layout.bases_for(manual, extract_root, config), config)
        if not found:
            raise _layout.BappsDataError(
                f"no BAPPS {config} data in the manual directory: {_layout.describe(manual)}"
                f"\n\n{_layout.INSTRUCTIONS}"
            )
        return {name: self._generate_examples(folder) for name, folder in found.items()}

    def _generate_examples(self, folder: Path):
        yield from _layout.iter_examples(folder, self.builder_config.name)
