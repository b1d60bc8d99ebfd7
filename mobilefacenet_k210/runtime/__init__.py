"""Running a model file: one layer below evaluate, export, teacher and board, which all use it.

``backends`` (one ``embed(crops)`` for Keras, TFLite, a kmodel and ONNX), ``kmodel`` (a kmodel's
header and compile record, and nncase's simulator that runs it), ``onnx`` (an ONNX face model
through OpenCV's DNN module) and ``contract`` (the input contract an ONNX model is fed by).
"""
