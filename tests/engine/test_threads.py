"""One engine shared by several threads (a server's workers) gives each caller its own answer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rtseg.engine import load

SIZE = (64, 48)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_concurrent_callers_get_their_own_results(backend: str, shared_engine_dir: Path, make_model) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    engine = load(make_model("espnet", SIZE), backend=backend, input_size=SIZE, engine_dir=shared_engine_dir)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8) for _ in range(8)]
    expected = [engine.run(image) for image in images]
    assert all((expected[i] != expected[0]).mean() > 0.01 for i in range(1, 8))  # distinct answers

    def work(i: int) -> bool:
        image = images[i % len(images)]
        low = engine.run_low(image)
        deep = engine.run_deep(low)
        return bool(np.array_equal(engine.run_head(low, deep), expected[i % len(images)]))

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(64)))
    assert all(results), f"{results.count(False)} of 64 concurrent calls returned another call's labels"
