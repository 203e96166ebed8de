"""Hearing: the neural models that decide what is speech and when a turn ends.

``vad`` and ``turn_model`` are thin adapters around the ONNX models shipped in the ``pipecat-ai`` wheel; the
decisions they feed (endpointing, the transcript filter) live in the sans-I/O ``conversation`` core.
"""
