"""visionsmith: train, adapt, harden and ship vision models from one CLI and one run folder."""
__version__ = "0.1.0"


# `export` is left out on purpose: `visionsmith.export` is the subpackage (use visionsmith.api.export).
_API = {"train", "resume", "evaluate", "predict", "report", "quickstart", "merge", "compare", "fewshot", "zeroshot",
        "robustness", "prune"}


def __getattr__(name):  # lazy, so `import visionsmith` stays light
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(name)
