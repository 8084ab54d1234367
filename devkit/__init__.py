"""Developer kit: what runs the product on one machine, for the demo, the tests and the benchmarks.

A local Apache Kafka broker fetched from Maven Central (:mod:`devkit.broker`), a simulated RTSP
camera (:mod:`devkit.simulated_camera`), the whole pipeline as local processes
(:mod:`devkit.local_pipeline`) and the ``traffic demo`` command (:mod:`devkit.demo`).

Not part of the services: nothing in ``traffic``, ``ingest``, ``workers`` or ``aggregator``
imports it, and the production image leaves it out (``deploy/images/Dockerfile.dockerignore``).
"""
