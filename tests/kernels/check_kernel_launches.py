#!/usr/bin/env python3
"""Lint: every CUDA kernel launch is checked.

Every `kernel<<<grid, block, ...>>>(args);` statement in kernels/cuda/*.cu and
*.cuh must be followed, as the very next statement, by
`XCAM_KERNEL_LAUNCH_CHECK();` (see kernels/cuda/launch_check.cuh), so that a
bad launch configuration fails where it happened, not at the next sync
(PyTorch tools/check_kernel_launches.py). Comments and string literals are
ignored. Prints file:line of every unchecked launch and exits 1 if any.

  check_kernel_launches.py kernels/cuda            # scan a directory (or files)
  check_kernel_launches.py --self-test kernels/cuda  # test the lint first, then scan
"""
import argparse
import os
import re
import sys

CHECK = re.compile(r"XCAM_KERNEL_LAUNCH_CHECK\s*\(\s*\)\s*;")


def blank_comments_and_strings(text):
    """Replaces comments and string/char literals with spaces, keeping newlines (and so line numbers)."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
        else:
            i += 1
            continue
        for k in range(i, j):
            if out[k] != "\n":
                out[k] = " "
        i = j
    return "".join(out)


def skip_space(text, i):
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def match_paren(text, i):
    """Index just past the ')' matching the '(' at text[i], or -1."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return j + 1
    return -1


def unchecked_launches(text):
    """1-based line numbers of launches not followed by XCAM_KERNEL_LAUNCH_CHECK();."""
    code = blank_comments_and_strings(text)
    bad = []
    pos = 0
    while True:
        start = code.find("<<<", pos)
        if start < 0:
            return bad
        line = code.count("\n", 0, start) + 1
        close = code.find(">>>", start + 3)
        pos = start + 3
        if close < 0:
            bad.append(line)
            continue
        i = skip_space(code, close + 3)
        end = match_paren(code, i) if i < len(code) and code[i] == "(" else -1
        if end < 0:
            bad.append(line)
            continue
        i = skip_space(code, end)
        if i >= len(code) or code[i] != ";":
            bad.append(line)
            continue
        i = skip_space(code, i + 1)
        if not CHECK.match(code, i):
            bad.append(line)
        pos = max(pos, i)


def source_files(paths):
    for p in paths:
        if os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                if name.endswith((".cu", ".cuh")):
                    yield os.path.join(p, name)
        else:
            yield p


SELF_TESTS = [
    # (name, source, expected unchecked lines)
    ("unchecked launch", "void f() {\n  k<<<1, 1>>>(x);\n  g();\n}\n", [2]),
    ("unchecked at end of file", "void f() {\n  k<<<1, 1>>>(x);\n", [2]),
    ("checked launch", "void f() {\n  k<<<1, 1, 0, s>>>(h(x), y);\n  XCAM_KERNEL_LAUNCH_CHECK();\n}\n", []),
    ("checked on the same line", "k<<<g, b>>>(x); XCAM_KERNEL_LAUNCH_CHECK ( ) ;\n", []),
    ("multi-line template launch",
     "kern<T, 2><<<dim3(a, b),\n   block, 0,\n   stream>>>(p(1, (2)),\n   q);\n\n  XCAM_KERNEL_LAUNCH_CHECK();\n", []),
    ("check after another statement", "k<<<1, 1>>>(x);\nint y = 0;\nXCAM_KERNEL_LAUNCH_CHECK();\n", [1]),
    ("check only in a comment", "k<<<1, 1>>>(x);\n// XCAM_KERNEL_LAUNCH_CHECK();\n", [1]),
    ("check with a comment between", "k<<<1, 1>>>(x);  // launch\n/* then */ XCAM_KERNEL_LAUNCH_CHECK();\n", []),
    ("launch in comments and strings",
     "// k<<<1, 1>>>(x);\n/* k<<<1,1>>>(y); */\nconst char* s = \"k<<<1, 1>>>(z);\";\n", []),
    ("second of two launches unchecked",
     "a<<<1, 1>>>(x);\nXCAM_KERNEL_LAUNCH_CHECK();\nif (c) {\n  b<<<2, 2>>>(y);\n}\n", [4]),
    ("check without semicolon", "k<<<1, 1>>>(x);\nXCAM_KERNEL_LAUNCH_CHECK()\n", [1]),
]


def self_test():
    ok = True
    for name, src, want in SELF_TESTS:
        got = unchecked_launches(src)
        if got != want:
            print(f"self-test FAILED: {name}: flagged lines {got}, expected {want}")
            ok = False
    print(f"self-test {'passed' if ok else 'FAILED'} ({len(SELF_TESTS)} cases)")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help="directories (their *.cu, *.cuh) or files to scan")
    ap.add_argument("--self-test", action="store_true", help="test the lint on built-in snippets first")
    args = ap.parse_args()
    if args.self_test and not self_test():
        return 1
    if not args.paths and not args.self_test:
        ap.error("nothing to scan")
    failures, launches, files = 0, 0, 0
    for path in source_files(args.paths):
        text = open(path, encoding="utf-8").read()
        files += 1
        launches += blank_comments_and_strings(text).count("<<<")
        for line in unchecked_launches(text):
            print(f"{path}:{line}: kernel launch not followed by XCAM_KERNEL_LAUNCH_CHECK();")
            failures += 1
    if args.paths:
        print(f"{files} files, {launches} launches, {failures} unchecked")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
