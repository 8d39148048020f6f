"""Quantization-aware fine-tuning: its fake INT8 rounds weights exactly as the Q/DQ file does,
it leaves the float teacher untouched, and it stops at its time limit. The trained tiny CNN and
its exports come from tests/test_quantize.py's fixture."""
from __future__ import annotations

import numpy as np
import pytest

from exporters.onnx_int8 import quantize_onnx
from test_quantize import world  # noqa: F401  (the module fixture: trained tiny CNN, exports, data)

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402


def test_qat_rounds_weights_as_the_qdq_file_does_and_leaves_float_modules(world):
    from torch.nn.utils import parametrize

    from pipeline.train.qat import WeightRounding, finetune_for_int8
    model = world["model"]
    path, _ = quantize_onnx(world["paths"]["plain"], world["tmp"] / "qat-ref.onnx", world["source"], scheme="u8s8")
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    first_conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    dq = producers[first_conv.input[1]]
    q, scale = inits[dq.input[0]].astype(np.float32), inits[dq.input[1]]
    in_file = q * scale.reshape(-1, 1, 1, 1)
    ours = WeightRounding(8)(model[0].weight.detach()).numpy()
    np.testing.assert_allclose(ours, in_file, rtol=0, atol=1e-6)   # the same int8 grid, value for value

    before = {k: v.clone() for k, v in model.state_dict().items()}
    views = torch.from_numpy(world["sens_inputs"])
    trained, info = finetune_for_int8(model, torch.from_numpy(world["source"].tensors()), views, 8, epochs=2,
                                      lr=1e-3, max_seconds=60, batch_size=16)
    assert not any(parametrize.is_parametrized(m) for m in trained.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the teacher is untouched
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert [e["epoch"] for e in info["epochs"]] == [1, 2] and info["stopped"] is None and info["layers"] == 4
    _, info = finetune_for_int8(model, torch.from_numpy(world["source"].tensors()), views, 8, epochs=50,
                                lr=1e-3, max_seconds=0.01, batch_size=16)
    assert info["stopped"].startswith("time limit 0.01 s reached in epoch 1") and len(info["epochs"]) == 1
