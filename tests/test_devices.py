"""Where trials train and time: the device decided on the worker, and requests the cluster can never give refused
at start (CPU tests of the code a GPU cluster runs; the CUDA paths themselves are in test_cuda.py)."""
import pytest
import torch

from autoprune import AutopruneError
from autoprune.config import load_config
from autoprune.devices import worker_device
from autoprune.searching.capacity import (
    ClusterShape,
    await_capacity,
    check_capacity,
    latency_device,
    latency_node,
    wait_for_gpu_node,
)
from autoprune.tasks.training import autocast_dtype

HEAD_CPU = {"NodeID": "head", "Resources": {"CPU": 4.0}, "head": True}
HEAD_GPU = {"NodeID": "head", "Resources": {"CPU": 8.0, "GPU": 1.0}, "head": True}
WORKER_GPU = {"NodeID": "w1", "Resources": {"CPU": 4.0, "GPU": 1.0}, "head": False}


def test_a_trial_trains_on_cuda_only_when_ray_gave_it_a_gpu():
    assert worker_device([], cuda_available=True) == "cpu"  # Ray 2.60 leaves the node's GPUs visible to it
    assert worker_device(["0"], cuda_available=True) == "cuda"
    assert worker_device(None, cuda_available=True) == "cuda"  # outside Ray: the best local device
    assert worker_device(None, cuda_available=False) == "cpu"
    with pytest.raises(AutopruneError, match="Ray gave this trial GPU 0 .* no CUDA device.*resources.gpu: 0"):
        worker_device([0], cuda_available=False)


def config(*overrides):
    return load_config(None, list(overrides))


@pytest.mark.parametrize("overrides, shape, needle", [
    (["resources.gpu=0.5"], [HEAD_CPU], "config key 'resources.gpu': each trial asks for 0.5 GPU, but no node of "
                                        "the Ray cluster has a GPU"),
    (["resources.gpu=2"], [HEAD_CPU, WORKER_GPU], "config key 'resources.gpu': each trial asks for 2 GPU, but no "
                                                  "node of the Ray cluster has more than 1"),
    (["resources.cpu=6", "resources.gpu=0.25"], [HEAD_CPU, WORKER_GPU], "config key 'resources.cpu': each trial "
                                                                         "asks for 6 CPUs beside 0.25 GPU"),
    (["latency.device=cuda"], [HEAD_CPU], "config key 'latency.device': candidates are timed on CUDA, but no node "
                                          "of the Ray cluster has a GPU: set latency.device: cpu"),
    (["latency.device=cuda", "latency.target=edge"], [HEAD_GPU, {**WORKER_GPU, "Resources": {"CPU": 1.0, "edge": 1}}],
     "the node advertising 'edge' has no GPU"),
])
def test_requests_the_cluster_can_never_give_are_refused_naming_the_key(overrides, shape, needle):
    with pytest.raises(AutopruneError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_capacity(config(*overrides), ClusterShape(tuple(shape)))


def test_what_the_cluster_or_its_autoscaler_can_give_passes():
    assert check_capacity(config("resources.gpu=0.25"), ClusterShape((HEAD_CPU, WORKER_GPU))) == []
    assert check_capacity(config(), ClusterShape((HEAD_CPU,))) == []
    # a GPU node type the autoscaler may add: no error, a note (Tune's request makes it add one)
    notes = check_capacity(config("resources.gpu=0.25"), ClusterShape((HEAD_CPU,), ({"CPU": 4, "GPU": 1},)))
    assert len(notes) == 2 and "the autoscaler adds one" in notes[0] and "GPU" in notes[1]
    # an autoscaler that says nothing of its node types may add anything
    assert check_capacity(config("resources.gpu=1"), ClusterShape((HEAD_CPU,), autoscaler_unknown=True))


def test_latency_is_timed_where_trials_train_unless_told():
    assert latency_device(config()) == "cpu"
    assert latency_device(config("resources.gpu=0.25")) == "cuda"
    assert latency_device(config("resources.gpu=0.25", "latency.device=cpu")) == "cpu"
    assert latency_device(config("resources.gpu=0.25", "latency.target=edge")) == "cpu"  # the target's CPU
    assert latency_node(ClusterShape((HEAD_CPU, WORKER_GPU))) == "w1"  # a CPU head: the GPU worker
    assert latency_node(ClusterShape((WORKER_GPU, HEAD_GPU))) == "head"  # the head when it has a GPU
    assert latency_node(ClusterShape((HEAD_CPU,))) is None


def test_a_gpu_node_to_time_on_is_requested_and_awaited_or_the_wait_ends_naming_the_key():
    shapes = iter([ClusterShape((HEAD_CPU,)), ClusterShape((HEAD_CPU,)), ClusterShape((HEAD_CPU, WORKER_GPU))])
    asked = []
    node = wait_for_gpu_node(config("latency.device=cuda"), print, lambda: next(shapes), lambda: asked.append(1),
                             poll_s=0)
    assert node == ("w1", True) and asked == [1]
    with pytest.raises(AutopruneError, match="config key 'latency.device': no node with a GPU joined"):
        wait_for_gpu_node(config("latency.device=cuda"), print, lambda: ClusterShape((HEAD_CPU,)), lambda: None,
                          timeout_s=0, poll_s=0)


def test_mixed_precision_is_bf16_on_gpus_that_have_it_else_fp16_and_fp32_on_cpus():
    assert autocast_dtype("cuda", "auto", bf16_supported=True) == torch.bfloat16
    assert autocast_dtype("cuda", "auto", bf16_supported=False) == torch.float16
    assert autocast_dtype("cpu", "auto", bf16_supported=False) is None
    assert autocast_dtype("cpu", "bf16", bf16_supported=False) == torch.bfloat16
    assert autocast_dtype("cuda", "fp32", bf16_supported=True) is None
    with pytest.raises(AutopruneError, match="precision must be one of"):
        autocast_dtype("cpu", "fp8", bf16_supported=False)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_in_mixed_precision_runs_its_own_path_on_cpu(precision):
    from torch import nn

    from autoprune.tasks.training import TrainConfig, train

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    before = [p.detach().clone() for p in model.parameters()]
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(4)]
    progress: dict = {}
    losses = train(model, batches, TrainConfig(epochs=1, lr=0.05, precision=precision), progress=progress)
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every parameter stepped
    assert bool(progress["scaler"]) == (precision == "fp16")  # fp16 trains through a gradient scaler, resumably
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights in fp32


