"""Model folders shared by the server's tests (written once per session)."""

import pytest
from serve_helpers import write_classifier, write_model


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve-models")
    return {
        "base": write_model(d / "base"),
        "chat": write_model(d / "chat", seed=1, generation={"prompt_template": "chat"}),
        "rope": write_model(d / "rope", seed=2, position="rope", n_head=4, n_kv_head=2, norm="rmsnorm",
                            mlp="swiglu", bias=False, qkv_bias=False, tie_weights=False),
        "clf": write_classifier(d / "clf"),
    }
