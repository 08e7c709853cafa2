"""zramd serve --config FILE: every option through the file, flags over the
file, one line per error, RAM-relative sizes with a fixed RAM."""

from __future__ import annotations

import os

import pytest

from zramd import cli, config_file
from zramd.options import BY_NAME, OPTIONS, ConfigError

G = 1 << 30
M = 1 << 20

# The other options an example needs to be valid: the same as for the
# command line (test_options.py), written into the file too.
from test_options import COMPANIONS  # noqa: E402


def serve_settings(argv: list[str]):
    """What `zramd serve ARGV` would run with (parsed as main() parses it)."""
    args = cli.build_parser().parse_args(["serve", *argv])
    args.given_fields = cli.given_fields(argv)
    return cli.settings_from_args(args)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "zramd.toml"
    path.write_text(text)
    return str(path)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + value + '"'


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.name)
def test_every_option_round_trips_through_the_file(opt, tmp_path, monkeypatch):
    """The file and the command line give the same Settings, for the typed
    TOML value and for the same value as text."""
    monkeypatch.chdir(tmp_path)
    key = config_file.key_of(opt)
    value = opt.from_text(opt.example)
    companion_argv = COMPANIONS.get(opt.name, [])
    companions = cli.settings_from_args(
        cli.build_parser().parse_args(["serve", *companion_argv])
    )
    lines = config_file.render(
        {f: getattr(companions, f) for f in cli.given_fields(companion_argv)}
    ).splitlines()
    argv = companion_argv + (
        [opt.flags[0]] if opt.type.python is bool else [opt.flags[0], opt.example]
    )
    from_cli = normalized(serve_settings(argv).validate())
    texts = [toml_value(value)]
    if not isinstance(value, bool):
        texts.append(toml_value(opt.example))   # the same value as text
    for text in texts:
        path = write(tmp_path, "\n".join(lines + [f"{key} = {text}"]) + "\n")
        from_file = normalized(serve_settings(["--config", path]).validate())
        assert getattr(from_file, opt.field) == getattr(from_cli, opt.field)
        assert getattr(from_file, opt.field) != opt.default
        assert from_file == from_cli


def is_path(opt) -> bool:
    return opt.type.name == "path" or opt.metavar == "PATH"


def normalized(settings):
    """Relative paths: the command line's are relative to the working
    directory, the file's to its directory (here the same)."""
    for opt in OPTIONS:
        value = getattr(settings, opt.field)
        if is_path(opt) and isinstance(value, str):
            setattr(settings, opt.field, os.path.abspath(value))
    return settings


def test_render_and_load_are_inverse(tmp_path):
    values = {opt.field: opt.from_text(opt.example) for opt in OPTIONS}
    path = write(tmp_path, config_file.render(values))
    loaded = config_file.load(path)
    for opt in OPTIONS:
        expected = values[opt.field]
        if isinstance(expected, str) and (opt.type.name == "path" or opt.metavar == "PATH"):
            expected = str(tmp_path / expected)
        assert loaded[opt.field] == expected, opt.name


def test_flags_win_over_the_file(tmp_path):
    path = write(tmp_path, 'size = "64M"\nalgorithm = "zstd"\nlevel = 7\n'
                           f'socket = "{tmp_path}/f.sock"\nswap = true\n')
    s = serve_settings(["--config", path, "--size", "32M", "--level", "3"]).validate()
    assert (s.size_bytes, s.algorithm, s.level, s.swap) == (32 * M, "zstd", 3, True)
    assert s.socket_path == f"{tmp_path}/f.sock"
    # a flag of a group (--port) replaces the file's choice in it (socket)
    s = serve_settings(["--config", path, "--port", "10809", "--insecure-tcp"]).validate()
    assert s.port == 10809 and s.socket_path is None
    # a flag given with its default value still wins
    s = serve_settings(["--config", path, "--algorithm", "lz4", "--level", "1"])
    assert s.algorithm == "lz4"
    # flags after --config or before it: the same
    assert serve_settings(["--size", "32M", "--config", path]).size_bytes == 32 * M


@pytest.mark.parametrize("text,message", [
    ('mem_limt = "1G"\n', "unknown key 'mem_limt' (did you mean mem_limit?)"),
    ('mem-limit = "1G"\n', "unknown key 'mem-limit' (did you mean mem_limit?)"),
    ('colour = "blue"\n', "unknown key 'colour'"),
    ("workers = 0\n", "workers must be 1..64, not 0"),
    ("mem_limit = -4096\n", "mem_limit: not a size: '-4096'"),
    ("size = 12345\n", "size 12345 is not a whole number of 4096-byte pages"),
    ("size = 0\n", "size must be greater than 0"),
    ('algorithm = "lzma"\n', "algorithm must be one of"),
    ('size = "12345"\n', "zramd.toml: size 12345 is not a whole number of 4096-byte pages"),
    ('mem_limit = "lots"\n', "mem_limit: not a size: 'lots'"),
    ("swap = 1\n", "swap must be a bool, not 1"),
    ('workers = "two"\n', "workers must be a whole number, not 'two'"),
    ("workers = true\n", "workers must be an int, not True"),
    ("size = 1.5\n", "size: must be a size, not the number 1.5"),
    ("socket = 5\n", "socket: must be a string (in quotes), not 5"),
    ("[serve]\nsize = 1\n", "serve"),
    ("size = [1, 2]\n", "size: must be a size, not a list"),
    ('size = "min(ram / 0, 1G)"\n', "size: division by zero"),
    ('size = "ram - 1000G"\n', "size: 'ram - 1000G' is negative"),
    ('size = "__import__(1)"\n', "unknown name '__import__'"),
    ("size = \n", "not valid TOML"),
    ('metrics_address = "0.0.0.0:9100"\n', "not loopback"),
])
def test_each_error_is_one_line_naming_file_and_key(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        serve_settings(["--config", path]).validate()
    error = str(info.value)
    assert "\n" not in error
    assert message in error, error
    if "TOML" not in message and "loopback" not in message:
        assert error.startswith(f"{path}: "), error


def test_errors_exit_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, "workers = 0\n")
    assert cli.main(["serve", "--config", path]) == 2
    err = capsys.readouterr().err
    assert err == f"zramd: error: {path}: workers must be 1..64, not 0\n"
    assert cli.main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read config file" in err


