"""The guarantees of the relaxation methods, each on a problem whose answer is known.

* ace-eq / ace-elastic: their own loss()/after_step() with plain SGD as the primal optimiser on the
  one-parameter toy ``J0(gamma) = (gamma - a)^2`` converge to the KKT point.
* remul: the ``anchor=prediction`` penalty vanishes on an exactly equivariant model; GradNorm moves
  its weights as the algorithm says, keeps their sum at 2 and respects the floor.
* lie-anneal: the schedule's values; the JVP Lie derivative of a linear branch equals its closed
  form and vanishes for an equivariant linear map.
* rpp: the extra weight decay reaches the branch parameters only.
* every method trains on every registered task and backbone, and its state survives a checkpoint
  and resume with identical results.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.config import TrainConfig
from benchmark.groups import CartesianRep, EuclideanGroup
from benchmark.groups._e3 import so3_generators_cartesian
from benchmark.method import EpochContext, StepContext
from benchmark.nn import HomotopyModel, RelaxedLayer
from benchmark.registry import BACKBONES, METHODS, TASKS
from benchmark.train import build, make_optimizer, train

from baselines._common import DualVariables
from baselines.lie_anneal import acts_as_zero, lie_derivatives, schedule_value
from baselines.remul import GradNorm
from conftest import interrupted_and_resumed


# ---------------------------------------------------------------------------------------------
# a one-gamma homotopy model: gamma is its only parameter
# ---------------------------------------------------------------------------------------------
class OneGamma(HomotopyModel):
    def __init__(self):
        super().__init__()
        rep = CartesianRep([("scalar", 1)])
        self.relax = RelaxedLayer(nn.Identity(), rep, rep, "layer0")

    def forward(self, x):
        return self.relax(torch.zeros_like(x), x)


def _method(name: str, **cfg):
    entry = METHODS.get(name)
    method = entry.obj(entry.config(**cfg))
    method.seed = 0
    return method


def _toy_descent_ascent(method, a: float, steps: int, lr: float) -> OneGamma:
    """Run ``method``'s own hooks on ``J0 = (gamma - a)^2`` with SGD as the primal optimiser."""
    model = OneGamma().to(torch.float64)
    tc = TrainConfig(optimizer="sgd", lr=lr, weight_decay=0.0, epochs=1)
    method.attach(model, None, tc)
    opt = make_optimizer(method.param_groups(model, tc), tc)
    for t in range(steps):
        gammas = model.gammas()
        ctx = StepContext(model=model, task=None, batch=None, pred=None, task_loss=(gammas[0] - a) ** 2,
                          gammas=gammas, gammas_before=gammas.detach().clone(), epoch=0, step=t,
                          num_epochs=1, train_cfg=tc, forward=model)
        total = method.loss(ctx)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        method.after_step(ctx)
    return model


# ---------------------------------------------------------------------------------------------
# ACE
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a", [0.7, -1.3])
def test_ace_eq_toy_converges_to_kkt_point(a):
    method = _method("ace-eq", dual_lr=0.05)
    model = _toy_descent_ascent(method, a, steps=2000, lr=0.05)
    # gamma = 0 (feasible); stationarity 2 (gamma - a) + lambda = 0 gives lambda = 2a
    assert model.gammas().item() == pytest.approx(0.0, abs=1e-8)
    assert method.diagnostics()["lambda"][0] == pytest.approx(2 * a, abs=1e-8)


def test_ace_eq_starts_at_gamma_one_and_lambda_zero():
    method = _method("ace-eq")
    model = OneGamma()
    method.attach(model, None, TrainConfig())
    assert model.gammas().tolist() == [1.0]
    assert model.relax.gamma.requires_grad
    assert method.diagnostics()["lambda"] == [0.0]


@pytest.mark.parametrize("rho", [1.0, 2.0])
@pytest.mark.parametrize("slack", ["gradient", "closed_form"])
def test_ace_elastic_toy_converges_to_kkt_point(rho, slack):
    a = 0.9
    method = _method("ace-elastic", dual_lr=0.05, rho=rho, slack=slack)
    model = _toy_descent_ascent(method, a, steps=4000, lr=0.05)
    gamma = model.gammas().item()
    diag = method.diagnostics()
    lam, u = diag["lambda"][0], diag["u"][0]
    assert gamma == pytest.approx(2 * a / (2 + rho), abs=1e-7)
    assert u == pytest.approx(abs(gamma), abs=1e-7)
    assert lam == pytest.approx(rho * u, abs=1e-7)


