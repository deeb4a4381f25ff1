"""The evaluation beside the runtime: the dnp-23 protocol and everything that measures the model.

dataset (the IoT Sentinel captures and their split), protocol (dnp-eval's scoring of a model on it),
metrics, baselines (the n-gram matcher, IoT Sentinel's Random Forests), plots, calibrate (the
verdict held out, on fold models), ceiling (what the first 20 packets can separate) and cli
(dnp-eval). It scores through the runtime's own code (tool.scan); the runtime never imports it, so
a scan loads none of it (tests/test_scan.py checks).
"""
