"""Voice notes: speech-to-text and text-to-speech engines.

Registered by the name used in settings (``HABLA_STT``, ``HABLA_TTS``) in
``runtime/providers.py``; adapters are imported only when chosen, so an unused cloud
SDK costs nothing at start-up.
"""
