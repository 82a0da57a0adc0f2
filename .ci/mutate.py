"""Mutation-test chat.py's pure core and what hardens it: make one small
change at a time inside the functions named below, run the tests that can
notice it, and list the changes no test noticed.  Standard library only
(Python 3.9+ for ast.unparse).

    python3 .ci/mutate.py [--jobs N] [--targets A,B] [--only TEXT] [--list]

Each mutant is a copy of chat.py in a scratch folder with one change:
a comparison or arithmetic operator swapped, `and`/`or` swapped, a `not`
dropped, a number moved by one, a string or a truth value changed, a return
value replaced by None, or one statement replaced by `pass`.  A mutant is
killed when the tests fail, hung when they run past the time limit.
"""

import argparse
import ast
import copy
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What is mutated, group by group, each with the tests that can notice its
# mutants (a pytest -k expression; None: all the fast tests), so that a group
# takes minutes, not hours.
GROUPS = [
    (None, [   # the pure core, as issue 10 names it; the accumulator is five pieces now
        "LineDecoder", "SSEDecoder", "iter_chunks", "parse_event", "ChatAccumulator",
        "merge_delta", "_first_value", "_Indexed", "_finished", "_TextBuilder",
        "retry_delay", "normalize_base_url", "fit_context"]),
    ("accumulator or wrong_type or unnamed or vendor_field or true_is_not or takes_true"
     " or null_is_absent or mistral or content_part or surrogate or emoji or repeated_key"
     " or checked_once or tool_arguments or param or typed or load or whole_answer"
     " or no_json_type or read_as_json", [   # what hardens it (issue 25): the typed boundary
        "conform", "_conform_object", "_conform_list", "conform_chunk", "_arguments",
        "_history_content", "_content_parts", "completion_to_chunk", "mend_surrogates",
        "_mend_all", "_is_number", "_is_whole", "_is_function_list", "check_params",
        "_unique_keys", "_checked_arguments"]),   # and the argument check
    ("connection or keep_alive or stale or idle or retried or interrupted or closed"
     " or interim or tunnel or proxy or credential or origin",
     ["keep_alive", "may_carry_credentials", "url_origin"]),   # the pool, the credential rule
    ("kept or conversation or save or load or store or list or show or continue or origin"
     " or ctrl_c or carr or go_back or profile or file or image or audio or huge", [   # the store of kept conversations
        "write_atomically", "save_conversation", "read_bounded", "private_folder",
        "_signature", "_interrupts_deferred", "with_origin", "split_origin",
        "ConversationLog", "Keeper"]),
    ("mcp", [   # MCP
        "expand_variables", "mcp_specs", "_mcp_spec", "_Stdio", "_Http", "_Sse", "McpServer",
        "jsonrpc_message", "_finite", "_open_log", "mcp_environment", "mcp_secrets",
        "_progress_text", "mcp_result", "mcp_tool_name", "McpTools"]),
    ("status or fit_width or narrow or retry_counts or running_tool or waiting",
     ["StatusLine", "_fit_width"]),   # the status line
]
TARGETS = [name for _, names in GROUPS for name in names]
SELECT = {name: select for select, names in GROUPS for name in names}
# The tests that exercise the pure core; the slow terminal and interpreter
# tests are left out (they test the edges, not these functions).
DESELECT = "not every_python and not e2e and not paste"
TIMEOUT = 300               # seconds a mutant's tests may take (the whole fast suite
                            # takes about 100 on a loaded 2-core machine)

SWAPS = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt,
    ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv, ast.LShift: ast.RShift,
    ast.RShift: ast.LShift, ast.And: ast.Or, ast.Or: ast.And,
}


def target_nodes(tree):
    """The function and class nodes named in TARGETS."""
    found = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in TARGETS:
            found.append(node)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and "%s.%s" % (node.name, item.name) in TARGETS:
                    found.append(item)
    return found


