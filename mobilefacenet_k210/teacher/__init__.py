"""Teachers for distillation: a pretrained face embedding model whose normalised embeddings of each
crop (and of its mirror) are stored once in the shards (``add-teacher``) and distilled into the student.

An ONNX teacher runs through ``runtime.onnx`` with its input contract (``runtime.contract``). ``sface``: the
default teacher, fetched and cached; ``models``: :func:`load_teacher` for every form; ``shards``:
adding teacher embeddings to existing shards.
"""
