"""`trl-rubric demo --quick`: the offline world end to end, and a real learning check."""

import json

from trl_rubric.cli import main


def test_demo_quick_learns_without_the_rubric_and_reports(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    argv = ["demo", "--quick", "--output_dir", str(out_dir), "--eval_samples", "2", "--max_steps", "40"]
    rc = main([*argv, "--curve_every", "20"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| weighted score, train prompts |" in printed
    assert "| judge calls during training | - | 0 |" in printed

    results = json.loads((out_dir / "results.json").read_text())
    for key in ("base_score", "teacher_score", "rgsd_score", "heldout_base_score", "heldout_rgsd_score"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["train_judge_calls"] == 0
    # the prepared model has a real conditioning gap ...
    assert results["teacher_score"] > results["base_score"] + 0.05
    # ... and RGSD moves the prompt-only student toward it (same sampling and judge for both)
    assert results["rgsd_score"] > results["base_score_rescored"] + 0.03, results
    assert [p["step"] for p in results["learning_curve"]] == [0, 20, 40]
    assert (out_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out_dir / "student" / "config.json").exists()


def test_demo_rejects_unknown_options(capsys):
    assert main(["demo", "--max_stepz", "3"]) == 2
    err = capsys.readouterr().err
    assert "trl-rubric demo: error: unknown option" in err and "Traceback" not in err


def test_demo_without_matplotlib_still_reports(tmp_path, monkeypatch, capsys):
    import trl_rubric.demo_report as demo_report

    def no_matplotlib(*args, **kwargs):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(demo_report, "plot_learning_curves", no_matplotlib)
    out_dir = tmp_path / "demo"
    argv = ["demo", "--quick", "--output_dir", str(out_dir), "--max_steps", "2", "--eval_samples", "1"]
    assert main(argv) == 0
    assert (out_dir / "results.json").exists() and not (out_dir / "learning_curve.png").exists()
    assert "needs matplotlib" in capsys.readouterr().err


def test_demo_runs_every_step_with_the_requested_torch_threads(tmp_path, monkeypatch):
    import torch

    from trl_rubric.scripts import demo

    seen = []
    monkeypatch.setattr(demo, "_run", lambda args: seen.append(torch.get_num_threads()) or {})
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = ["--output_dir", str(tmp_path)]
        assert demo.main(out) == 0  # default: one thread, the fastest for the toy models
        assert demo.main([*out, "--num_threads", "3"]) == 0
        assert demo.main([*out, "--num_threads", "0"]) == 0  # 0 keeps torch's own setting
        assert seen == [1, 3, 2]
        assert torch.get_num_threads() == 2  # restored afterwards
        assert demo.main([*out, "--num_threads", "-1"]) == 2
    finally:
        torch.set_num_threads(previous)