def test_ace_elastic_multiplier_stays_nonnegative():
    # a feasible start (|gamma| well below the slack's price) must never drive lambda negative
    method = _method("ace-elastic", dual_lr=0.5, gamma_init=0.0)
    _toy_descent_ascent(method, 0.0, steps=50, lr=0.1)
    assert min(method.diagnostics()["lambda"]) >= 0.0


def test_dual_steps():
    sgd = DualVariables(2, lr=0.1)
    sgd.ascend(torch.tensor([1.0, -3.0]))
    assert sgd.value.tolist() == pytest.approx([0.1, -0.3])        # equality: any sign
    adam = DualVariables(2, lr=0.1, optimizer="adam", nonnegative=True)
    adam.ascend(torch.tensor([1.0, -3.0]))
    # Adam's first step has size lr along the sign of the ascent direction, then lambda >= 0
    assert adam.value.tolist() == pytest.approx([0.1, 0.0], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# REMUL
# ---------------------------------------------------------------------------------------------
def _step_of(built):
    batch = next(built.task.batches("train", 16))
    gammas = built.model.gammas()
    pred = built.model(batch)
    return StepContext(model=built.model, task=built.task, batch=batch, pred=pred,
                       task_loss=built.task.loss(pred, batch), gammas=gammas,
                       gammas_before=gammas.detach().clone(), epoch=0, step=0, num_epochs=1,
                       train_cfg=built.cfg.train, forward=built.model)


def test_remul_prediction_anchor_vanishes_on_an_equivariant_model(tiny_config):
    cfg = tiny_config("remul", extra=["train.dtype=float64", "method.anchor=prediction", "method.gamma_init=0"])
    built = build(cfg)
    assert built.method.equivariance_loss(_step_of(built)).item() < 1e-20
    # the same network with its branches switched on is not equivariant, and the loss sees it
    built.model.set_gammas(1.0)
    assert built.method.equivariance_loss(_step_of(built)).item() > 1e-8


def test_remul_label_anchor_is_the_loss_on_transformed_labels(tiny_config):
    cfg = tiny_config("remul", extra=["train.dtype=float64", "method.equi_loss=l2"])
    built = build(cfg)
    step = _step_of(built)
    gen = torch.Generator()
    gen.set_state(built.method.generator.get_state())
    value = built.method.equivariance_loss(step)
    g = built.task.group_sample(len(step.batch), gen)
    transformed = built.task.act_input(g, step.batch)
    expected = built.task.loss(built.model(transformed), transformed)   # nbody's loss is the MSE
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


def _gradnorm_expected(w, values, initial, norms, a=1.5, lr=0.025, floor=1e-3):
    G = [wi * ni for wi, ni in zip(w, norms)]
    ratio = [v / v0 for v, v0 in zip(values, initial)]
    r = [x / (sum(ratio) / len(ratio)) for x in ratio]
    target = [sum(G) / len(G) * ri ** a for ri in r]
    sign = [1.0 if gi > ti else -1.0 if gi < ti else 0.0 for gi, ti in zip(G, target)]
    new = [max(wi - lr * si * ni, floor) for wi, si, ni in zip(w, sign, norms)]
    return [2 * x / sum(new) for x in new]


def test_gradnorm_moves_weights_as_the_algorithm_says():
    W = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)           # ||c|| = 3
    gn = GradNorm(2)

    # step 0: gradients differ tenfold (norms 3 and 30); L_i(0) recorded, r_i = 1
    losses = [(W * c).sum().abs() + 1.0, 10 * (W * c).sum().abs() + 4.0]
    used = gn.step(losses, W)
    assert used.tolist() == [1.0, 1.0]
    expected = _gradnorm_expected([1.0, 1.0], [1.9, 13.0], [1.9, 13.0], [3.0, 30.0])
    assert gn.weights.tolist() == pytest.approx(expected, rel=1e-12)
    assert gn.weights[0] > 1.0 > gn.weights[1]     # the loss with the larger gradient loses weight
    assert gn.weights.sum().item() == pytest.approx(2.0, rel=1e-12)

    # step 1: the first loss has fallen further (relative to its start): its weight goes down
    w1 = gn.weights.tolist()
    losses = [0.5 * (W * c).sum().abs(), 10 * (W * c).sum().abs() + 4.0]
    used = gn.step(losses, W)
    assert used.tolist() == pytest.approx(w1)
    expected = _gradnorm_expected(w1, [0.45, 13.0], [1.9, 13.0], [1.5, 30.0])
    assert gn.weights.tolist() == pytest.approx(expected, rel=1e-12)
    assert gn.weights.sum().item() == pytest.approx(2.0, rel=1e-12)