def mutations(node):
    """(description, apply) for each mutation of this one node."""
    line = getattr(node, "lineno", 0)
    out = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in SWAPS:
                def apply(n, i=i):
                    n.ops[i] = SWAPS[type(n.ops[i])]()
                out.append(("%d: %s -> %s" % (line, type(op).__name__, SWAPS[type(op)].__name__), apply))
    elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in SWAPS:
        def apply(n):
            n.op = SWAPS[type(n.op)]()
        out.append(("%d: %s -> %s" % (line, type(node.op).__name__, SWAPS[type(node.op)].__name__), apply))
    elif isinstance(node, ast.BoolOp):
        def apply(n):
            n.op = SWAPS[type(n.op)]()
        out.append(("%d: %s -> %s" % (line, type(node.op).__name__, SWAPS[type(node.op)].__name__), apply))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("%d: drop not" % line, "unwrap"))
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            def apply(n):
                n.value = not n.value
            out.append(("%d: %r -> %r" % (line, value, not value), apply))
        elif isinstance(value, int):
            def apply(n):
                n.value = n.value + 1
            out.append(("%d: %r -> %r" % (line, value, value + 1), apply))
        elif isinstance(value, (str, bytes)) and value:
            def apply(n):
                n.value = n.value[:0] + n.value * 0 + (b"XX" if isinstance(n.value, bytes) else "XX") + n.value
            out.append(("%d: %r -> XX%s" % (line, value[:20], "..." if len(value) > 20 else ""), apply))
    elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        def apply(n):
            n.value = ast.Constant(None)
        out.append(("%d: return None" % line, apply))
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.Expr, ast.Raise, ast.AnnAssign)) and not (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
        out.append(("%d: delete %s" % (line, ast.unparse(node).splitlines()[0][:60]), "pass"))
    return out


def enumerate_mutants(source):
    """A list of (description, path to the node, mutation index)."""
    tree = ast.parse(source)
    result = []
    for top in target_nodes(tree):
        skip = {id(n.value) for n in ast.walk(top) if isinstance(n, ast.Expr)}   # docstrings
        skip |= {id(v) for n in ast.walk(top) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(top):
            if id(node) in skip:
                continue
            for k, (description, _) in enumerate(mutations(node)):
                result.append((description, (node.lineno, node.col_offset, type(node).__name__,
                                             getattr(node, "end_col_offset", 0)), k,
                               top.name))
    return result


def mutate(source, where, k):
    """source with mutation k applied at the node identified by where."""
    tree = ast.parse(source)
    for top in target_nodes(tree):
        for parent in ast.walk(top):
            for field, value in ast.iter_fields(parent):
                children = value if isinstance(value, list) else [value]
                for i, child in enumerate(children):
                    if not isinstance(child, ast.AST) or not hasattr(child, "lineno"):
                        continue
                    if (child.lineno, child.col_offset, type(child).__name__,
                            getattr(child, "end_col_offset", 0)) != where:
                        continue
                    description, apply = mutations(child)[k]
                    if apply == "pass":
                        new = ast.Pass()
                    elif apply == "unwrap":
                        new = child.operand
                    else:
                        new = copy.deepcopy(child)
                        apply(new)
                    if isinstance(value, list):
                        value[i] = new
                    else:
                        setattr(parent, field, new)
                    return ast.unparse(ast.fix_missing_locations(tree))
    raise LookupError(where)


def selection(mutant):
    """The pytest -k expression for a mutant (None: the unmutated run)."""
    select = SELECT.get(mutant[3]) if mutant is not None else None
    return DESELECT if select is None else "(%s) and (%s)" % (DESELECT, select)


def run_one(source, mutant, scratch_root):
    folder = tempfile.mkdtemp(dir=scratch_root)
    try:
        for name in ("test_chat.py", "README.md", "Makefile"):   # (what the tests read)
            shutil.copy(os.path.join(HERE, name), folder)
        shutil.copytree(os.path.join(HERE, ".ci"), os.path.join(folder, ".ci"))
        with open(os.path.join(folder, "chat.py"), "w") as f:
            f.write(source if mutant is None else mutate(source, mutant[1], mutant[2]))
        os.chmod(os.path.join(folder, "chat.py"), 0o755)   # (a test holds it executable)
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                 "-o", "markers=e2e: e2e", "-k", selection(mutant), "test_chat.py"],
                cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                timeout=TIMEOUT if mutant is not None else 3 * TIMEOUT)
        except subprocess.TimeoutExpired:
            if mutant is None:
                print("the unmutated tests ran past %d s" % (3 * TIMEOUT))
            return "hung"
        if mutant is None and proc.returncode != 0:
            print(proc.stdout.decode("utf-8", "replace")[-3000:])
        return "survived" if proc.returncode == 0 else "killed"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", help="only mutants whose description contains this")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--targets", help="comma-separated names to mutate instead of TARGETS")
    parser.add_argument("-k", dest="select", help="run only the tests pytest -k selects")
    parser.add_argument("--all-tests", action="store_true",
                        help="every mutant against all the fast tests, not its group's")
    parser.add_argument("--rerun", help="only the mutants listed as survived in this earlier output")
    args = parser.parse_args()
    global DESELECT
    if args.targets:
        TARGETS[:] = args.targets.split(",")
    if args.select:
        DESELECT = "(%s) and (%s)" % (DESELECT, args.select)
    if args.all_tests:
        SELECT.clear()
    source = open(os.path.join(HERE, "chat.py")).read()
    mutants = enumerate_mutants(source)
    if args.only:
        mutants = [m for m in mutants if args.only in m[0]]
    if args.rerun:
        wanted = {line.split(None, 1)[1].rstrip("\n") for line in open(args.rerun)
                  if line.startswith(("survived ", "hung "))}
        mutants = [m for m in mutants if m[0] in wanted]
    if args.list:
        for m in mutants:
            print(m[0])
        return 0
    scratch = tempfile.mkdtemp(prefix="mutants-")
    if run_one(source, None, scratch) != "survived":
        print("the tests fail without any mutation: fix them first")
        return 1
    counts = {"killed": 0, "survived": 0, "hung": 0}
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            for mutant, outcome in zip(mutants, pool.map(
                    lambda m: run_one(source, m, scratch), mutants)):
                counts[outcome] += 1
                if outcome != "killed":
                    print("%-8s %s" % (outcome, mutant[0]), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total = sum(counts.values())
    print("%d mutants: %d killed, %d hung, %d survived" % (
        total, counts["killed"], counts["hung"], counts["survived"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
