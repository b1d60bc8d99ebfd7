"""Teachers for distillation: a pretrained face embedding model whose normalised embeddings of each
crop (and of its mirror) are stored once in the shards (``add-teacher``) and distilled into the student.

``contract``: a teacher's input contract; ``onnx``: ONNX through OpenCV's DNN module; ``sface``: the
default teacher, fetched and cached; ``models``: :func:`load_teacher` for every form; ``shards``:
adding teacher embeddings to existing shards.
"""
