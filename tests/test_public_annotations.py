"""The annotations a user's type checker reads (the package ships ``py.typed``).

mypy checks a small script that calls the public API the documented way (README examples,
NumPy arrays, lists and scalars, paths as str or ``Path``); it must find no error in it.
The script is only type-checked, never run.
"""

from __future__ import annotations

import sys

import pytest

USER_SCRIPT = '''
"""A user's script: the public API called the documented way (checked, never run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastunlearn import linalg, metrics, ops
from fastunlearn.certified import (
    CertifiedLogisticRegression,
    RemovalReport,
    epsilon_spent,
    noise_budget,
    worst_case_bound,
)
from fastunlearn.certified.extractors import (
    compose_privacy,
    dp_epsilon,
    pgd_attack,
    supported_removals,
)
from fastunlearn.data import digits_images, load_digits_dataset
from fastunlearn.exposure import CharLM, exposure_from_rank, generate_corpus
from fastunlearn.forget import available_methods, error_maximizing_noise, run_method
from fastunlearn.grad import PerSampleGradients
from fastunlearn.influence import (
    UpdateResult,
    influence_update,
    predict,
    repair_labels,
    required_sigma,
)
from fastunlearn.influence.experiment import flip_labels, train_classifier
from fastunlearn.models import small_cnn
from fastunlearn.report import markdown_to_html

# Certified logistic regression on NumPy arrays and lists.
d = load_digits_dataset(binary=(3, 8))
X = np.random.default_rng(0).normal(size=(100, 8))
y = np.arange(100) % 2
model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, epsilon=1.0, delta=1e-4, seed=0,
                                    checkpoint="model.safetensors")
model = CertifiedLogisticRegression(lam=np.float64(1e-2), seed=np.int64(0),
                                    checkpoint=Path("model.safetensors"))
fitted: CertifiedLogisticRegression = model.fit(X, y)
model.fit(X.tolist(), y.tolist())
model.fit(d.X_train, d.y_train)
report: RemovalReport = model.remove([5, 17, 42])
report = model.remove(np.int64(3))
report = model.remove(np.array([1, 2]), batch=True)
report = model.remove(range(100, 110), batch=True)
cumulative: float = report.records[-1].cumulative
left: float = model.budget_left_
retrains: int = model.retrains_
privacy: dict[str, object] = model.privacy_report()
fairness: dict[str, object] = model.fairness_report(d.X_test, d.y_test)
labels: np.ndarray = model.predict(X)
proba: np.ndarray = model.predict_proba(X)
accuracy: float = model.score(X, y)
model.save("model.safetensors")
model.save(Path("model.safetensors"))
model = CertifiedLogisticRegression.load("model.safetensors")
model = CertifiedLogisticRegression.load(Path("model.safetensors"), device="cpu")

# Influence updates and label repair on tensors.
split = load_digits_dataset(normalize=False, dtype=torch.float32)
Xt, Xt_test = split.X_train.reshape(-1, 1, 8, 8) / 16, split.X_test.reshape(-1, 1, 8, 8) / 16
y_bad, flipped = flip_labels(split.y_train, budget=280, seed=42)
net = small_cnn()
train_classifier(net, Xt, y_bad, epochs=1, lr=3e-3, batch_size=64, seed=42)
acc = float((predict(net, Xt_test) == split.y_test).float().mean())
res: UpdateResult = repair_labels(net, Xt, y_bad, flipped, split.y_train[flipped],
                                  solver="cg", curvature="ggn", damping=100.0, tol=1e-4,
                                  maxiter=100)
print(res.applied, res.residual, res.num_hvps, res.timings["total"])
res = influence_update(net, Xt[:4], y_bad[:4], Xt[:4], split.y_train[:4], damping=1.0,
                       tau="auto", train_data=(Xt, y_bad))
res = influence_update(net, Xt[:4], y_bad[:4], order=1, tau=0.1)

# Forgetting methods.
x, yy = digits_images()
cnn = small_cnn()
forget, retain = (x[yy == 3], yy[yy == 3]), (x[yy != 3], yy[yy != 3])
new_model: torch.nn.Module = run_method("two_stage", cnn, forget, retain, epochs=2, lr=0.01)
names: list[str] = available_methods()
loss = F.cross_entropy(new_model(forget[0]), forget[1])

# Metrics on logits.
S, N, C = 20, 8, 10
lab = torch.randint(0, C, (S,))
retrain = torch.randn(S, N, C)
unlearn = torch.randn(S, N, C)
eps: float = metrics.epsilon_hat(retrain, unlearn, lab).epsilon_hat
eps = metrics.epsilon_hat(retrain.numpy(), unlearn.numpy(), lab.numpy(), delta=1e-5).epsilon_hat
score: float = metrics.competition_score(retrain, unlearn, lab).forget_score
written: Path = metrics.write_logits_dir("my-logits", retrain, lab, {"finetune": unlearn})
evaluated = metrics.evaluate_logits_dir(Path("my-logits"))
print(evaluated["methods"]["finetune"]["epsilon_hat"])

# Report.
html: str = markdown_to_html("# Title\\n\\ntext\\n")
html = markdown_to_html("# Title\\n", base_dir=Path("."), title="t")
html = markdown_to_html("# Title\\n", base_dir="reports")

# Ops wrappers and linear algebra.
Xd = torch.randn(1000, 64, dtype=torch.float64)
Sd = torch.rand(1000, 10, dtype=torch.float64)
Bd = torch.randn(64, 10, dtype=torch.float64)
cg_res = ops.glm_cg(Xd, Sd, Bd, lam=1e-2, precond="jacobi", tol=1e-10)
print(cg_res.iterations, cg_res.residual_norms)
hv: torch.Tensor = ops.glm_hvp(Xd, Sd[:, 0], Bd[:, 0], 1e-2)
hess: torch.Tensor = ops.glm_hessian(Xd, Sd[:, 0], 1e-2)
far_d, far_i = ops.farthest_k(torch.randn(50, 64), torch.randn(5000, 64), k=10)
near_d, near_i = ops.nearest_k(torch.randn(50, 64), torch.randn(5000, 64), k=np.int64(3))
mlp = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
mlp = mlp.double()
xm, ym = torch.randn(128, 20, dtype=torch.float64), torch.randint(0, 3, (128,))
ce = torch.nn.CrossEntropyLoss(reduction="sum")
H = linalg.NetworkHessianOperator(mlp, ce, xm, ym, params=["2.weight", "2.bias"], damping=1e-2)
g = torch.randn(H.shape[0], dtype=H.dtype)
sol = linalg.cg(H, g, tol=1e-8)
print(sol.converged, sol.iterations, sol.residual_norms)
engine = PerSampleGradients(mlp)
norms: torch.Tensor = engine.sq_norms(xm, ym, torch.nn.CrossEntropyLoss(reduction="none")).sqrt()
clipped = engine.clipped_sum(xm, ym, torch.nn.CrossEntropyLoss(reduction="none"), max_norm=1.0)

# NumPy scalars where a number is taken (np.int64 from np.arange, np.float32 from arrays).
i64, f32 = np.int64(3), np.float32(0.5)
budget: float = noise_budget(f32, f32, np.float32(1e-4))
spent: float = epsilon_spent(f32, f32, np.float32(1e-4))
wc: float = worst_case_bound(f32, np.int64(1000), np.int64(2), gamma=f32)
removals: int = supported_removals(f32, np.float32(0.1), np.float32(0.2), target_delta=f32)
composed = compose_privacy(np.float32(0.1), np.float32(1e-5), f32, np.float32(1e-5), i64)
dp_eps: float = dp_epsilon(f32, np.float32(0.01), i64, np.float32(1e-5))
x_adv = pgd_attack(mlp, xm, ym, epsilon=f32, alpha=np.float32(0.1), steps=i64)
res = influence_update(net, Xt[:4], y_bad[:4], order=np.int64(1), tau=np.float32(0.1))
res = influence_update(net, Xt[:4], y_bad[:4], Xt[:4], split.y_train[:4], damping=f32,
                       tol=np.float32(1e-4), maxiter=i64, chunk_size=np.int64(64))
pred: torch.Tensor = predict(net, Xt_test, chunk_size=np.int64(256))
sigma_needed: float = required_sigma(f32, epsilon=f32, delta=np.float32(0.01))
sol = linalg.cg(H, g, tol=np.float32(1e-6), maxiter=np.int64(50))
H2 = linalg.NetworkHessianOperator(mlp, ce, xm, ym, damping=f32, batch_size=np.int64(64))
clipped = engine.clipped_sum(xm, ym, torch.nn.CrossEntropyLoss(reduction="none"), max_norm=f32)
eps = metrics.epsilon_hat(retrain, unlearn, lab, delta=np.float32(0.05)).epsilon_hat
per_class: torch.Tensor = metrics.per_class_accuracy(retrain[0], lab, np.int64(10))
final: float = metrics.final_score(f32, f32, f32, f32, f32)
noise = error_maximizing_noise(cnn, i64, (1, 8, 8), n=np.int64(16), lr=np.float32(0.1))
split = load_digits_dataset(test_fraction=np.float32(0.25), seed=np.int64(1))
cnn = small_cnn(num_classes=np.int64(10), width=np.int64(8))
lm = CharLM(np.int64(12), embed_dim=np.int64(8))
bits: float = exposure_from_rank(i64, np.int64(1000))
corpus: str = generate_corpus(np.int64(20), seed=np.int64(1))
'''


@pytest.mark.slow
def test_documented_calls_type_check(tmp_path):
    api = pytest.importorskip("mypy.api")
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT.lstrip())
    stdout, stderr, status = api.run([
        str(script),
        # the running Python: NumPy's stubs (>= 2.3) do not cover 3.10, and with an older
        # target mypy would take every NumPy type as Any and accept any NumPy scalar
        "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
        "--ignore-missing-imports",
        "--follow-imports=silent",
        "--cache-dir", str(tmp_path / "mypy_cache"),
        "--no-error-summary",
    ])
    errors = [line for line in stdout.splitlines() if "user_script.py" in line]
    assert not errors, "\n".join(errors) + stderr
    assert status == 0, stdout + stderr
