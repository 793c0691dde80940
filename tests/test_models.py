import pytest
import torch

from config import ModelConfig
from errors import InputError
from models import Shapes, build_model, registered
from models.configs import SECTIONS

SHAPES = Shapes(lookback=32, horizon=4, n_features=5, n_targets=2)
MODELS = registered()
SMALL = {"dlinear": {"kernel_size": 5, "hidden_size": 16}, "gru": {"hidden_size": 16}, "lstm": {"hidden_size": 16},
         "tcn": {"hidden_size": 16}, "patchtst": {"d_model": 16, "n_heads": 2}}


def model_config(name, task="forecast", n_classes=0, **params):
    """A ModelConfig of `name` whose own section holds `params` (small sizes by default)."""
    section = {name: SECTIONS[name](**{**SMALL.get(name, {}), **params})} if name in SECTIONS else {}
    return ModelConfig(name=name, task=task, n_classes=n_classes, **section)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forecast_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(model_config(name), SHAPES)
    x = torch.randn(3, 32, 5, requires_grad=True)              # (B, L, F)
    out = model(x)
    assert out.shape == (3, 4, 2)                              # (B, H, K)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


TRAINABLE = sorted(set(MODELS) - {"repeat_last"})


@pytest.mark.parametrize("name", TRAINABLE)
def test_classification_head(name):
    cfg = model_config(name, task="classify", n_classes=3)
    model = build_model(cfg, Shapes(32, 1, 5, 3, task="classify"))
    logits = model(torch.randn(4, 32, 5))
    assert logits.shape == (4, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 1])).backward()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_targets_taken_from_feature_channels(name):
    model = build_model(model_config(name), Shapes(16, 3, 4, 2, target_channels=(3, 1)))
    assert model(torch.randn(2, 16, 4)).shape == (2, 3, 2)


def test_tcn_is_causal():
    model = build_model(model_config("tcn", hidden_size=8, dropout=0.0), Shapes(16, 1, 2, 1)).eval()
    x = torch.randn(1, 16, 2)
    h1 = model.net(x.transpose(1, 2))
    x2 = x.clone()
    x2[:, 10:] += 5.0                                          # change only the future of step 9
    h2 = model.net(x2.transpose(1, 2))
    assert torch.allclose(h1[:, :, :10], h2[:, :, :10])


def test_bf16_autocast_on_cpu():
    model = build_model(model_config("patchtst"), SHAPES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 32, 5))
    assert out.shape == (2, 4, 2)
    out.float().mean().backward()


def test_bad_model_config():
    with pytest.raises(InputError, match="model.name is 'xgboost'"):
        build_model(ModelConfig(name="xgboost"), SHAPES)
    with pytest.raises(InputError, match=r"model.patchtst.n_heads \(3\) must divide model.patchtst.d_model \(64\)"):
        model_config("patchtst", n_heads=3, d_model=64)
    with pytest.raises(InputError, match="model.n_classes is 0"):
        ModelConfig(task="classify")


def test_repeat_last_repeats_the_last_row():
    model = build_model(ModelConfig(name="repeat_last"), Shapes(8, 3, 4, 2, target_channels=(2, 0)))
    x = torch.randn(5, 8, 4)
    out = model(x)
    assert torch.equal(out, x[:, -1:, [2, 0]].expand(-1, 3, -1))
    with pytest.raises(InputError, match="forecasting baseline"):
        build_model(ModelConfig(name="repeat_last", task="classify", n_classes=2), Shapes(8, 1, 4, 2, task="classify"))


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_recurrent_layers_stack_with_torch_dropout_and_load_the_old_layout(name):
    # Stacked one module per layer, with nn.Dropout between (its masks come from torch's RNG,
    # which checkpoints hold; cuDNN's multi-layer dropout state is not restored on resume).
    cfg = model_config(name, hidden_size=8, num_layers=3, dropout=0.5)
    model = build_model(cfg, SHAPES)
    assert len(model.layers) == 3 and model.dropout.p == 0.5
    cell = torch.nn.LSTM if name == "lstm" else torch.nn.GRU
    old = cell(5, 8, num_layers=3, batch_first=True, dropout=0.5)
    state = {f"rnn.{k}": v for k, v in old.state_dict().items()}
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    model.load_state_dict(state)                              # a checkpoint of the multi-layer layout
    model.eval()
    old.eval()
    x = torch.randn(2, 32, 5)
    expected = model.head(old(x)[0][:, -1])
    torch.testing.assert_close(model(x), expected)
    assert build_model(model_config(name, hidden_size=8, num_layers=1, dropout=0.5), SHAPES).dropout.p == 0.0


@pytest.mark.parametrize("name", TRAINABLE)
@pytest.mark.parametrize("target_channels", [None, (3, 1)])
def test_quantile_outputs_are_per_target_and_level(name, target_channels):
    # (B, H, K x Q), target-major. Channel models (DLinear, PatchTST) give each channel its own Q values,
    # so a picked target channel's levels are that channel's, not a mix of every channel.
    shapes = Shapes(16, 3, 4, 2, target_channels=target_channels, n_quantiles=3)
    model = build_model(model_config(name), shapes)
    assert model(torch.randn(2, 16, 4)).shape == (2, 3, 6)
    if name in ("dlinear", "patchtst") and target_channels is not None:
        x = torch.randn(2, 16, 4)
        changed = x.clone()
        changed[:, :, 0] += 3.0                          # a channel that is not a target
        model.eval()
        torch.testing.assert_close(model(x), model(changed))


def test_a_models_settings_are_declared_once():
    """A built-in model's hyperparameters are one dataclass in models/configs.py (@section): ModelConfig's
    section fields and the class @register gives the model are derived from it, and every module of models/ is
    imported without a list to keep (models/build.py)."""
    import dataclasses
    from models import model_class, registered
    from models.configs import SECTIONS
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for name, cls in SECTIONS.items():
        assert fields[name].type is cls and isinstance(getattr(ModelConfig(), name), cls)
        assert model_class(name).Config is cls
    assert set(registered()) == set(SECTIONS) | {"repeat_last"}
    assert [f for f in fields if f not in SECTIONS] == ["name", "task", "n_classes", "quantiles", "session_embedding",
                                                          "custom"]
