"""Deployment: BatchNorm folding for inference (:mod:`.fold`), the ONNX writer
(:mod:`.onnx_export`, needs the optional ``onnx``) and the predictors behind eval.py and
classify.py (:mod:`.predictors`)."""
