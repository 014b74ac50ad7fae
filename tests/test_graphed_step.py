"""The linear trainer's step replayed from a graph (config ``cuda_graphs``, issue 11).

On the CPU a stand-in records the step function and replays it (clearing the gradients
first, as a CUDA graph's replay overwrites the ones it allocated when captured): the
replayed run must train exactly as the same trainer stepping eagerly, through the
warm-up (eager), the capture, the replays and the key changes (a smaller last batch, a
new epoch). The real CUDA graph is checked by the CUDA test at the end (bench/gpu_check.sh
runs it; skipped here without a GPU).
"""

import pytest
import torch

from vsc.config import ConfigError, build_config
from vsc.graphed_step import GraphedStep
from vsc.train import Trainer

SMALL = dict(n_train=380, n_val=100, batch_size=50, epochs=2, num_samples=4,
             prior="thresholded_laplacian", learn_threshold=True,
             warmup_step=0.5, warmup_delay=0)   # the warm-up ends at step 2


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("patches"))


def config(cache_dir, **values):
    return build_config({**SMALL, "cache_dir": cache_dir, **values})


def stand_in_capture(trainer_ref):
    def capture(step):
        def replay():
            trainer_ref[0].zero_grad()
            step()
        return replay
    return capture


def parameters(trainer):
    return {name: p.detach().clone() for name, p in
            [*trainer.generator.named_parameters(), *trainer.encoder.named_parameters()]}


def run_epochs(trainer):
    for epoch in range(trainer.config.epochs):
        order = trainer.epoch_order(epoch)
        for x in trainer.train_x[order].split(trainer.config.batch_size):
            trainer.train_step(x)
        trainer.read_monitor()


def test_the_replayed_step_trains_exactly_as_the_eager_step(tmp_path, cache_dir):
    runs = {}
    for name in ("replayed", "eager"):
        ref = []
        trainer = Trainer(config(cache_dir), tmp_path / name, progress=False,
                          capture=stand_in_capture(ref))
        ref.append(trainer)
        if name == "eager":
            trainer.graphed_step.WARMUP_STEPS = 10**9      # never captures
        run_epochs(trainer)
        runs[name] = trainer
    replayed, eager = runs["replayed"], runs["eager"]
    # 8 batches per epoch, the last of 30 rows: captured after the warm-up (steps 0-1
    # change the key) and again after each batch-shape change.
    assert replayed.graphed_step.captures == 2 and replayed.graphed_step.replays == 6
    assert eager.graphed_step.replays == 0
    got, expected = parameters(replayed), parameters(eager)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert replayed.accumulator == eager.accumulator
    assert isinstance(replayed.optimizers["encoder"].param_groups[0]["lr"], torch.Tensor)


def test_the_graphable_optimizers_train_as_the_default_ones(tmp_path, cache_dir):
    """cuda_graphs builds fused SGD with tensor learning rates; the trajectory is the
    default one up to float32 rounding of the learning rate."""
    # (a Trainer seeds torch's generator: build each just before it runs)
    graphable = Trainer(config(cache_dir, epochs=1), tmp_path / "g", progress=False,
                        capture=stand_in_capture([None]))
    graphable.graphed_step.WARMUP_STEPS = 10**9
    run_epochs(graphable)
    default = Trainer(config(cache_dir, epochs=1), tmp_path / "d", progress=False)
    run_epochs(default)
    got, expected = parameters(graphable), parameters(default)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_the_key_follows_every_number_baked_into_a_graph(tmp_path, cache_dir):
    trainer = Trainer(config(cache_dir), tmp_path, progress=False,
                      capture=stand_in_capture([None]))
    step = GraphedStep(trainer)
    x = trainer.train_x[:50]
    key = step.key_of(x)
    assert step.key_of(trainer.train_x[:30]) != key                 # batch shape
    trainer.step = 1
    assert step.key_of(x) != key                                    # warm-up
    trainer.step = 10
    steady = step.key_of(x)
    trainer.step = 11
    assert step.key_of(x) == steady                                 # warm-up over
    trainer.optimizers["encoder"].param_groups[0]["momentum"] = 0.8
    assert step.key_of(x) != steady                                 # OneCycleLR's momentum


def test_cuda_graphs_is_refused_where_it_cannot_run(cache_dir):
    with pytest.raises(ConfigError, match="cuda_graphs=true needs device='cuda'"):
        config(cache_dir, cuda_graphs=True)
    with pytest.raises(ConfigError, match="cuda_graphs=true needs method='variational'"):
        config(cache_dir, cuda_graphs=True, method="fista", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_graph_step_trains_as_the_eager_step_on_the_gpu(tmp_path, cache_dir):
    runs = {}
    for graphs in (True, False):
        trainer = Trainer(config(cache_dir, device="cuda", cuda_graphs=graphs),
                          tmp_path / str(graphs), progress=False)
        torch.manual_seed(0)
        run_epochs(trainer)
        runs[graphs] = trainer
    assert runs[True].graphed_step.replays > 0
    got, expected = parameters(runs[True]), parameters(runs[False])
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-4, msg=name)
