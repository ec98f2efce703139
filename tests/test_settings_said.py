"""Settings that would act otherwise than they read are refused or said: a key of a schedule that is not the
chosen one, a method's warm-up longer than the run, and an extension hint for a run that cannot be extended."""

import pytest
import torch

from conftest import cli_main, small_config
from selfdistill.engine import Trainer, resolve, train
from selfdistill.errors import UserError
from selfdistill.methods import build_method
from selfdistill.models import build_model


@pytest.mark.parametrize("schedule, key", [({"milestones": [30, 45]}, "schedule.milestones"),
                                           ({"name": "constant", "gamma": 0.5}, "schedule.gamma"),
                                           ({"name": "multistep", "min_lr": 0.001}, "schedule.min_lr")])
def test_a_key_of_another_schedule_is_refused_naming_the_one_that_uses_it(schedule, key):
    with pytest.raises(UserError) as info:
        resolve([{"schedule": schedule}])
    message = str(info.value)
    assert message.startswith(f"{key}=") and "add --set schedule.name=" in message and "\n" not in message


def test_the_keys_of_the_chosen_schedule_and_the_defaults_of_others_are_accepted():
    assert resolve([{"schedule": {"name": "multistep", "milestones": [3], "gamma": 0.2}}]).schedule.milestones == [3]
    assert resolve([{"schedule": {"name": "cosine", "min_lr": 0.001, "gamma": 0.1}}]).schedule.min_lr == 0.001
    with pytest.raises(UserError, match=r"roles\.peer1\.schedule\.milestones"):
        resolve([{"method": "dml", "roles": {"peer1": {"schedule": {"milestones": [2]}}}}])


def test_the_readme_s_milestones_example_is_now_refused_on_the_command_line(capsys):
    code, _, err = cli_main(capsys, "train", "--set", "schedule.milestones=[30,45]")
    assert code == 2 and len(err) == 1 and "only multistep uses milestones" in err[0]


def test_dkd_says_when_its_warm_up_is_longer_than_the_run(tmp_path, capsys):
    assert build_method({"name": "dkd"}).notes(240) == []
    (note,) = build_method({"name": "dkd"}).notes(3)
    assert "warm-up of 20 epochs" in note and "3/20" in note
    assert build_method({"name": "dkd+dlb", "dkd": {"warmup_epochs": 2}}).notes(3) == []
    teacher = tmp_path / "t.pt"
    torch.save(build_model("mlp", 10, 1, 12).state_dict(), teacher)
    train(small_config(method={"name": "dkd"}, teachers=[f"{teacher}:mlp"]))
    start = capsys.readouterr().out.splitlines()[0]
    assert start.startswith("selfdistill: training") and "warm-up of 20 epochs is longer than the run's 2" in start


@pytest.mark.parametrize("schedule, hinted", [({"name": "cosine"}, False), ({"name": "constant"}, True)])
def test_a_finished_run_suggests_extending_it_only_where_that_works(tmp_path, schedule, hinted):
    out = tmp_path / "run"
    train(small_config(schedule=schedule), out)
    with pytest.raises(UserError) as info:
        Trainer(small_config(schedule=schedule), out)
    assert "already holds a finished run" in str(info.value)
    assert ("--resume --epochs N" in str(info.value)) == hinted
