"""Recorded video, counted in one process: ``traffic count``, ``traffic eval`` and the labelling aid.

This is the composition layer above the services: it chains the step functions the services
export (the ingester's sampler and encoder, the worker's decoder, detector and event builders,
the aggregator's counting core) in the order the streaming pipeline runs them, so a recording
gives the counts the pipeline would. The services never import this package.
"""
