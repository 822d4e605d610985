"""The official dynamic inference used as the tests' oracle; it lives in ``pfcn.benchmarks.official`` because
pfcn-bench runs it as the official baseline."""

from pfcn.benchmarks.official import (  # noqa: F401 (re-exported for the tests)
    POOL_SIZES,
    OfficialInferenceError,
    _fuse_thing_kernels,
    _level_stuff,
    _to_original,
    oracle_inference,
)