def test_gradnorm_respects_the_floor():
    W = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    gn = GradNorm(2)
    # norms 4 and 40: an unclamped step would take the second weight to 1 - 0.025 * 40 = 0
    # and past it; the floor holds it at 1e-3 before the renormalisation
    gn.step([4 * W.sum(), 40 * W.sum()], W)
    w = gn.weights.tolist()
    assert w == pytest.approx(_gradnorm_expected([1.0, 1.0], [4.0, 40.0], [4.0, 40.0], [4.0, 40.0]), rel=1e-12)
    assert w[1] == pytest.approx(2 * 1e-3 / (1.1 + 1e-3), rel=1e-12)
    assert min(w) >= 1e-3
    assert sum(w) == pytest.approx(2.0, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# lie-anneal
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule, first, middle, last", [
    ("triangular", 0.0, 1.0, 0.0),
    ("linear", 1.0, 0.5, 0.0),
    ("constant", 1.0, 1.0, 1.0),
])
def test_lie_anneal_schedule(schedule, first, middle, last):
    E = 11
    assert schedule_value(schedule, 0, E) == pytest.approx(first)
    assert schedule_value(schedule, E // 2, E) == pytest.approx(middle)
    assert schedule_value(schedule, E - 1, E) == pytest.approx(last)
    assert schedule_value(schedule, E // 2, E, gamma_max=0.5) == pytest.approx(0.5 * middle)


def test_lie_anneal_sets_gamma_from_the_schedule_each_epoch():
    method = _method("lie-anneal")
    model = OneGamma()
    tc = TrainConfig(epochs=5)
    method.attach(model, None, tc)
    seen = []
    for epoch in range(5):
        method.before_epoch(EpochContext(model, None, epoch, 5, tc))
        seen.append(model.gammas().item())
        assert not model.relax.gamma.requires_grad
        method.after_epoch(EpochContext(model, None, epoch, 5, tc))
    assert seen == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])


REP_IN = CartesianRep([("scalar", 2), ("position", 1), ("vector", 1)])   # dim 8
REP_OUT = CartesianRep([("scalar", 2), ("vector", 1)])                   # dim 5


def _generator_action(k: int, rep_fields, x: torch.Tensor) -> torch.Tensor:
    """``A_k x`` written out from the so(3) basis and the translations, field by field."""
    L = so3_generators_cartesian(torch.float64)
    out, offset = [], 0
    for kind, size in rep_fields:
        part = x[..., offset:offset + size]
        if kind == "scalar":
            out.append(torch.zeros_like(part))
        elif k < 3:
            out.append(part @ L[k].T)
        elif kind == "position":
            out.append(torch.zeros_like(part) + torch.eye(3, dtype=x.dtype)[k - 3])
        else:
            out.append(torch.zeros_like(part))
        offset += size
    return torch.cat(out, dim=-1)


IN_FIELDS = [("scalar", 2), ("position", 3), ("vector", 3)]
OUT_FIELDS = [("scalar", 2), ("vector", 3)]


def test_jvp_lie_derivative_of_a_linear_branch_matches_closed_form():
    torch.manual_seed(0)
    W = nn.Linear(REP_IN.dim, REP_OUT.dim, bias=False).double()
    layer = RelaxedLayer(W, REP_IN, REP_OUT, "toy")
    x = torch.randn(4, 3, REP_IN.dim, dtype=torch.float64)
    lie, f = lie_derivatives(layer, x, EuclideanGroup().lie_dim)
    assert lie.shape == (6, 4, 3, REP_OUT.dim)
    M = W.weight.detach()
    for k in range(6):
        closed = _generator_action(k, IN_FIELDS, x) @ M.T - _generator_action(k, OUT_FIELDS, x @ M.T)
        assert torch.allclose(lie[k], closed, atol=1e-12), k
    assert torch.allclose(f, x @ M.T, atol=1e-12)
    assert lie.abs().max() > 1e-3        # a generic linear map is not equivariant


def test_jvp_lie_derivative_vanishes_for_an_equivariant_linear_map():
    torch.manual_seed(1)
    W = nn.Linear(REP_IN.dim, REP_OUT.dim, bias=False).double()
    M = torch.zeros(REP_OUT.dim, REP_IN.dim, dtype=torch.float64)
    M[:2, :2] = torch.randn(2, 2, dtype=torch.float64)      # scalars -> scalars: any map
    M[2:, 5:] = 0.7 * torch.eye(3, dtype=torch.float64)     # vector -> vector: a multiple of I
    with torch.no_grad():
        W.weight.copy_(M)
    layer = RelaxedLayer(W, REP_IN, REP_OUT, "toy")
    lie, _ = lie_derivatives(layer, torch.randn(4, 3, REP_IN.dim, dtype=torch.float64), 6)
    assert lie.abs().max().item() < 1e-12


