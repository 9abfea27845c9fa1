import pytest

from recsys import env


def _fake_versions(monkeypatch, versions: dict):
    monkeypatch.setattr(env, "_version", lambda dist: versions.get(dist))
    monkeypatch.setattr(env.metadata, "requires", lambda dist: [])
    monkeypatch.setattr(env, "_check_fbgemm_loads", lambda report: None)


def test_installed_stack_is_consistent():
    report = env.check_environment()
    assert report.ok, report.format()
    assert report.versions["torchrec"] is not None
    assert "stack OK" in report.format()


@pytest.mark.parametrize(
    "versions, fragment",
    [
        ({"torch": "2.13.0+cpu", "fbgemm-gpu-cpu": "1.9.0", "torchrec": "1.9.0"}, "needs fbgemm 1.8"),
        ({"torch": "2.13.0+cpu", "fbgemm-gpu-cpu": "1.8.0", "torchrec": "1.7.0"}, "different releases"),
        ({"torch": "2.13.0+cpu", "torchrec": "1.8.0"}, "fbgemm is not installed"),
        ({"torch": "2.13.0+cpu", "fbgemm-gpu-cpu": "1.8.0"}, "torchrec is not installed"),
        ({}, "torch is not installed"),
    ],
)
def test_mismatches_are_named_with_the_fix(monkeypatch, versions, fragment):
    _fake_versions(monkeypatch, versions)
    report = env.check_environment()
    assert not report.ok
    assert any(fragment in p for p in report.problems), report.problems
    assert "NOT consistent" in report.format()


def test_cuda_torch_with_cpu_fbgemm_is_a_problem(monkeypatch):
    _fake_versions(monkeypatch, {"torch": "2.11.0", "fbgemm-gpu-cpu": "1.6.0", "torchrec": "1.6.1"})
    monkeypatch.setattr(env, "_torch_has_cuda", lambda: True)
    report = env.check_environment()
    assert any("CUDA build" in p for p in report.problems)


def test_triton_pinned_by_cuda_torch(monkeypatch):
    _fake_versions(monkeypatch, {"torch": "2.11.0", "fbgemm-gpu": "1.6.0", "torchrec": "1.6.1", "triton": "3.4.0"})
    monkeypatch.setattr(env.metadata, "requires", lambda dist: ["triton==3.6.0; platform_system == 'Linux'"])
    monkeypatch.setattr(env, "_torch_has_cuda", lambda: True)
    report = env.check_environment()
    assert any("built with triton 3.6.0" in p for p in report.problems)
