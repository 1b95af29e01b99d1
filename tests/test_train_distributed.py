"""Two gloo processes on CPU against one process on the same global batch: the distributed helpers,
and the losses that gather across ranks (values, feature gradients, DDP parameter gradients).

One module-scoped fixture spawns the two ranks once; each rank records its results to a file, and the
tests compare them with single-process references computed here.
"""
import math
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import train_data as D
from maskclip.errors import InputError
from maskclip.train import TrainConfig, distributed, train
from maskclip.train.losses import ContrastiveLoss, NTXentLoss, RILSLoss, SigmoidLoss, SoftDistillLoss

WORLD, BATCH = 2, 4  # per-rank batch; the global batch is WORLD * BATCH
CONTRASTIVE = [(True, True), (True, False), (False, True), (False, False)]  # (gather_with_grad, local_loss)
SOFT_ROWS = {"uneven": (3, 5), "one_empty": (0, 4)}  # masked patches per rank, SoftDistillLoss center


def global_data():
    """The same global batch on every process (fp64 features for the loss checks)."""
    g = torch.Generator().manual_seed(0)
    n = WORLD * BATCH

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    txt = r(n, 6)
    near = torch.tensor([1, 1, 2, 3, 4, 6, 6, 7])  # images 0 and 5 sit next to another image's caption
    return {
        "img": F.normalize(r(n, 6), dim=-1), "txt": F.normalize(txt, dim=-1),
        "scale": torch.tensor(5.0, dtype=torch.float64),
        "z1": r(n, 5), "z2": r(n, 5),
        "pred": r(n, 3, 6), "target": r(n, 3, 6), "mask": r(n, 3) > -0.3,
        "rils_img": txt[near] + 0.05 * r(n, 6), "rils_txt": txt,
        "teacher": r(sum(SOFT_ROWS["uneven"]), 7),
        "x": r(n, 7).float(), "t": r(n, 5).float(),
    }


class TinyDualEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Linear(7, 6)
        self.text = nn.Linear(5, 6)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x, t):
        return F.normalize(self.image(x), dim=-1), F.normalize(self.text(t), dim=-1), self.logit_scale.exp()


def local(x, rank):
    return x[rank * BATCH:(rank + 1) * BATCH]


def feature_grads(loss_fn, img, txt, scale):
    img, txt, scale = (v.clone().requires_grad_() for v in (img, txt, scale))
    loss, metrics = loss_fn(img, txt, scale)
    return (loss.detach(), *torch.autograd.grad(loss, [img, txt, scale])), metrics


def parameter_grads(loss_fn, model, x, t):
    loss, _ = loss_fn(*model(x, t))
    loss.backward()
    plain = model.module if isinstance(model, DistributedDataParallel) else model
    return {name: p.grad.clone() for name, p in plain.named_parameters()}


def soft_center(rows):
    loss_fn = SoftDistillLoss(num_prototypes=7).double()
    return loss_fn(torch.zeros_like(rows), rows)[0], loss_fn.center


def rank_results(rank):
    d, out = global_data(), {}
    info = distributed.init_distributed()
    out["info"] = (info.rank, info.world_size, info.local_rank, str(info.device), info.is_main,
                   distributed.rank(), distributed.world_size())
    out["sum"] = distributed.all_reduce_sum(torch.tensor([rank + 1.0]))
    out["mean"] = distributed.all_reduce_mean(torch.tensor([rank + 1.0]))
    out["broadcast"] = distributed.broadcast_object({"from": rank})
    for flags in CONTRASTIVE:
        loss_fn = ContrastiveLoss(*flags)
        out["features", flags] = feature_grads(loss_fn, local(d["img"], rank), local(d["txt"], rank), d["scale"])
        model = DistributedDataParallel(TinyDualEncoder())
        out["ddp", flags] = parameter_grads(loss_fn, model, local(d["x"], rank), local(d["t"], rank))
    z1, z2 = (local(d[k], rank).clone().requires_grad_() for k in ("z1", "z2"))
    loss, _ = NTXentLoss(temperature=0.2)(z1, z2)
    out["ntxent"] = (loss.detach(), *torch.autograd.grad(loss, [z1, z2]))
    loss, metrics = RILSLoss()(*(local(d[k], rank) for k in ("pred", "target", "mask", "rils_img", "rils_txt")))
    out["rils"] = (loss, metrics)
    for case, counts in SOFT_ROWS.items():
        start = sum(counts[:rank])
        out["soft", case] = soft_center(d["teacher"][start:start + counts[rank]])
    try:
        distributed.gather(torch.zeros(3 + rank, 2))
    except InputError as err:
        out["unequal"] = str(err)
    return out


