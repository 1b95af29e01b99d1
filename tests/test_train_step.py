"""The step runner: no host syncs between logging steps, and steps skipped on the device (non-finite
losses, fp16 overflows) leave every weight, the optimizer and the EMA teacher as they were."""
import contextlib
import copy

import pytest
import torch

from maskclip.train import RECIPES, TrainConfig
from maskclip.train import distributed as dist
from maskclip.train.loop import Plan, RunState, build_model
from maskclip.train.optim import build_optimizer
from maskclip.train.recipes import build_recipe
from maskclip.train.step import StepRunner

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH, STEPS = 8, 12


def make_runner(name, scaler=None, **overrides):
    cfg = TrainConfig.from_preset("tiny", name, {"batch_size": BATCH, "steps": STEPS, "progress": False,
                                                 **overrides})
    torch.manual_seed(0)
    recipe = build_recipe(build_model(cfg), cfg).train()
    optimizer = build_optimizer(recipe, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
    info = dist.DistInfo(0, 1, 0, torch.device("cpu"))
    return StepRunner(recipe, recipe, optimizer, scaler, cfg, Plan(BATCH, STEPS, STEPS, 2), info)


def loader_batch(recipe, seed):
    """What the data loader yields: the model inputs and its bookkeeping, host tensors."""
    g = torch.Generator().manual_seed(seed)
    s = recipe.model.config.preprocess.image_size
    lengths = torch.randint(4, 12, (BATCH,), generator=g).tolist()
    text = torch.zeros(BATCH, recipe.model.config.text.context_length, dtype=torch.long)
    for i, n in enumerate(lengths):
        text[i, 0], text[i, 1:n - 1], text[i, n - 1] = 49406, torch.randint(256, 4000, (n - 2,), generator=g), 49407
    batch = {"image": torch.randn(BATCH, 3, s, s, generator=g), "text": text,
             "slot": torch.tensor(0), "consumed": torch.tensor(BATCH), "skipped": torch.tensor(0)}
    if recipe.extra_views:
        batch["views"] = torch.randn(recipe.extra_views, BATCH, 3, s, s, generator=g)
    return batch


def snapshot(runner):
    return ({k: v.clone() for k, v in runner.recipe.state_dict().items()},
            copy.deepcopy(runner.optimizer.state_dict()["state"]))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- host syncs (issue 11, 4e) -----------------------------------------------------------------------

# What makes the host wait for a device: reading a value back, or an op whose output size depends
# on the data (a bool-mask index, nonzero).
_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero",
          "masked_select")