def test_a_running_cluster_gets_time_for_its_gpu_workers_to_join():
    shapes = iter([ClusterShape((HEAD_CPU,)), ClusterShape((HEAD_CPU, WORKER_GPU))])
    lines: list = []
    assert await_capacity(config("resources.gpu=0.25"), lines.append, 60, lambda: next(shapes), poll_s=0) == []
    assert len(lines) == 1 and "waiting up to 60 s for nodes to join" in lines[0]
    with pytest.raises(AutopruneError, match="resources.gpu"):  # none joins: the same error, after the wait
        await_capacity(config("resources.gpu=0.25"), lines.append, 0, lambda: ClusterShape((HEAD_CPU,)), poll_s=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: timing on it is valid")
def test_timing_on_cuda_in_this_process_without_cuda_is_refused_naming_the_key():
    from autoprune.devices import check_local_latency

    check_local_latency("cpu", "'autoprune space'")
    with pytest.raises(AutopruneError, match="config key 'latency.device': 'autoprune space' times on CUDA here"):
        check_local_latency("cuda", "'autoprune space'")


def test_a_cluster_launchers_node_types_say_what_its_autoscaler_can_add(tmp_path):
    from autoprune.searching.capacity import launcher_node_types

    assert launcher_node_types(tmp_path / "none.yaml") is None  # no `ray up` head: a local instance adds nothing
    path = tmp_path / "bootstrap.yaml"
    path.write_text("max_workers: 4\navailable_node_types:\n  head: {resources: {CPU: 0}, max_workers: 0}\n"
                    "  gpu_worker: {min_workers: 0, max_workers: 4, resources: {CPU: 4, GPU: 1}}\n")
    scalable, unknown = launcher_node_types(path)
    assert scalable == [{"CPU": 4.0, "GPU": 1.0}] and not unknown
    notes = check_capacity(config("resources.gpu=0.25"), ClusterShape((HEAD_CPU,), tuple(scalable)))
    assert "the autoscaler adds one" in notes[0]
    with pytest.raises(AutopruneError, match="no node of the Ray cluster has more than 1"):
        check_capacity(config("resources.gpu=2"), ClusterShape((HEAD_CPU,), tuple(scalable)))
    path.write_text("available_node_types:\n  gpu_worker: {max_workers: 2, resources: {}}\n")
    assert launcher_node_types(path) == ([], True)  # resources left to detection: anything may come


def test_fp16_training_resumes_with_its_gradient_scaler_from_a_weights_only_checkpoint(tmp_path):
    from torch import nn

    from autoprune.tasks.training import TrainConfig, train

    def fresh():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    batches = [(torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(i)), torch.tensor([0, 1, 2, 0]))
               for i in range(3)]
    config = TrainConfig(epochs=2, lr=0.05, precision="fp16")
    whole = fresh()
    train(whole, batches, config)
    # the same run stopped after epoch 1, its progress saved as a trial checkpoint is, then resumed from the file
    stopped, saved = fresh(), {}

    def stop(epoch, loss):
        torch.save({"progress": dict(saved), "state": stopped.state_dict()}, tmp_path / "ckpt.pt")
        raise StopIteration

    with pytest.raises(StopIteration):
        train(stopped, batches, config, on_epoch=stop, progress=saved)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["progress"]["scaler"]["scale"] > 0
    resumed = fresh()
    resumed.load_state_dict(ckpt["state"])
    train(resumed, batches, config, progress=ckpt["progress"])
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)  # as if it had never stopped


def test_the_channels_last_layout_is_undone_even_when_training_fails(monkeypatch):
    from torch import nn

    import autoprune.tasks.training as training

    monkeypatch.setattr(training, "_channels_last_helps", lambda model, device: True)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))  # 6x6 input: the Linear cannot fit
    with pytest.raises(RuntimeError):
        training.train(model, [(torch.randn(2, 1, 6, 6), torch.tensor([0, 1]))], training.TrainConfig(epochs=1))
    assert model[0].weight.is_contiguous()


def test_a_base_that_fails_to_train_on_the_cluster_is_one_line_naming_the_cause(ray_local, embedded):
    from torch import nn

    from autoprune.searching.base_training import fit
    from autoprune.tasks.training import TrainConfig

    with pytest.raises(AutopruneError) as e:  # a Linear of 3 inputs cannot take 28x28 images
        fit(nn.Linear(3, 2), embedded, TrainConfig(epochs=0.01), 64, print, want_gpu=False)
    assert str(e.value).startswith("training the base model failed on the cluster: RuntimeError: ")
    assert "\n" not in str(e.value)
