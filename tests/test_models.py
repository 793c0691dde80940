import pytest
import torch

from config import ModelConfig
from errors import InputError
from models import MODELS, Shapes, build_model

SHAPES = Shapes(lookback=32, horizon=4, n_features=5, n_targets=2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forecast_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, hidden_size=16, d_model=16, n_heads=2, kernel_size=5), SHAPES)
    x = torch.randn(3, 32, 5, requires_grad=True)              # (B, L, F)
    out = model(x)
    assert out.shape == (3, 4, 2)                              # (B, H, K)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


TRAINABLE = sorted(set(MODELS) - {"repeat_last"})


@pytest.mark.parametrize("name", TRAINABLE)
def test_classification_head(name):
    cfg = ModelConfig(name=name, task="classify", n_classes=3, hidden_size=16, d_model=16, n_heads=2, kernel_size=5)
    model = build_model(cfg, Shapes(32, 1, 5, 3))
    logits = model(torch.randn(4, 32, 5))
    assert logits.shape == (4, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 1])).backward()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_targets_taken_from_feature_channels(name):
    cfg = ModelConfig(name=name, hidden_size=8, d_model=8, n_heads=2, kernel_size=5)
    model = build_model(cfg, Shapes(16, 3, 4, 2, target_channels=(3, 1)))
    assert model(torch.randn(2, 16, 4)).shape == (2, 3, 2)


def test_tcn_is_causal():
    model = build_model(ModelConfig(name="tcn", hidden_size=8, dropout=0.0), Shapes(16, 1, 2, 1)).eval()
    x = torch.randn(1, 16, 2)
    h1 = model.net(x.transpose(1, 2))
    x2 = x.clone()
    x2[:, 10:] += 5.0                                          # change only the future of step 9
    h2 = model.net(x2.transpose(1, 2))
    assert torch.allclose(h1[:, :, :10], h2[:, :, :10])


def test_bf16_autocast_on_cpu():
    model = build_model(ModelConfig(name="patchtst", d_model=16, n_heads=2), SHAPES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 32, 5))
    assert out.shape == (2, 4, 2)
    out.float().mean().backward()


def test_bad_model_config():
    with pytest.raises(InputError, match="model.name is 'xgboost'"):
        build_model(ModelConfig(name="xgboost"), SHAPES)
    with pytest.raises(InputError, match=r"model.n_heads \(3\) must divide model.d_model \(64\)"):
        ModelConfig(n_heads=3)
    with pytest.raises(InputError, match="model.n_classes is 0"):
        ModelConfig(task="classify")


def test_repeat_last_repeats_the_last_row():
    model = build_model(ModelConfig(name="repeat_last"), Shapes(8, 3, 4, 2, target_channels=(2, 0)))
    x = torch.randn(5, 8, 4)
    out = model(x)
    assert torch.equal(out, x[:, -1:, [2, 0]].expand(-1, 3, -1))
    with pytest.raises(InputError, match="forecasting baseline"):
        build_model(ModelConfig(name="repeat_last", task="classify", n_classes=2), Shapes(8, 1, 4, 2))
