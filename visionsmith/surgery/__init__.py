"""Model surgery: what changes a model's structure or which of its parameters train, apart from the
training objective (``methods/``): transfer modes (``transfer``), peft adapters (``peft``), pruning
(``compress``).  Applied by ``engine.build`` when a model is built, and again when it is reloaded."""
