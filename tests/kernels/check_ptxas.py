#!/usr/bin/env python3
"""Register, stack-frame and spill check of the CUDA kernels.

Recompiles the device code of every kernels/cuda/*.cu with the exact command
CMake uses (from compile_commands.json: same flags, same architectures), as
--fatbin (device code only) with -Xptxas -v, prints the registers, stack frame
and spills of every kernel per architecture, and fails if any function has a
non-zero stack frame, spill stores or spill loads: local arrays indexed at run
time, printf, recursion or big structs by value put one there.

  check_ptxas.py --compile-commands build/compile_commands.json --sources kernels/cuda
  check_ptxas.py --self-test     # the ptxas log parser on canned logs
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

RE_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
RE_PROPS = re.compile(r"Function properties for (\S+)")
RE_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
RE_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")
RE_ARCH = re.compile(r"for '(sm_\d+a?)'")


def parse_ptxas(log):
    """Function records from a `ptxas -v` log: name, arch, kind, registers, smem, stack, spills."""
    funcs = []
    by_key = {}
    arch = "?"
    current = None
    for line in log.splitlines():
        m = RE_ARCH.search(line)
        if m:
            arch = m.group(1)
        m = RE_ENTRY.search(line)
        if m:
            current = {"name": m.group(1), "arch": m.group(2), "entry": True, "registers": None, "smem": 0,
                       "stack": None, "spill_stores": None, "spill_loads": None}
            funcs.append(current)
            by_key[(current["name"], current["arch"])] = current
            continue
        m = RE_PROPS.search(line)
        if m:
            key = (m.group(1), arch)
            current = by_key.get(key)
            if current is None:  # a non-inlined device function (has its own frame)
                current = {"name": m.group(1), "arch": arch, "entry": False, "registers": None, "smem": 0,
                           "stack": None, "spill_stores": None, "spill_loads": None}
                funcs.append(current)
                by_key[key] = current
            continue
        m = RE_FRAME.search(line)
        if m and current is not None:
            current["stack"], current["spill_stores"], current["spill_loads"] = (int(g) for g in m.groups())
            continue
        m = RE_USED.search(line)
        if m and current is not None:
            current["registers"] = int(m.group(1))
            current["smem"] = int(m.group(2) or 0)
    return funcs


def violations(funcs):
    return [f for f in funcs if (f["stack"] or 0) > 0 or (f["spill_stores"] or 0) > 0 or (f["spill_loads"] or 0) > 0]


def demangle(names):
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def short(name, width=110):
    name = name.replace("xcam::kernels::cuda_detail::", "").replace("(anonymous namespace)::", "")
    return name if len(name) <= width else name[: width - 3] + "..."


def device_only_command(command, out_file):
    """The CMake compile command turned into a device-only, verbose-ptxas one."""
    args = shlex.split(command)
    # Drop a compiler launcher (ccache) in front of nvcc.
    while args and not os.path.basename(args[0]).startswith("nvcc"):
        args.pop(0)
    result = []
    skip_next = False
    for a in args:
        if skip_next:
            skip_next = False
            continue
        if a in ("-o", "-MT", "-MF", "-MQ"):
            skip_next = True
            continue
        if a in ("-c", "-MD", "-MMD") or a.startswith("-MF") or a.startswith("-MT"):
            continue
        result.append(a)
    return result + ["--fatbin", "-Xptxas", "-v", "-o", out_file]


def self_test():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z4goodPf' for 'sm_80'
ptxas info    : Function properties for _Z4goodPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 1 barriers, 44 bytes smem, 368 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3badPf' for 'sm_90'
ptxas info    : Function properties for _Z3badPf
    40 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 20 registers, used 0 barriers, 360 bytes cmem[0]
ptxas info    : Compiling entry function '_Z5spillPf' for 'sm_90'
ptxas info    : Function properties for _Z5spillPf
    0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 360 bytes cmem[0]
ptxas info    : Function properties for _Z6helperv
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""
    funcs = parse_ptxas(log)
    names = {(f["name"], f["arch"]): f for f in funcs}
    ok = True
    def expect(cond, what):
        nonlocal ok
        if not cond:
            print(f"self-test FAILED: {what}")
            ok = False
    expect(len(funcs) == 4, f"4 functions parsed, got {len(funcs)}")
    expect(names.get(("_Z4goodPf", "sm_80"), {}).get("registers") == 14, "registers of good")
    expect(names.get(("_Z4goodPf", "sm_80"), {}).get("smem") == 44, "smem of good")
    bad = {f["name"] for f in violations(funcs)}
    expect(bad == {"_Z3badPf", "_Z5spillPf", "_Z6helperv"}, f"flagged {sorted(bad)}")
    cmd = ("/usr/bin/ccache /usr/local/cuda/bin/nvcc -DX=1 --options-file a.rsp -O3 -x cu -c /s/k.cu "
           "-o k.cu.o -MD -MT k.cu.o -MF k.cu.o.d")
    dev = device_only_command(cmd, "/tmp/k.fatbin")
    expect(dev[0] == "/usr/local/cuda/bin/nvcc", "launcher dropped")
    expect("-c" not in dev and "k.cu.o" not in dev and "-MD" not in dev and "k.cu.o.d" not in dev, f"{dev}")
    expect(dev[-5:] == ["--fatbin", "-Xptxas", "-v", "-o", "/tmp/k.fatbin"], f"{dev}")
    print("self-test " + ("passed" if ok else "FAILED"))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile-commands", help="compile_commands.json of the build")
    ap.add_argument("--sources", help="directory whose *.cu files are checked (kernels/cuda)")
    ap.add_argument("--self-test", action="store_true", help="check the log parser, then the sources if given")
    args = ap.parse_args()

    if args.self_test and not self_test():
        return 1
    if not args.compile_commands:
        if args.self_test:
            return 0
        ap.error("--compile-commands is required")

    sources = os.path.realpath(args.sources)
    entries = [e for e in json.load(open(args.compile_commands))
               if e["file"].endswith(".cu") and os.path.dirname(os.path.realpath(e["file"])) == sources]
    expected = sorted(f for f in os.listdir(sources) if f.endswith(".cu"))
    found = sorted(os.path.basename(e["file"]) for e in entries)
    if found != expected:
        print(f"compile_commands.json covers {found}, the directory has {expected}: re-run cmake")
        return 1

    failed = False
    all_funcs = []
    with tempfile.TemporaryDirectory() as tmp:
        for e in sorted(entries, key=lambda e: e["file"]):
            base = os.path.basename(e["file"])
            cmd = device_only_command(e["command"], os.path.join(tmp, base + ".fatbin"))
            proc = subprocess.run(cmd, cwd=e["directory"], capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{base}: nvcc failed ({proc.returncode}):\n  {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}")
                failed = True
                continue
            funcs = parse_ptxas(proc.stdout + proc.stderr)
            if not [f for f in funcs if f["entry"]]:
                print(f"{base}: no kernels in the ptxas log (was -Xptxas -v honoured?)")
                failed = True
            for f in funcs:
                f["file"] = base
            all_funcs += funcs

    names = demangle(sorted({f["name"] for f in all_funcs}))
    print(f"{'file':<22} {'arch':<6} {'regs':>4} {'smem':>6} {'stack':>5} {'st':>4} {'ld':>4}  kernel")
    for f in all_funcs:
        print(f"{f['file']:<22} {f['arch']:<6} {f['registers'] if f['registers'] is not None else '-':>4} "
              f"{f['smem']:>6} {f['stack'] or 0:>5} {f['spill_stores'] or 0:>4} {f['spill_loads'] or 0:>4}  "
              f"{'' if f['entry'] else '[device function] '}{short(names[f['name']])}")
    bad = violations(all_funcs)
    for f in bad:
        print(f"FAIL {f['file']} {f['arch']}: {f['stack']} bytes stack frame, {f['spill_stores']} bytes spill "
              f"stores, {f['spill_loads']} bytes spill loads in {names[f['name']]}")
    print(f"{len([f for f in all_funcs if f['entry']])} kernels checked, {len(bad)} with a stack frame or spills")
    return 1 if failed or bad else 0


if __name__ == "__main__":
    sys.exit(main())