def test_batched_tangents_equal_one_copy_of_the_batch_per_generator(monkeypatch):
    """The tangents batched over one primal pass (vmap) give the Lie derivatives, branch output and
    parameter gradients of one concatenated copy of the batch per generator (the form a branch
    with batch statistics runs), on a nonlinear branch in float64."""
    import baselines.lie_anneal as la
    torch.manual_seed(4)
    branch = nn.Sequential(nn.Linear(REP_IN.dim, 7), nn.SiLU(), nn.Linear(7, REP_OUT.dim)).double()
    layer = RelaxedLayer(branch, REP_IN, REP_OUT, "mlp")
    x = torch.randn(5, 3, REP_IN.dim, dtype=torch.float64)
    results = []
    for couples in (False, True):
        monkeypatch.setattr(la, "_couples_samples", lambda _layer, c=couples: c)
        lie, f = lie_derivatives(layer, x, 6)
        grads = torch.autograd.grad(lie.pow(2).sum().sqrt() + f.pow(2).sum().sqrt(), list(branch.parameters()))
        results.append((lie, f, grads))
    (lie_v, f_v, g_v), (lie_c, f_c, g_c) = results
    assert lie_v.abs().max() > 1e-3
    assert torch.allclose(lie_v, lie_c, rtol=0, atol=1e-13) and torch.allclose(f_v, f_c, rtol=0, atol=1e-13)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(g_v, g_c))


def test_jvp_lie_derivative_skips_generators_that_act_as_zero():
    """On e3nn features without positions the translations act as zero on both sides: their rows
    are exact zeros, the jvp runs for the rotations only (their three tangents batched over one
    primal pass of the branch), and the rest equals the closed form."""
    from benchmark.groups._e3 import IrrepsRep
    torch.manual_seed(2)
    rep_in, rep_out = IrrepsRep("2x0e+1x1o"), IrrepsRep("1x0e+2x1o")
    W = nn.Linear(rep_in.dim, rep_out.dim, bias=False).double()
    layer = RelaxedLayer(W, rep_in, rep_out, "toy")
    rows_seen = []
    branch_output = layer.branch_output
    layer.branch_output = lambda z: (rows_seen.append(z.shape[0]), branch_output(z))[1]
    x = torch.randn(4, 3, rep_in.dim, dtype=torch.float64)
    lie, f = lie_derivatives(layer, x, 6)
    assert rows_seen == [4] and lie.shape == (6, 4, 3, rep_out.dim)
    assert [acts_as_zero(rep_in, k, x) for k in range(6)] == [False] * 3 + [True] * 3
    M = W.weight.detach()
    for k in range(6):
        closed = rep_in.lie(k, x) @ M.T - rep_out.lie(k, x @ M.T)
        assert torch.allclose(lie[k], closed, atol=1e-12), k
    assert lie[3:].abs().max() == 0 and lie[:3].abs().max() > 1e-3
    rows_seen.clear()
    every, f_every = lie_derivatives(layer, x, 6, skip_zero_generators=False)
    assert rows_seen == [4] and torch.equal(every, lie) and torch.equal(f_every, f)
    # scalars only: every generator acts as zero, no jvp at all, and f is still the branch output
    scalar_layer = RelaxedLayer(nn.Linear(2, 2).double(), IrrepsRep("2x0e"), IrrepsRep("2x0e"), "scalars")
    z = torch.randn(5, 2, dtype=torch.float64)
    lie, f = lie_derivatives(scalar_layer, z, 6)
    assert lie.shape == (6, 5, 2) and lie.abs().max() == 0
    assert torch.allclose(f, scalar_layer.branch(z))


def test_lie_anneal_penalty_reaches_only_branches(tiny_config):
    built = build(tiny_config("lie-anneal", extra=["method.schedule=constant"]))
    method, model = built.method, built.model
    method.before_epoch(EpochContext(model, built.task, 0, 2, built.cfg.train))
    step = _step_of(built)
    step.task_loss = torch.zeros((), dtype=step.pred.dtype)     # the penalty alone
    method.loss(step).backward()
    method.after_epoch(EpochContext(model, built.task, 0, 2, built.cfg.train))
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.equivariant_parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.branch_parameters())