@contextlib.contextmanager
def counting_syncs(monkeypatch):
    calls, on = [], [True]

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            if on[0]:
                calls.append(name)
            return original(self, *args, **kwargs)
        return counted

    for name in _READS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    getitem = torch.Tensor.__getitem__

    def indexed(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if on[0] and any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            calls.append("bool-index")
        return getitem(self, index)
    monkeypatch.setattr(torch.Tensor, "__getitem__", indexed)

    def host_side(prepare):  # Recipe.prepare runs on the loader's host tensors, before they move
        def run(*args, **kwargs):
            on[0] = False
            try:
                return prepare(*args, **kwargs)
            finally:
                on[0] = True
        return run
    yield calls, host_side
    on[0] = False


@pytest.mark.parametrize("name", RECIPES)
def test_steps_between_logging_steps_read_nothing_back_and_a_sync_reads_once(name, monkeypatch):
    runner = make_runner(name, **({"patch_dropout": 0.5} if name == "clip" else {}))
    state = RunState(offsets=[0])
    batches = [loader_batch(runner.recipe, s) for s in range(4)]
    runner.run([batches[3]], state)  # the first step builds the optimizer state
    state.step += 1
    with counting_syncs(monkeypatch) as (calls, host_side):
        runner.recipe.prepare = host_side(runner.recipe.prepare)
        for b in batches[:3]:
            runner.run([b], state)
            state.step += 1
        assert calls == [], f"{name}: host syncs in 3 steps: {calls}"
        messages, _ = runner.sync(state)
        assert calls == ["tolist"] and messages == [] and state.step == 4
    means, steps = runner.record()
    assert steps == 4 and means["loss"] == means["loss"] and "grad_norm" in means and means["lr"] > 0


@pytest.mark.parametrize("name", RECIPES)
def test_cached_accumulation_reads_nothing_back_either(name, monkeypatch):
    """accum_mode=cached: the caching pass and the recomputation queue work without reading it back."""
    runner = make_runner(name, accum_steps=2, loss="siglip")
    state = RunState(offsets=[0])
    batches = [loader_batch(runner.recipe, s) for s in range(4)]
    runner.run(batches[2:], state)  # the first step builds the optimizer state
    state.step += 1
    with counting_syncs(monkeypatch) as (calls, host_side):
        runner.recipe.prepare = host_side(runner.recipe.prepare)
        runner.run(batches[:2], state)
        state.step += 1
        assert calls == [], f"{name}: host syncs in a cached step: {calls}"
        messages, _ = runner.sync(state)
        assert calls == ["tolist"] and messages == [] and state.step == 2
    means, _ = runner.record()
    assert means["loss_clip"] == means["loss_clip"] and means["logit_bias"] < 0


# --- skipped steps -----------------------------------------------------------------------------------

def poison(runner, calls):
    """Make the recipe's loss NaN on the given forward calls (counted from 0)."""
    forward, count = runner.recipe.forward, [0]

    def poisoned(batch, generator):
        out = forward(batch, generator)
        if count[0] in calls:
            out["loss"] = out["loss"] * float("nan")
        count[0] += 1
        return out
    runner.wrapped = poisoned


def test_a_non_finite_step_changes_nothing_and_the_sync_takes_it_off_the_step_count():
    runner = make_runner("maskclip")
    poison(runner, {1})
    state = RunState(offsets=[0])
    runner.run([loader_batch(runner.recipe, 0)], state)
    state.step += 1
    before = snapshot(runner)
    runner.run([loader_batch(runner.recipe, 1)], state)  # non-finite: weights, teacher, moments stay
    state.step += 1
    weights, moments = snapshot(runner)
    changed = [k for k in before[0] if not torch.equal(before[0][k], weights[k]) and not k.endswith("center")]
    assert not changed, f"a skipped step changed {changed[:5]}"
    assert all(same(before[1][i], moments[i]) for i in moments)
    runner.run([loader_batch(runner.recipe, 2)], state)
    state.step += 1
    messages, longest = runner.sync(state)
    assert state.step == 2 and state.nonfinite == 1 and state.nonfinite_in_row == 0 and longest == 1
    assert messages == ["maskclip train: step 1: non-finite loss or gradient, step skipped (1 in a row, 1 in all)"]
    means, steps = runner.record()
    assert steps == 2 and means["loss"] == means["loss"]  # the skipped step is not in the means
    assert runner.optimizer.state_dict()["state"][0]["step"].item() == 2


def test_fp16_steps_the_grad_scaler_skips_leave_the_teacher_where_it_was():
    """An overflow makes the scaler skip the optimizer step; the EMA teacher must not move either (it
    used to move towards the unchanged student). The step still counts, as the scaler's skips did."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 126)  # overflows the first steps
    runner = make_runner("maskclip", scaler=scaler, precision="fp16")
    state = RunState(offsets=[0])
    before = snapshot(runner)
    runner.run([loader_batch(runner.recipe, 0)], state)
    state.step += 1
    weights, moments = snapshot(runner)
    assert scaler.get_scale() < 2.0 ** 126  # the scaler saw the overflow and backed off
    teacher = [k for k in weights if k.startswith("teacher.")]
    assert teacher and all(torch.equal(before[0][k], weights[k]) for k in teacher)
    assert torch.equal(before[0]["model.visual.proj"], weights["model.visual.proj"])
    assert all(m["step"] == 0 and not m["exp_avg"].any() for m in moments.values())  # no AdamW step taken
    messages, _ = runner.sync(state)
    assert messages == [] and state.step == 1 and state.nonfinite == 0
    scaler.update(2.0 ** 8)
    runner.run([loader_batch(runner.recipe, 1)], state)
    after = snapshot(runner)[0]
    assert not torch.equal(after["teacher.copies.visual.proj"], weights["teacher.copies.visual.proj"])
    assert not torch.equal(after["model.visual.proj"], weights["model.visual.proj"])
