"""Relaxation methods, one module each; every module registers its method in ``METHODS``.

Modules here are imported by the method registry's discovery (never by name from the harness), and
import only the harness's public API: :mod:`benchmark.method`, :mod:`benchmark.registry`,
:mod:`benchmark.config`.
"""
