"""fast-ntk step="replay" end to end, through the CLI: kept state, checks, bad input (exit 2, one line).

That the step equals retraining where the linearisation is exact, and equals torch.optim, is
tested in test_ntk_replay.py; here the kept-state request must reproduce the replay over the
stored linearised network exactly, and move the model by what the state says.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from privkit.cli.main import app
from privkit.errors import ArtifactError, ConfigError
from privkit.unlearn import get_unlearner
from privkit.unlearn.ntk_replay import REPLAY_STATE_FILE, load_replay_state
from privkit.unlearn.run import prepare_request, run_method

SIZE = 300
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def peft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    result = invoke("train", "--data", "digits", "--size", SIZE, "--target", "digit", "--peft", "bn", "--epochs", 2,
                    "--lr", "1e-2", "--replay-state", "--out", root / "peft")
    assert result.exit_code == 0, result.output
    return root


def _flat(params):
    return torch.cat([p.detach().reshape(-1).double() for p in params])


def test_cli_request_is_served_from_the_kept_replay_state(peft_run):
    from privkit.models import load_model
    from privkit.unlearn.jacobian import select_parameters

    run = peft_run / "peft"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["ntk_replay_file"] == REPLAY_STATE_FILE and meta["ntk_replay_sha256"]
    out = peft_run / "u"
    result = invoke("unlearn", "--model", run, "--data", "digits", "--size", SIZE, "--forget", "class=3",
                    "--method", "fast-ntk", "--option", "step=replay", "--out", out)
    assert result.exit_code == 0, result.output
    after, after_meta = load_model(out)
    assert after_meta["ntk_costs"]["path"] == "kept-state"
    before, _ = load_model(run)
    state = load_replay_state(run, meta)
    req = prepare_request(run, "digits", "class=3", size=SIZE)
    update, _ = state.forget(req.forget.base_indices)
    sel_before, sel_after = select_parameters(before, "bn"), select_parameters(after, "bn")
    torch.testing.assert_close(_flat(sel_after.values()), _flat(sel_before.values()) + update.float().double(),
                               rtol=1e-5, atol=1e-6)
    assert float(update.abs().max()) > 1e-3
    # only the PEFT parameters moved
    frozen = [n for n, _ in before.named_parameters() if n not in sel_before]
    assert frozen and all(torch.equal(dict(before.named_parameters())[n], dict(after.named_parameters())[n])
                          for n in frozen)


def test_replay_without_a_kept_state_runs_one_shot_and_agrees(peft_run):
    req = prepare_request(peft_run / "peft", "digits", "class=3", size=SIZE)
    results = {}
    for kept_state in ("off", "auto"):
        method = get_unlearner("fast-ntk", step="replay", kept_state=kept_state)
        method.check(req.start_model, req.context)
        model, _, info = run_method(method, req)
        results[kept_state] = (_flat(model.parameters()), info["ntk"])
    assert results["off"][1]["path"] == "one-shot" and results["off"][1]["delta_full"] == "replayed"
    assert results["auto"][1]["path"] == "kept-state"
    # one-shot visits D in the training order too, so it lands where the kept state does
    torch.testing.assert_close(results["off"][0], results["auto"][0], rtol=1e-4, atol=1e-5)
    assert results["off"][1]["replay_path_error"] == pytest.approx(results["auto"][1]["replay_path_error"], rel=1e-3)


def test_bad_replay_points_and_kept_state_are_refused_under_every_step(peft_run):
    req = prepare_request(peft_run / "peft", "digits", "class=3", size=SIZE)
    for step in ("auto", "newton", "replay"):
        for points in (0, True, "3"):
            with pytest.raises(ConfigError, match="replay_points"):
                get_unlearner("fast-ntk", step=step, replay_points=points).check(req.start_model, req.context)
        with pytest.raises(ConfigError, match="kept_state='bogus'"):
            get_unlearner("fast-ntk", step=step, kept_state="bogus").check(req.start_model, req.context)
        with pytest.raises(ConfigError, match="replay_form='both'"):
            get_unlearner("fast-ntk", step=step, replay_form="both").check(req.start_model, req.context)
        with pytest.raises(ConfigError, match="replay_model='exact'"):
            get_unlearner("fast-ntk", step=step, replay_model="exact").check(req.start_model, req.context)


def test_the_kept_state_holds_the_training_iterates_and_the_request_says_what_it_used(peft_run):
    """`privkit train --peft --replay-state` linearises at the fine-tuning's own iterates (re-run, checked);
    digits' head has 64 inputs for 10 classes, so ``auto`` keeps the logits model; the default update
    is the direct one, w0 + delta_Dr, and a kept state of the other model does not answer an explicit one."""
    meta = json.loads((peft_run / "peft" / "meta.json").read_text())
    assert meta["ntk_replay_schedule"] == "steps" and meta["ntk_replay_model"] == "logits"
    req = prepare_request(peft_run / "peft", "digits", "class=3", size=SIZE)
    method = get_unlearner("fast-ntk", step="replay")
    method.check(req.start_model, req.context)
    model, _, info = run_method(method, req)
    ntk = info["ntk"]
    assert ntk["path"] == "kept-state" and ntk["replay_form"] == "direct" and ntk["replay_schedule"] == "steps"
    assert ntk["trajectory_rerun_error"] < 1e-6 and ntk["linearisation_point"] == "3 iterates of the fine-tuning"
    other_model, _, other = run_method(get_unlearner("fast-ntk", step="replay", replay_form="difference"), req)
    assert other["ntk"]["replay_form"] == "difference"
    # the two forms differ by the replay's path error, w0 + delta_D - w*
    gap = float((_flat(model.parameters()) - _flat(other_model.parameters())).norm())
    assert gap > 0 and math.isclose(gap, ntk["replay_path_error"] * ntk["replay_path_norm"], rel_tol=1e-3)
    bilinear = get_unlearner("fast-ntk", step="replay", replay_model="bilinear")
    _, _, asked = run_method(bilinear, req)
    assert asked["ntk"]["path"] == "one-shot" and asked["ntk"]["replay_model"] == "bilinear"
    assert "replay_model='bilinear'" in asked["ntk"]["path_reason"]


def test_malformed_state_with_a_matching_checksum_is_an_artifact_error(peft_run, tmp_path):
    import dataclasses
    import shutil

    from privkit.unlearn.ntk_replay import save_replay_state

    run = peft_run / "peft"
    meta = json.loads((run / "meta.json").read_text())
    good = load_replay_state(run, meta)

    def broken(mutate):
        state = load_replay_state(run, meta)
        mutate(state)
        return state

    def no_head(state):
        for net in state.nets:
            net.head = None
            net.body = list(net.names)

    cases = {
        "labels out of range": lambda st: st.net.labels.__setitem__(0, 99),
        "head dropped": no_head,
        "recipe epochs a string": lambda st: setattr(st, "recipe", dataclasses.replace(st.recipe, epochs="3")),
        "a point's Jacobian cut": lambda st: setattr(st.nets[1], "jac_body", st.nets[1].jac_body[:, :, :5].clone()),
    }
    for name, mutate in cases.items():
        folder = tmp_path / name.replace(" ", "-")
        shutil.copytree(run, folder)
        new_meta = dict(meta, **save_replay_state(folder, broken(mutate), meta["ntk_replay_data_fingerprint"]))
        with pytest.raises(ArtifactError, match="malformed replay state"):
            load_replay_state(folder, new_meta)
    assert len(good.nets) == 3


def test_bad_input_is_one_line_exit_2(peft_run, tmp_path):
    run = peft_run / "peft"
    result = invoke("train", "--data", "digits", "--size", SIZE, "--target", "digit", "--replay-state",
                    "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--replay-state applies to --peft" in result.output
    assert not (tmp_path / "x").exists()
    plain = tmp_path / "plain"
    assert invoke("train", "--data", "digits", "--size", SIZE, "--target", "digit", "--epochs", 1,
                  "--out", plain).exit_code == 0
    result = invoke("unlearn", "--model", plain, "--data", "digits", "--size", SIZE, "--forget", "class=3",
                    "--method", "fast-ntk", "--option", "step=replay", "--out", tmp_path / "y")
    assert result.exit_code == 2 and "needs a model trained with `privkit train --peft`" in result.output
    assert not (tmp_path / "y").exists()
    # a modified state file is refused before anything is written
    state_file = run / REPLAY_STATE_FILE
    original = state_file.read_bytes()
    try:
        state_file.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        result = invoke("unlearn", "--model", run, "--data", "digits", "--size", SIZE, "--forget", "class=3",
                        "--method", "fast-ntk", "--option", "step=replay", "--out", tmp_path / "z")
        assert result.exit_code == 2 and "checksum" in result.output and len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "z").exists()
    finally:
        state_file.write_bytes(original)


def test_kept_replay_state_is_refused_for_other_training_data(peft_run):
    req = prepare_request(peft_run / "peft", "digits", "class=3", size=SIZE)
    req.context.train_fingerprint = "0" * 64
    method = get_unlearner("fast-ntk", step="replay")
    with pytest.raises((ArtifactError, ConfigError), match="other samples than the training data"):
        method.check(req.start_model, req.context)
        run_method(method, req)


def test_documented_replay_example(tmp_path, monkeypatch):
    """Runs exactly the commands of docs/unlearn.md's step=replay section."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "unlearn.md").read_text()
    section = doc.split("(`--option step=replay`)", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in section.splitlines() if line.strip().startswith("privkit ")]
    assert [c.split()[1] for c in commands] == ["train", "unlearn"], commands
    monkeypatch.chdir(tmp_path)
    for command in commands:
        result = invoke(*command.split()[1:])
        assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "runs" / "r" / "meta.json").read_text())
    assert meta["ntk_costs"]["path"] == "kept-state"
    assert "one-off: replay state over D" in (tmp_path / "runs" / "r" / "report.html").read_text()
    metrics = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    assert metrics["UA"] > 0.0  # the forgotten class is no longer recognised perfectly, as after retraining


