"""A small synthetic world: compositional scenes, their captions, and the tasks drawn from it.

Pretraining (``harness/pretrain.py``) sees scenes and captions from ``world.pretraining_batch``;
downstream tasks (loader ``world``, suite ``mini``) ask about one attribute, some of them under
shifts pretraining never saw (held-out colours, striped backgrounds).
"""
