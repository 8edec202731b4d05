"""Runs the schemathesis CLI with one hypothesis cosmetic turned off.

Hypothesis describes a lambda in a strategy's repr by finding and parsing the
lambda's source with `ast.parse`. On CPython 3.11.7 that parse can fail inside
hypothesis ("AST constructor recursion depth mismatch", or the KeyError it
raises on the way there) when called deep in schemathesis's body generator,
and schemathesis then reports an error for the operation although no request
was sent. The description serves reprs and error messages, and one
optimisation (reading simple `lambda x: x > 0` filters as bounds, which falls
back to plain rejection sampling when it cannot), so here it is a fixed string.
"""

import sys

import hypothesis.internal.filtering as filtering
import hypothesis.internal.lambda_sources as lambda_sources


def _no_source(f):
    return "lambda: <source not shown>"


lambda_sources.lambda_description = _no_source
filtering.lambda_description = _no_source

from schemathesis.cli import schemathesis  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "schemathesis"
    sys.exit(schemathesis())
