"""relaxbench: a benchmark suite for relaxation methods of equivariant neural networks.

The public API of the harness, for methods living in other packages:

* :mod:`benchmark.registry`: ``TASKS``, ``BACKBONES``, ``METHODS`` and the ``Registry`` class
* :mod:`benchmark.method`: the ``Method`` hook protocol and its ``StepContext``
* :mod:`benchmark.config`: ``param`` for typed, validated config fields
* :mod:`benchmark.experiment`: ``resolve`` a run's configuration
* :mod:`benchmark.train`: ``train`` one run into a record
* :mod:`benchmark.evaluate`: ``equivariance_error`` and ``assert_equivariant``
"""

__version__ = "0.1.0"