def test_default_step_is_replay_exactly_when_a_replay_state_answers(peft_run):
    req = prepare_request(peft_run / "peft", "digits", "class=3", size=SIZE)
    runs = {}
    for label, options in {"default": {}, "newton": {"step": "newton"}, "replay": {"step": "replay"},
                           "auto, other points": {"replay_points": 2}}.items():
        method = get_unlearner("fast-ntk", **options)
        method.check(req.start_model, req.context)
        model, _, info = run_method(method, req)
        runs[label] = (torch.cat([p.detach().reshape(-1) for p in model.parameters()]), info["ntk"])
    assert runs["default"][1]["step"] == "replay" and "auto" in runs["default"][1]["step_reason"]
    torch.testing.assert_close(runs["default"][0], runs["replay"][0])
    assert runs["newton"][1]["step"] == "newton"
    # a kept state with another number of points does not answer: auto falls back to the Newton step
    assert runs["auto, other points"][1]["step"] == "newton"
    assert "replay_points=2" in runs["auto, other points"][1]["step_reason"]
    torch.testing.assert_close(runs["auto, other points"][0], runs["newton"][0])


def test_full_parameter_ntk_ignores_a_fast_ntk_replay_state(peft_run):
    # the state covers the BN + head parameters; `ntk` updates every parameter: not the same request,
    # so the state is passed over (not mistaken for a tampered file)
    req = prepare_request(peft_run / "peft", "digits", "random=0.05", size=SIZE)
    method = get_unlearner("ntk", solver="dual")
    method.check(req.start_model, req.context)
    state, why = method._replay_state(dict(req.start_model.named_parameters()), "all", req.context)
    assert state is None and "not 'all'" in why
    assert req.context.model_meta["ntk_replay_params"] == "bn" and req.context.model_meta["ntk_replay_points"] == 3


