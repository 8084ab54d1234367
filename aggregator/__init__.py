"""The aggregator: detections -> tracks -> line and zone crossings -> interval counts.

The counting core (:mod:`aggregator.counting`, :mod:`aggregator.tracking`, :mod:`aggregator.geometry`,
:mod:`aggregator.windows`) is pure Python without Kafka, shared by the streaming app
(:mod:`aggregator.app`) and the offline ``traffic count`` command, so both give identical counts.
"""
