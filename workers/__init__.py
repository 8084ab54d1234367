"""Detection workers: ``traffic.frames`` -> YOLO -> ``traffic.detections``.

Stateless: a frame in, one detection event out. Tracking needs a camera's frames in order, so it
runs in the aggregator; that is what makes scaling workers on lag safe.
"""
