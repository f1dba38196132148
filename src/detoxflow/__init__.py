"""detoxflow: reproducible detoxification of language models.

The package holds all logic; the Snakemake rules call its CLI (``detoxflow``).
Layers: ``data`` (dataset recipes) -> ``methods`` (each writes a Hugging Face
model folder) -> ``evaluation`` side (``generation``, ``scoring``, ``metrics``)
-> ``summary``. Methods never import the evaluation side, and nothing here
imports snakemake.
"""

#: the one place the version is written: pyproject.toml reads it (``[tool.setuptools.dynamic]``),
#: ``detoxflow --version`` prints it and every model folder's detoxflow.json records it.
__version__ = "0.2.0"
