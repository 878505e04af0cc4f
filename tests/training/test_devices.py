"""Precision, 4-bit and device-count decisions on fakes of the hardware (this machine has no GPU)."""

import json
from dataclasses import asdict

import pytest

from modelfactory.training.devices import (
    CPU_ONLY,
    Capabilities,
    HardwareError,
    choose_precision,
    describe_hardware,
    detect_capabilities,
    offered_quantizations,
    plan_hardware,
    quantization_problem,
)

AMPERE_X4 = Capabilities(cuda=True, device_count=4, bf16=True, bitsandbytes=True, device_names=("NVIDIA A100",) * 4)
TURING = Capabilities(cuda=True, device_count=1, bf16=False, bitsandbytes=False, device_names=("Tesla T4",))

NO_CUDA = (
    "4-bit training (QLoRA) needs a CUDA GPU and this worker has none: choose 'none' for the 4-bit setting, or run "
    "the job on a GPU worker."
)
NO_BNB = (
    "4-bit training (QLoRA) needs the bitsandbytes package, which this worker does not have: choose 'none' for the "
    "4-bit setting, or install bitsandbytes on the GPU worker."
)


def test_precision_is_bf16_only_on_gpus_that_support_it():
    assert choose_precision(AMPERE_X4, "cuda") == "bf16"
    assert choose_precision(TURING, "cuda") == "fp32"
    assert choose_precision(AMPERE_X4, "cpu") == "fp32"
    assert choose_precision(CPU_ONLY, "cpu") == "fp32"


def test_qlora_needs_cuda_and_bitsandbytes():
    assert quantization_problem(CPU_ONLY, "4bit") == NO_CUDA
    assert quantization_problem(TURING, "4bit") == NO_BNB
    assert quantization_problem(AMPERE_X4, "4bit") is None
    assert quantization_problem(CPU_ONLY, "none") is None
    assert offered_quantizations(CPU_ONLY) == ("none",)
    assert offered_quantizations(TURING) == ("none",)
    assert offered_quantizations(AMPERE_X4) == ("none", "4bit")


def test_auto_uses_every_gpu_with_bf16():
    plan = plan_hardware(AMPERE_X4, quantization="4bit")
    assert (plan.device_type, plan.device_index, plan.world_size, plan.precision, plan.quantization) == (
        "cuda", None, 4, "bf16", "4bit")  # fmt: skip
    assert plan.distributed
    assert describe_hardware(plan, AMPERE_X4) == "4 GPUs (NVIDIA A100, bf16, 4-bit base model)"


def test_named_gpu_and_explicit_process_counts():
    one = plan_hardware(AMPERE_X4, preference="cuda:2")
    assert (one.device_type, one.device_index, one.world_size) == ("cuda", 2, 1)
    assert describe_hardware(one, AMPERE_X4) == "1 GPU (NVIDIA A100, bf16)"
    assert plan_hardware(AMPERE_X4, processes=2).world_size == 2
    assert describe_hardware(plan_hardware(TURING), TURING) == "1 GPU (Tesla T4, fp32)"
    with pytest.raises(HardwareError, match=r"^5 training processes need 5 GPUs; this worker has 4\.$"):
        plan_hardware(AMPERE_X4, processes=5)
    with pytest.raises(HardwareError, match=r"^This worker has no GPU number 4 \(it has 4\)\.$"):
        plan_hardware(AMPERE_X4, preference="cuda:4")


def test_cpu_plans():
    plan = plan_hardware(CPU_ONLY)
    assert (plan.device_type, plan.world_size, plan.precision, plan.distributed) == ("cpu", 1, "fp32", False)
    assert describe_hardware(plan, CPU_ONLY) == "this server's CPU"
    two = plan_hardware(CPU_ONLY, processes=2)
    assert (two.world_size, describe_hardware(two, CPU_ONLY)) == (2, "2 processes on this server's CPU")
    # a GPU machine told to train on its CPU: one process, no bf16, no 4-bit
    forced = plan_hardware(AMPERE_X4, preference="cpu")
    assert (forced.device_type, forced.world_size, forced.precision) == ("cpu", 1, "fp32")
    with pytest.raises(HardwareError) as caught:
        plan_hardware(AMPERE_X4, preference="cpu", quantization="4bit")
    assert str(caught.value) == NO_CUDA


def test_bad_requests_are_refused_clearly():
    with pytest.raises(HardwareError, match=r"^A CUDA GPU was requested but none is available on this worker\.$"):
        plan_hardware(CPU_ONLY, preference="cuda")
    with pytest.raises(HardwareError) as caught:
        plan_hardware(CPU_ONLY, quantization="4bit")
    assert str(caught.value) == NO_CUDA
    with pytest.raises(HardwareError) as caught:
        plan_hardware(TURING, quantization="4bit")
    assert str(caught.value) == NO_BNB
    with pytest.raises(HardwareError, match=r"^Unknown training device 'tpu': use auto, cpu, cuda or cuda:N\.$"):
        plan_hardware(CPU_ONLY, preference="tpu")
    with pytest.raises(HardwareError, match=r"^Unknown training device 'cuda:x'"):
        plan_hardware(AMPERE_X4, preference="cuda:x")
    with pytest.raises(HardwareError, match=r"^The number of training processes cannot be negative\.$"):
        plan_hardware(CPU_ONLY, processes=-1)


def test_this_machine_is_detected_as_it_is():
    import importlib.util

    import torch

    caps = detect_capabilities()
    assert caps.cuda == torch.cuda.is_available()
    assert caps.bitsandbytes == (importlib.util.find_spec("bitsandbytes") is not None)
    if not caps.cuda:
        assert (caps.device_count, caps.bf16, caps.device_names) == (0, False, ())


def test_capabilities_travel_through_a_heartbeat_report_and_back():
    from modelfactory.training.devices import capabilities_from_report, capabilities_report, detect_capabilities

    report = capabilities_report()
    assert json.loads(json.dumps(report)) == report  # stored in a JSON column
    assert capabilities_from_report(json.loads(json.dumps(report))) == detect_capabilities()
    gpu = Capabilities(cuda=True, device_count=2, bf16=True, bitsandbytes=True, device_names=("A", "B"))
    assert capabilities_from_report({**json.loads(json.dumps(asdict(gpu))), "future_field": 1}) == gpu


def test_the_weakest_worker_decides():
    from modelfactory.training.devices import weakest

    big = Capabilities(cuda=True, device_count=8, bf16=True, bitsandbytes=True, device_names=("H100",) * 8)
    small = Capabilities(cuda=True, device_count=1, bf16=True, bitsandbytes=True, device_names=("L4",))
    assert weakest([big, small]) == small
    assert weakest([big, CPU_ONLY]) == CPU_ONLY
