"""What the services share: wire contracts, site configuration, Kafka settings, health and metrics.

The three services (``ingest``, ``workers``, ``aggregator``) import from here and never from
each other, so each can be deployed, read and tested on its own.
"""

__version__ = "0.1.0"
