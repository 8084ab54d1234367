"""Camera ingesters: RTSP / file / HTTP-MJPEG sources -> sampled, resized JPEG frames -> ``traffic.frames``.

One process serves many cameras. Per camera a reader thread keeps only the newest sampled frame
(backends buffer, a slow consumer must not fall behind live), an encoder thread resizes and JPEG
encodes it, and one shared publisher sends it to Kafka with :class:`traffic.wire.FrameHeaders`.
See ``docs/ingest.md``.

Reusable pieces for other commands: :func:`ingest.sources.open_source` and
:func:`ingest.sampler.sample_file` (the exact frames the ingester publishes for a file).
"""
