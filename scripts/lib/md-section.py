"""Keeps one `## ` section of a Markdown file up to date, for the scripts that measure one part
of BENCHMARKS.md (scripts/coldstart.sh, scripts/bench.sh --profile).

  md-section.py put FILE PREFIX   replaces the section whose heading starts with `## PREFIX` by
                                  standard input (or appends it)
  md-section.py get FILE PREFIX   prints that section, or nothing
"""
import sys


def split(text, prefix):
    """(before, section, after) around the section headed `## prefix...`."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.startswith("## " + prefix)), None)
    if start is None:
        return text, "", ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])


def main(command, path, prefix):
    try:
        text = open(path).read()
    except FileNotFoundError:
        text = ""
    before, section, after = split(text, prefix)
    if command == "get":
        sys.stdout.write(section)
        return
    new = sys.stdin.read().rstrip("\n") + "\n"
    if section:
        text = before + new + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + new
    open(path, "w").write(text)


main(*sys.argv[1:4])