# ---------------------------------------------------------------------------------------------
# rpp
# ---------------------------------------------------------------------------------------------
def test_rpp_decay_reaches_only_branch_parameters(tiny_config):
    cfg = tiny_config("rpp", extra=["train.optimizer=sgd", "train.lr=0.1", "train.weight_decay=0",
                                    "method.branch_decay=0.5"])
    built = build(cfg)
    model, opt = built.model, built.optimizer
    decays = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decays == {"equivariant": 0.0, "branch": 0.5}
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)          # no data gradient: only the prior acts
    opt.step()
    for p in model.equivariant_parameters():
        assert torch.equal(p, before[id(p)])
    for p in model.branch_parameters():
        assert torch.allclose(p, before[id(p)] * (1 - 0.1 * 0.5))
    assert model.gammas().tolist() == [1.0] * model.num_gammas


# ---------------------------------------------------------------------------------------------
# every method, every registered task and backbone
# ---------------------------------------------------------------------------------------------
def _supported(backbone: str, task: str) -> bool:
    tasks = BACKBONES.get(backbone).obj.tasks
    return "*" in tasks or task in tasks


# settings besides the defaults that reach the backbone differently (GradNorm finds a shared layer)
SETTINGS = {"remul": [(), ("method.weighting=gradnorm",)]}
COMBOS = [(m, extra, b, t) for m in METHODS.list() for extra in SETTINGS.get(m, [()])
          for b in BACKBONES.list() for t in TASKS.list()]


@pytest.mark.parametrize("method, extra, backbone, task", COMBOS,
                         ids=lambda v: ",".join(v) if isinstance(v, tuple) else v)
def test_short_training_on_every_task_and_backbone(method, extra, backbone, task, tiny_config, tmp_path):
    if not _supported(backbone, task):
        pytest.skip(f"{backbone} does not support {task}")
    record, _ = train(tiny_config(method, task=task, backbone=backbone, epochs=2, extra=extra),
                      results=tmp_path, progress=False)
    assert record["status"] == "completed", record["reason"]
    assert set(record["variants"]) == set(METHODS.get(method).obj.variants)
    assert record["headline"] == METHODS.get(method).obj.variants[0]


# variants of the defaults whose state differs (dual Adam, closed-form slack, GradNorm weights)
RESUME_CASES = [(m, ()) for m in METHODS.list()] + [
    ("ace-eq", ("method.dual_optimizer=adam",)),
    ("ace-elastic", ("method.slack=closed_form", "method.dual_optimizer=adam")),
    ("remul", ("method.weighting=gradnorm", "method.anchor=prediction", "method.gamma_learnable=true")),
    ("lie-anneal", ("method.schedule=linear",)),
]


def _comparable(record: dict) -> dict:
    return {k: record[k] for k in ("status", "variants", "curves", "diagnostics", "headline", "params")}


PAIRS = [(b, t) for b in BACKBONES.list() for t in TASKS.list() if _supported(b, t)]


@pytest.mark.parametrize("backbone, task", PAIRS, ids=lambda v: v)
def test_every_backbone_resumes_exactly(backbone, task, tiny_config, tmp_path):
    """Every backbone on every task it declares: a run stopped at a checkpoint and resumed writes
    the record of an uninterrupted one (the network's state, its mode-dependent buffers such as
    batch-norm statistics, the method's dual and the optimiser all survive)."""
    method = "ace-eq" if BACKBONES.get(backbone).obj.equivariant else "unconstrained"
    cfg = tiny_config(method, task=task, backbone=backbone, epochs=4, train_size=32, extra=["train.eval_every=2"])
    straight, resumed = interrupted_and_resumed(cfg, tmp_path)
    assert straight["status"] == "completed", straight["reason"]
    assert _comparable(resumed) == _comparable(straight)


@pytest.mark.parametrize("method, extra", RESUME_CASES, ids=lambda v: ",".join(v) if isinstance(v, tuple) else v)
def test_checkpoint_and_resume_give_identical_results(method, extra, tiny_config, tmp_path):
    cfg = tiny_config(method, epochs=4, extra=["train.eval_every=2", *extra])
    straight, resumed = interrupted_and_resumed(cfg, tmp_path)
    assert straight["status"] == "completed"
    assert resumed["timing"]["epochs"] == 4
    assert _comparable(resumed) == _comparable(straight)


def test_method_settings_are_overridable(tiny_config):
    cfg = tiny_config("ace-eq", extra=["dual_lr=1e-3", "method.dual_optimizer=adam"])
    assert (cfg.method_cfg.dual_lr, cfg.method_cfg.dual_optimizer) == (1e-3, "adam")
    from benchmark.config import ConfigError
    with pytest.raises(ConfigError, match="dual_optimizer"):
        tiny_config("ace-eq", extra=["method.dual_optimizer=rmsprop"])
    with pytest.raises(ConfigError, match="slack"):
        tiny_config("ace-elastic", extra=["method.slack=free"])
