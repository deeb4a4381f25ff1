"""DeepNetPrint: few-shot network behavioural fingerprints of IoT devices.

The runtime: reads captures through tshark, encodes packets with onnxruntime (never torch),
enrolls fingerprints and scans captures. The evaluation lives beside it in `tool/evaluation/`, which
the runtime never imports; training lives in `export/`.
"""

__version__ = "0.1.0"
