"""Shell completion scripts for `makima`, generated from its argparse tree so they never drift from
the commands: every command path maps to the words that may follow it (subcommands and options),
and every option with choices to its choices."""

from __future__ import annotations

import argparse
import shlex

SHELLS = ("bash", "zsh", "fish")
_ROOT = "makima"


def _words(parser: argparse.ArgumentParser, path: str, out: dict[str, list[str]]) -> None:
    """Fill `out` with `path -> words` for `parser` and every parser under it."""
    words: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            # Offer the commands the help lists; earlier names still complete their options once typed.
            words.extend(choice.dest for choice in action._choices_actions)
            for name, sub in action.choices.items():
                _words(sub, f"{path} {name}", out)
        elif action.help != argparse.SUPPRESS:
            long_options = [o for o in action.option_strings if o.startswith("--")]
            words.extend(long_options)
            if action.choices is not None:
                for option in long_options:
                    out[f"{path} {option}"] = [str(c) for c in action.choices]
    out[path] = words


def tree(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Every command path ("makima task rewind") and option ("makima task rewind --mode") with the
    words that may follow it."""
    out: dict[str, list[str]] = {}
    _words(parser, _ROOT, out)
    return out


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `shell` (bash, zsh or fish)."""
    words = tree(parser)
    return _fish(words) if shell == "fish" else _bash(words, zsh=shell == "zsh")


def _bash(words: dict[str, list[str]], *, zsh: bool) -> str:
    table = "\n".join(f"    [{shlex.quote(path)}]={shlex.quote(' '.join(w))}" for path, w in sorted(words.items()))
    # zsh runs the bash function through its bashcompinit layer, with bash's 0-based arrays.
    prelude = "autoload -U +X bashcompinit && bashcompinit\n" if zsh else ""
    arrays = "\n    setopt localoptions ksharrays" if zsh else ""
    return f"""# {"zsh" if zsh else "bash"} completion of makima: eval "$(makima completion {"zsh" if zsh else "bash"})"
{prelude}declare -gA _makima_words=(
{table}
)
_makima() {{{arrays}
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} at={_ROOT} word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if [[ $word != -* && -n ${{_makima_words[$at $word]+set}} ]]; then
            at="$at $word"
        fi
    done
    if [[ $prev == --* && -n ${{_makima_words[$at $prev]+set}} ]]; then
        at="$at $prev"
    fi
    COMPREPLY=($(compgen -W "${{_makima_words[$at]}}" -- "$cur"))
}}
complete -F _makima makima
"""


def _fish(words: dict[str, list[str]]) -> str:
    paths = " ".join(shlex.quote(p) for p in sorted(words) if " --" not in p)
    lines = [
        "# fish completion of makima: makima completion fish | source",
        f"set -g __makima_paths {paths}",
        "function __makima_path",
        f"    set -l path {_ROOT}",
        "    for word in (commandline -opc)[2..-1]",
        '        if contains -- "$path $word" $__makima_paths',
        '            set path "$path $word"',
        "        end",
        "    end",
        "    echo $path",
        "end",
        "complete -c makima -f",
    ]
    for path, following in sorted(words.items()):
        if " --" in path:
            command, option = path.rsplit(" ", 1)
            lines.append(
                f"complete -c makima -n {shlex.quote(f'test (__makima_path) = {shlex.quote(command)}')} "
                f"-l {option.removeprefix('--')} -x -a {shlex.quote(' '.join(following))}"
            )
            continue
        condition = shlex.quote(f"test (__makima_path) = {shlex.quote(path)}")
        subcommands = [w for w in following if not w.startswith("-")]
        if subcommands:
            lines.append(f"complete -c makima -n {condition} -a {shlex.quote(' '.join(subcommands))}")
        for option in (w for w in following if w.startswith("--")):
            lines.append(f"complete -c makima -n {condition} -l {option.removeprefix('--')}")
    return "\n".join(lines) + "\n"
