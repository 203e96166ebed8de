"""Offline engines so the demo runs with no keys and no internet.

* ``WhisperSTT`` (``whisper``): Whisper tiny.en on the CPU, English only.
* ``OfflineTTS`` (``offline``): Piper for English, espeak-ng for Chinese.
* ``DemoReply`` (``demo``): an echo, not an AI.

Importing this package loads faster-whisper and Piper's libraries (not their models), so import it only when
an offline engine is chosen.
"""

from luna_voice.providers.offline.demo_reply import DemoReply
from luna_voice.providers.offline.piper_tts import OfflineTTS
from luna_voice.providers.offline.whisper_stt import WhisperSTT

__all__ = ["DemoReply", "OfflineTTS", "WhisperSTT"]
