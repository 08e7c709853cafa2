"""``zramd serve`` option checking, in process: every bad option is one
line on stderr and exit status 2, before anything starts."""

import sys

import pytest

from zramd import cli


@pytest.mark.parametrize("args,message", [
    (["--size", "0"], "size must be greater than 0"),
    (["--size", "5000"], "not a whole number of 4096-byte pages"),
    (["--size", "lots"], "not a size"),
    (["--algorithm", "lzo"], "invalid choice: 'lzo'"),
    (["--algorithm", "zstd", "--level", "30"], "zstd level must be 1..22"),
    (["--algorithm", "zstd", "--level", "x"], "level must be a whole number, not 'x'"),
    (["--level", "3"], "applies only to zstd"),
    (["--mem-limit", "-5"], "not a size"),
    (["--socket", "/nonexistent/dir/z.sock"], "socket directory does not exist"),
    (["--port", "0"], "port must be 1..65535"),
    (["--port", "10809", "--socket", "/tmp/x.sock"], "not allowed with argument"),
    (["--address", "0.0.0.0"], "--address applies only with --port"),
    (["--threads", "0"], "threads must be"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--recompress-after", "-5", "--recomp-algorithm", "zstd"], "recompress_after must be 0.."),
    (["--recompress-after", "soon"], "must be a whole number"),
    (["--recompress-after", "60"], "need a secondary algorithm"),
    (["--cold-target", "0.2"], "need a secondary algorithm"),
    (["--cold-target", "lots", "--recomp-algorithm", "zstd"], "cold_target"),
    (["--cold-target", "101", "--recomp-algorithm", "zstd"], "percentage 0..100"),
    (["--cold-target", "nan", "--recomp-algorithm", "zstd"], "percentage 0..100"),
    (["--recomp-algorithm", "zstd,zstd,zstd,zstd"], "1..3 algorithms"),
    (["--recomp-algorithm", "brotli"], "unknown compression algorithm 'brotli'"),
    (["--recomp-algorithm", "zstd:99"], "zstd level must be 1..22"),
    (["--recomp-algorithm", "lz4", "--recomp-level", "3"], "applies only to zstd"),
    (["--backing-uri", "http://example.com/disk"], "scheme must be one of"),
    (["--backing-uri", "nbd://h/", "--backing-file", "b.img"], "not both"),
    (["--backing-uri", "nbd://h/", "--instances", "2"], "striped instances would share it"),
    (["--backing-timeout", "0"], "backing timeout must be 1..3600"),
])
def test_bad_options_exit_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        sys.exit(cli.main(["serve", *args]))
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("zramd: error: ") and message in lines[0], lines[0]
    assert out == ""


def test_given_fields_are_only_the_flags_given():
    """What the command line sets (and so wins over a config file) is what
    its flags name, not the table's defaults."""
    assert cli.given_fields(["--size", "64M", "-U", "z.sock", "--swap"]) == {
        "size_bytes", "socket_path", "swap"}
    assert cli.given_fields(["--config", "f.toml"]) == set()


def test_cli_uses_only_argparse_public_names():
    """argparse's underscore names may change under us: the CLI keeps off them."""
    import inspect
    import re

    assert not re.findall(r"argparse\._|\._actions\b", inspect.getsource(cli))
