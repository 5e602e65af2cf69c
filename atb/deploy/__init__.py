"""Deployment: the exported folders as they are served, in ONNX Runtime (fp32 or int8), and their latency there.

    runtime.py      the runtimes latency can be measured on, the optional-extra check, ORT sessions
    onnx_export.py  folder -> model.onnx (+ model.int8.onnx) beside model.safetensors, recorded and hashed
    ort_forward.py  an ORT session called like a torch encoder, for the one timing loop
    ort_predict.py  a folder's ONNX model over tokenised features, shaped as Trainer.predict gives them
    latency.py      latency of an exported folder on a runtime (what develop and the demo report)
"""