def test_a_replay_that_cannot_be_fitted_does_not_cost_the_trained_model(tmp_path, monkeypatch):
    from privkit.unlearn import ntk_replay

    def diverges(*args, **kwargs):
        raise ConfigError("the replay diverged (a non-finite iterate)")

    monkeypatch.setattr(ntk_replay.ReplayState, "fit", classmethod(lambda cls, *a, **k: diverges()))
    result = invoke("train", "--data", "digits", "--size", SIZE, "--target", "digit", "--peft", "bn", "--epochs", 1,
                    "--lr", "1e-2", "--replay-state", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert "ntk_replay_sha256" not in meta and meta["ntk_state_sha256"]  # the model and its NTK state are kept
    assert "replay state was not kept" in (tmp_path / "run" / "report.html").read_text()


def test_peft_training_keeps_the_replay_state_by_default_when_it_fits(tmp_path, monkeypatch):
    import privkit.unlearn.peft as peft_module

    base = ["train", "--data", "digits", "--size", SIZE, "--target", "digit", "--peft", "bn", "--epochs", 1,
            "--lr", "1e-2"]
    assert invoke(*base, "--out", tmp_path / "default").exit_code == 0
    assert json.loads((tmp_path / "default" / "meta.json").read_text())["ntk_replay_sha256"]
    assert invoke(*base, "--no-replay-state", "--out", tmp_path / "off").exit_code == 0
    assert "ntk_replay_sha256" not in json.loads((tmp_path / "off" / "meta.json").read_text())
    # too large: by default the model is trained without it (the report says why); asked for, it is an error
    monkeypatch.setattr(peft_module, "replay_state_memory_problem", lambda *a, **k: "it would need 9 TiB")
    assert invoke(*base, "--out", tmp_path / "big").exit_code == 0
    assert "ntk_replay_sha256" not in json.loads((tmp_path / "big" / "meta.json").read_text())
    assert "it would need 9 TiB" in (tmp_path / "big" / "report.html").read_text()
    result = invoke(*base, "--replay-state", "--out", tmp_path / "asked")
    assert result.exit_code == 2 and "9 TiB" in result.output and not (tmp_path / "asked").exists()
