"""ONNX Runtime session settings that matter for a pipeline sharing two cores with other work."""

from __future__ import annotations

from rtseg.engine.ort_backend import NO_SPINNING, session_options


def test_worker_threads_do_not_spin_after_a_run() -> None:
    options = session_options(2)
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert key in NO_SPINNING
        assert options.get_session_config_entry(key) == "0"
