"""`run.py config`: every setting with type, default, current value and help; bad settings refused."""
import run


def test_config_lists_every_setting_with_its_value(capsys, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("train:\n  iters: 77\n")
    assert run.main(["config", "--config", str(f), "render.xi=50"]) == 0
    out = capsys.readouterr().out.splitlines()
    head = out[0].split()
    assert head == ["key", "type", "range", "default", "value", "help"]
    by_key = {line.split()[0]: line.split() for line in out[1:] if line and not line.startswith(" ")}
    assert by_key["train.iters"][:6] == ["train.iters", "int", ">=1", "2000", "77", "*"]
    assert by_key["render.xi"][:6] == ["render.xi", "float", ">0", "100.0", "50.0", "*"]
    assert by_key["loss.eik_fraction"][2] == "[0,1]"
    assert by_key["train.seed"][:5] == ["train.seed", "int", ">=0", "0", "0"] and by_key["train.seed"][5] != "*"
    assert "tokens.adjust_rules.max_tokens" in by_key
    assert out[-1].startswith("165 settings; 2 differ from the default")


def test_config_refuses_a_typo_with_the_nearest_key(capsys):
    assert run.main(["config", "train.iter=3"]) == 2
    assert "unknown config key 'train.iter'. Did you mean: iters?" in capsys.readouterr().err


def test_config_for_synth(capsys):
    assert run.main(["config", "--for", "synth", "preset=apartment"]) == 0
    out = capsys.readouterr().out
    assert "room | apartment | clutter" in out and "apartment *" in out
