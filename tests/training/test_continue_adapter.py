"""Continuing training starts from the saved adapter's weights, trainable, not from a fresh LoRA init."""

import torch

from modelfactory.training.loop import load_model_for_training

from .conftest import CPU, fresh_model, hyperparameters


def lora(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def test_init_adapter_loads_the_trained_weights_as_trainable(tiny_dir, tmp_path):
    hp = hyperparameters(rank=4, alpha=8)
    model, _ = fresh_model(tiny_dir, hp)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.25)  # a fresh adapter's B is zero: these weights can only come from the saved one
    model.save_pretrained(tmp_path / "adapter")
    saved = lora(model)

    again, _ = load_model_for_training(tiny_dir, hp, device=CPU, init_adapter=tmp_path / "adapter")
    loaded = lora(again)
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[name], saved[name]) for name in saved)
    assert all(p.requires_grad for name, p in again.named_parameters() if "lora_" in name)
    fresh, _ = fresh_model(tiny_dir, hp)
    assert all(float(p.abs().max()) == 0.0 for name, p in fresh.named_parameters() if "lora_B" in name)