def worker(rank, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        torch.save(rank_results(rank), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("ranks"))
    context = mp.start_processes(worker, args=(free_port(), out_dir), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("the 2-process gloo run did not finish in 180 s")
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


def assert_close(a, b, tol):
    assert (a - b).abs().max().item() < tol, (a, b)


# --- the helpers -------------------------------------------------------------------------------

def test_init_distributed_reads_torchrun_env_and_helpers_reduce_across_ranks(ranks):
    for r, out in enumerate(ranks):
        assert out["info"] == (r, WORLD, r, "cpu", r == 0, r, WORLD)
        assert out["sum"].item() == 3.0 and out["mean"].item() == 1.5 and out["broadcast"] == {"from": 0}


def test_without_process_group_everything_is_single_process(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = distributed.init_distributed()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (0, 1, 0, True)
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather(x) is x and distributed.gather(x, with_grad=False) is x
    assert torch.equal(distributed.all_reduce_mean(x), x) and not distributed.all_reduce_sum(x).requires_grad
    assert distributed.broadcast_object([1]) == [1] and (distributed.rank(), distributed.world_size()) == (0, 1)


def test_init_distributed_explains_an_incomplete_launcher_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(InputError, match="RANK must be set"):
        distributed.init_distributed()


def test_gather_refuses_unequal_batch_sizes_on_every_rank(ranks):
    for out in ranks:
        assert "same shape on every rank" in out["unequal"] and "[(3, 2), (4, 2)]" in out["unequal"]


# --- contrastive -------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [(True, True), (True, False)])
def test_contrastive_with_gradient_gather_equals_one_process_on_the_global_batch(ranks, flags):
    d = global_data()
    single, single_metrics = feature_grads(ContrastiveLoss(*flags), d["img"], d["txt"], d["scale"])
    loss, g_img, g_txt, g_scale = single
    per_rank = [out["features", flags] for out in ranks]
    assert_close(sum(res[0][0] for res in per_rank) / WORLD, loss, 1e-12)
    for r, ((_, r_img, r_txt, r_scale), _) in enumerate(per_rank):
        assert_close(r_img / WORLD, local(g_img, r), 1e-12)
        assert_close(r_txt / WORLD, local(g_txt, r), 1e-12)
    assert_close(sum(res[0][3] for res in per_rank) / WORLD, g_scale, 1e-12)
    assert_close(sum(res[1]["acc_i2t"] for res in per_rank) / WORLD, single_metrics["acc_i2t"], 1e-12)


@pytest.mark.parametrize("flags", [(True, True), (True, False)])
def test_contrastive_ddp_parameter_gradients_equal_one_process_on_the_global_batch(ranks, flags):
    d = global_data()
    single = parameter_grads(ContrastiveLoss(*flags), TinyDualEncoder(), d["x"], d["t"])
    for out in ranks:
        assert out["ddp", flags].keys() == single.keys()
        for name, grad in single.items():  # fp32: 1e-6 relative to the largest entry (logit scale's is ~8)
            assert_close(out["ddp", flags][name], grad, 1e-6 * max(1.0, grad.abs().max().item()))


def test_contrastive_without_gradient_gather_does_not_give_one_process_gradients(ranks):
    """SLIP's choice (other ranks' features as constants) drops the cross-rank terms of the gradient:
    with local rows it differs from the global-batch gradient; with full logits every rank computes the
    whole loss but only its own rows get gradient, so after DDP's averaging the encoders' gradients are
    1/WORLD of the global-batch ones while the logit scale's (used whole on every rank) is exact."""
    d = global_data()
    single = parameter_grads(ContrastiveLoss(), TinyDualEncoder(), d["x"], d["t"])
    local_rows = ranks[0]["ddp", (False, True)]
    assert max((local_rows[k] - single[k]).abs().max().item() for k in single) > 1e-3
    full = ranks[0]["ddp", (False, False)]
    for name, grad in single.items():
        scale = 1 if name == "logit_scale" else WORLD
        assert_close(full[name] * scale, grad, 1e-6 * max(1.0, grad.abs().max().item()))
    loss = feature_grads(ContrastiveLoss(), d["img"], d["txt"], d["scale"])[0][0]
    assert_close(sum(out["features", (False, True)][0][0] for out in ranks) / WORLD, loss, 1e-12)


# --- the sigmoid loss: neighbour exchange on 2 and 3 ranks ----------------------------------------

# 2: one exchange from one side; 3: one round of exchanges in both directions; 4: a round, then blocks
# passed on from one side (a block's gradient travels back over two exchanges)
SIGLIP_WORLDS = (2, 3, 4)


def siglip_data(world):
    """fp64 features of a global batch of world x BATCH; bias -3 so that the negatives weigh in."""
    g = torch.Generator().manual_seed(1)
    n = world * BATCH

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    txt = F.normalize(r(n, 6), dim=-1)
    return {"img": F.normalize(txt + 0.7 * r(n, 6), dim=-1), "txt": txt,
            "scale": torch.tensor(10.0, dtype=torch.float64), "bias": torch.tensor(-3.0, dtype=torch.float64),
            "x": r(n, 7), "t": r(n, 5)}


class TinySigmoidEncoder(TinyDualEncoder):
    def __init__(self):
        super().__init__()
        self.logit_bias = nn.Parameter(torch.tensor(-3.0))
        self.double()

    def forward(self, x, t):
        return (*super().forward(x, t), self.logit_bias)


def sigmoid_grads(img, txt, scale, bias):
    leaves = [v.clone().requires_grad_() for v in (img, txt, scale, bias)]
    loss, metrics = SigmoidLoss()(*leaves)
    return (loss.detach(), *torch.autograd.grad(loss, leaves)), metrics


def siglip_worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    d, out = siglip_data(world), {}
    try:
        distributed.init_distributed()
        part = slice(rank * BATCH, (rank + 1) * BATCH)
        out["features"] = sigmoid_grads(d["img"][part], d["txt"][part], d["scale"], d["bias"])
        model = DistributedDataParallel(TinySigmoidEncoder())
        loss, _ = SigmoidLoss()(*model(d["x"][part], d["t"][part]))
        loss.backward()
        out["ddp"] = {name: p.grad.clone() for name, p in model.module.named_parameters()}
        try:
            SigmoidLoss()(*(torch.zeros(2 + rank, 3) for _ in range(2)), torch.tensor(1.0), torch.tensor(0.0))
        except InputError as err:
            out["unequal"] = str(err)
        torch.save(out, os.path.join(out_dir, f"siglip{rank}.pt"))
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module", params=SIGLIP_WORLDS, ids=lambda w: f"{w}-ranks")
def siglip_ranks(request, tmp_path_factory):
    world, out_dir = request.param, str(tmp_path_factory.mktemp(f"siglip{request.param}"))
    context = mp.start_processes(siglip_worker, args=(world, free_port(), out_dir), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail(f"the {world}-process gloo run did not finish in 180 s")
    return world, [torch.load(os.path.join(out_dir, f"siglip{r}.pt"), weights_only=False) for r in range(world)]


def test_sigmoid_loss_with_neighbour_exchange_equals_one_process_on_the_global_batch(siglip_ranks):
    world, ranks = siglip_ranks
    d = siglip_data(world)
    (loss, g_img, g_txt, g_scale, g_bias), metrics = sigmoid_grads(d["img"], d["txt"], d["scale"], d["bias"])
    assert 0 < metrics["acc_i2t"].item() < 1  # some images retrieve their caption, some not: a real check
    per_rank = [out["features"] for out in ranks]
    assert_close(sum(res[0][0] for res in per_rank) / world, loss, 1e-12 * loss.abs().item())
    for r, ((_, r_img, r_txt, _, _), _) in enumerate(per_rank):
        part = slice(r * BATCH, (r + 1) * BATCH)
        assert_close(r_img / world, g_img[part], 1e-12 * g_img.abs().max().item())
        assert_close(r_txt / world, g_txt[part], 1e-12 * g_txt.abs().max().item())
    assert_close(sum(res[0][3] for res in per_rank) / world, g_scale, 1e-12 * g_scale.abs().item())
    assert_close(sum(res[0][4] for res in per_rank) / world, g_bias, 1e-12 * g_bias.abs().item())
    assert_close(sum(res[1]["acc_i2t"] for res in per_rank) / world, metrics["acc_i2t"], 1e-12)


def test_sigmoid_loss_refuses_unequal_batch_sizes_on_every_rank(siglip_ranks):
    world, ranks = siglip_ranks
    shapes = str([(2 + r, 3) for r in range(world)])
    for out in ranks:
        assert "the neighbour exchange needs the same shape on every rank" in out["unequal"]
        assert shapes in out["unequal"]


def test_sigmoid_loss_ddp_parameter_gradients_equal_one_process_on_the_global_batch(siglip_ranks):
    world, ranks = siglip_ranks
    d = siglip_data(world)
    model = TinySigmoidEncoder()
    SigmoidLoss()(*model(d["x"], d["t"]))[0].backward()
    for out in ranks:
        assert out["ddp"].keys() == {name for name, _ in model.named_parameters()}
        for name, p in model.named_parameters():
            assert_close(out["ddp"][name], p.grad, 1e-10 * max(1.0, p.grad.abs().max().item()))


# --- NT-Xent, RILS, soft distillation ------------------------------------------------------------

def test_ntxent_in_two_processes_equals_one_process(ranks):
    d = global_data()
    z1, z2 = d["z1"].clone().requires_grad_(), d["z2"].clone().requires_grad_()
    loss, _ = NTXentLoss(temperature=0.2)(z1, z2)
    g1, g2 = torch.autograd.grad(loss, [z1, z2])
    assert_close(sum(out["ntxent"][0] for out in ranks) / WORLD, loss, 1e-12)
    for r, out in enumerate(ranks):
        assert_close(out["ntxent"][1] / WORLD, local(g1, r), 1e-12)
        assert_close(out["ntxent"][2] / WORLD, local(g2, r), 1e-12)


def test_rils_in_two_processes_retrieves_against_the_global_batch_like_one_process(ranks):
    d = global_data()
    loss, metrics = RILSLoss()(*(d[k] for k in ("pred", "target", "mask", "rils_img", "rils_txt")))
    assert metrics["frac_correct"].item() == 0.75  # images 0 and 5 retrieve a neighbour's caption
    counts = [out["rils"][1]["num_patches"] for out in ranks]
    assert sum(counts).item() == metrics["num_patches"].item()
    assert sum(out["rils"][1]["frac_correct"] for out in ranks).item() / WORLD == 0.75
    # Each rank averages over its own patches; weighting by their counts recovers the global average.
    counts = [c.double() for c in counts]
    summed = sum(out["rils"][0] * (c + 1e-6) for out, c in zip(ranks, counts))
    assert_close(summed / (sum(counts) + 1e-6), loss, 1e-12)


@pytest.mark.parametrize("case", list(SOFT_ROWS))
def test_soft_distill_center_update_uses_the_global_batch(ranks, case):
    rows = global_data()["teacher"][:sum(SOFT_ROWS[case])]
    _, center = soft_center(rows)
    for out in ranks:
        loss, rank_center = out["soft", case]
        assert math.isfinite(loss.item())
        assert_close(rank_center, center, 1e-12)


# --- DDP training with BEiT mask tokens (issue 11, 4a) ---------------------------------------------

TOKEN_MODE = [("maskclip", "maskclip"), ("clip_mae", "mae"), ("rils", "rils")]  # (recipe, config section)
# run name -> (recipe, overrides): the mask-token runs, and the sigmoid loss with cached accumulation
DDP_RUNS = {**{recipe: (recipe, {f"{section}.masking.mode": "token"}) for recipe, section in TOKEN_MODE},
            "siglip-cached": ("clip", {"loss": "siglip", "accum_steps": 2})}


def train_worker(rank, ports, shards, out_dir):
    """Each recipe with masking.mode=token for 3 DDP steps; a parameter without a gradient made the
    second step raise "Expected to have finished reduction in the prior iteration". Then CLIP with the
    sigmoid loss and cached accumulation (a no-grad pass through DDP before each micro-batch's)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    results = {}
    for (name, (recipe, overrides)), port in zip(DDP_RUNS.items(), ports):
        os.environ["MASTER_PORT"] = str(port)
        cfg = TrainConfig.from_preset("tiny", recipe, {
            "data": shards, "samples_per_epoch": 32, "batch_size": 16, "steps": 3, "log_every": 1,
            "ckpt_every": 1000, "progress": False, "workers": 0, **overrides})
        try:
            results[name] = train(cfg, os.path.join(out_dir, name))
        except Exception as err:  # recorded: a failing rank must not leave the other waiting
            results[name] = repr(err)
    torch.save(results, os.path.join(out_dir, f"train{rank}.pt"))


@pytest.fixture(scope="module")
def token_runs(tmp_path_factory):
    shards = D.write_shards(tmp_path_factory.mktemp("shards"), D.make_items(32, size=40, seed=0), per_shard=8)
    out_dir = str(tmp_path_factory.mktemp("runs"))
    ports = [free_port() for _ in DDP_RUNS]
    context = mp.start_processes(train_worker, args=(ports, shards, out_dir), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 600
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("the 2-process DDP training did not finish in 600 s")
    return [torch.load(os.path.join(out_dir, f"train{r}.pt"), weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r, _ in TOKEN_MODE])
def test_ddp_trains_with_mask_tokens(token_runs, recipe):
    for rank, results in enumerate(token_runs):
        summary = results[recipe]
        assert isinstance(summary, dict), f"rank {rank}, {recipe} with masking.mode=token: {summary}"
        assert summary["steps"] == 3 and summary["nonfinite"] == 0


@pytest.mark.slow
def test_ddp_trains_the_sigmoid_loss_with_cached_accumulation(token_runs):
    for rank, results in enumerate(token_runs):
        summary = results["siglip-cached"]
        assert isinstance(summary, dict), f"rank {rank}, siglip with accum_mode=cached: {summary}"
        assert summary["steps"] == 3 and summary["nonfinite"] == 0
