"""User-level workflows built on the engine: pruning with fine-tuning and sweeps (``prune``),
few-shot and zero-shot evaluation (``fewshot``, ``zeroshot``), adversarial robustness curves
(``robustness``) and comparisons of several runs (``compare``).  The api and cli call them."""