@pytest.mark.parametrize("text,ram,expected", [
    ("min(ram / 2, 4G)", 16 * G, 4 * G),
    ("min(ram / 2, 4G)", 2 * G, 1 * G),
    ("max(ram / 4, 1G)", 2 * G, 1 * G),
    ("ram * 0.25", 8 * G, 2 * G),
    ("(ram - 512M) / 2", 4 * G + 512 * M, 2 * G),
    ("ram / 3", 1000 * M, 349522 * 1024 // 4096 * 4096 - 0),  # rounded down to pages
    ("4G", 1, 4 * G),
    ("min(ram, 1G, 512 M)", 8 * G, 512 * M),
    ("-(-ram)", 1 * G, 1 * G),
    ("2 * (ram + 1G) / 4", 2 * G, 3 * G // 2),
])
def test_ram_relative_sizes(text, ram, expected):
    got = config_file.eval_size(text, ram)
    assert got % 4096 == 0
    if text == "ram / 3":
        assert got == (ram // 3) // 4096 * 4096
    else:
        assert got == expected


@pytest.mark.parametrize("text,message", [
    ("ram ** 2", "unexpected '*'"),
    ("ram / ", "ends too early"),
    ("min(ram", "ends too early"),
    ("ram 2", "unexpected '2'"),
    ("os.system(1)", "unexpected"),
    ("(" * 40 + "1" + ")" * 40, "nested too deeply"),
    ("-" * 40 + "1", "nested too deeply"),
    ("1+" * 150 + "1", "longer than 200"),
    ("swap", "unknown name 'swap'"),
    ("2ram", "unexpected"),
])
def test_bad_size_expressions(text, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("(", r"\(")):
        config_file.eval_size(text, 8 * G)


def test_ram_relative_size_in_the_file_with_injected_ram(tmp_path):
    path = write(tmp_path, 'size = "min(ram / 2, 4G)"\nmem_limit = "ram / 8"\n'
                           'high_watermark = "ram / 16"\nbacking_file = "b.img"\n')
    values = config_file.load(path, ram_bytes=4 * G)
    assert values["size_bytes"] == 2 * G
    assert values["mem_limit_bytes"] == 512 * M
    assert values["high_watermark_bytes"] == 256 * M
    assert values["backing_file"] == os.path.join(str(tmp_path), "b.img")


def test_machine_ram_is_memtotal():
    ram = config_file.machine_ram_bytes()
    assert ram > 64 * M and ram % 1024 == 0


def test_the_example_config_in_docs_is_valid(tmp_path):
    """docs/zramd.toml loads, and each commented-out key is a real one with a
    valid value (uncommented, one at a time)."""
    import re
    from pathlib import Path

    from zramd.settings import Settings

    example = Path(__file__).resolve().parents[2] / "docs" / "zramd.toml"
    text = example.read_text()
    values = config_file.load(str(example), ram_bytes=8 * G)
    assert values["size_bytes"] == 4 * G and values["mem_limit_bytes"] == 2 * G
    values["socket_path"] = str(tmp_path / "z.sock")
    Settings(**values).validate()
    commented = re.findall(r"^# ([a-z_]+ = .*?)(?:\s+#.*)?$", text, re.M)
    assert len(commented) >= 8
    for line in commented:
        path = write(tmp_path, line + "\n")
        config_file.load(path, ram_bytes=8 * G)


def test_config_examples_in_the_docs_load(tmp_path):
    """Every ```toml block of README.md and docs/swap.md is a valid config."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    blocks = []
    for doc in ("README.md", "docs/swap.md"):
        blocks += re.findall(r"```toml\n(.*?)```", (root / doc).read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        config_file.load(write(tmp_path, block), ram_bytes=8 * G)


def test_a_file_others_can_change_is_refused(tmp_path):
    path = write(tmp_path, 'size = "64M"\n')
    os.chmod(path, 0o664)
    with pytest.raises(ConfigError, match=r"writable by others \(mode 664\): refused"):
        config_file.load(path)
    os.chmod(path, 0o644)
    assert config_file.load(path)["size_bytes"] == 64 * M
    if os.getuid() == 0:  # only root can give a file away
        os.chown(path, 65534, 65534)
        with pytest.raises(ConfigError, match=r"belongs to another user \(uid 65534\)"):
            config_file.load(path)


def test_huge_expression_refused_in_one_line():
    from zramd.config_file import ConfigError, eval_size

    with pytest.raises(ConfigError, match="NBD's limit"):
        eval_size("ram * 1000000000000", 1 << 30)
