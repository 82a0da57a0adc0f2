"""make bench: what chat.py costs above the floor, measured on this machine.

Each number is the median of several runs, beside a floor measured in the
same run, so the ratios hold from machine to machine:

1. stream CPU: user+sys time of the chat.py process for a one-shot reply of
   200,000 content chunks written to a pipe, beside a minimal loop (http.client,
   large read1 calls, split on newlines, json.loads each data line, write and
   flush each delta);
   and the same reply onto a pseudo-terminal, where chat.py sanitizes it and
   highlights it as markdown, beside the floor writing it to a terminal too;
   and a reply of 30,000 one-character "_" pieces onto a terminal, markdown
   on, beside --no-markdown (the highlighter's worst case must stay linear);
   and a loaded 16,000-message conversation trimmed by --max-context, beside
   the same run without trimming;
2. five turns of a piped chat against a loopback TLS server that makes each
   new connection wait 50 ms before its handshake (a stand-in for a remote
   API): wall time and the connections opened; with BENCH_BEFORE=FILE, the
   same for another chat.py beside it;
   start-up: wall time of `chat.py --help`, and until the console's first
   prompt appears on a terminal, beside `python3 -c pass`;
3. first-token latency: from the server writing the first token to it
   arriving at the reading end of chat.py's stdout pipe;
4. memory: peak RSS for the 200,000-chunk reply, and after a piped
   conversation of 2,000 messages, beside the floor's; and for a 2-chunk
   reply, which shows the fixed cost (imports, compiling the script) apart
   from what the reply itself costs;
5. growth: each parser of text a server sends (SSE decoding, the chunk
   merge, markdown, code extraction, the tool arguments' check, the
   sanitizer), CPU for an input of size n and of 4n, each shaped where a
   quadratic cost would hide; linear is a growth of about 4x.
   `python3 bench.py growth` runs only these.

The server is a raw socket on 127.0.0.1 that writes pre-rendered bytes as
fast as the socket takes them; it runs in this process, so only the client's
CPU is counted.  Standard library only.
"""

import importlib.util
import json
import os
import pty
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHAT_PY = os.environ.get("BENCH_CHAT_PY") or os.path.join(HERE, "chat.py")   # another to compare
PYTHON = sys.executable
CHUNKS = 200_000
TURNS = 1000                # 2,000 messages: a user line and a reply per turn
RUNS = int(os.environ.get("BENCH_RUNS", "5"))

FLOOR = r"""
import http.client, json, sys
host, port = sys.argv[1], int(sys.argv[2])
conn = http.client.HTTPConnection(host, port)
body = json.dumps({"model": "m", "stream": True,
                   "messages": [{"role": "user", "content": "hi"}]})
conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
response = conn.getresponse()
out, rest = sys.stdout, b""
while True:
    data = response.read1(65536)
    if not data:
        break
    lines = (rest + data).split(b"\n")
    rest = lines.pop()
    for line in lines:
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            content = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if content:
                out.write(content)
                out.flush()
"""


# ---------------------------------------------------------------------------
# The server: pre-rendered chunked event streams, written as fast as possible.
# ---------------------------------------------------------------------------

def event(content=None, finish=None):
    """One chat.completion.chunk as an HTTP chunk holding one SSE event."""
    chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk",
             "created": 1700000000, "model": "gpt-4o-mini", "system_fingerprint": "fp_bench",
             "choices": [{"index": 0, "delta": {} if content is None else {"content": content},
                          "logprobs": None, "finish_reason": finish}]}
    data = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
DONE = b"%x\r\n%s\r\n0\r\n\r\n" % (len(b"data: [DONE]\n\n"), b"data: [DONE]\n\n")


def render(pieces):
    """The whole body of a streamed reply of these content pieces."""
    return b"".join([event(p) for p in pieces] + [event(finish="stop"), DONE])


class Server:
    """Answers each POST with the next script: a list of byte strings to send,
    where a threading.Event means "note when the bytes before it were
    written, then wait for this"."""

    def __init__(self, script):
        self.script = script          # callable(n) -> list for the nth request
        self.marks = []               # perf_counter() when each Event was reached
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d/v1" % self.port
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._answer, args=(conn, n), daemon=True).start()
            n += 1

    def _answer(self, conn, n):
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = int([l.split(b":")[1] for l in head.split(b"\r\n")
                          if l.lower().startswith(b"content-length")][0])
            while len(body) < length:
                body += conn.recv(65536)
            try:
                sent_at = None
                for piece in self.script(n):
                    if isinstance(piece, threading.Event):
                        self.marks.append(sent_at)   # when the bytes before it went out
                        piece.wait(10)
                    else:
                        sent_at = time.perf_counter()   # taken before: the reader may be faster
                        conn.sendall(piece)
            except OSError:
                pass

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------------------
# Measuring a child process.
# ---------------------------------------------------------------------------

SCRATCH = tempfile.mkdtemp(prefix="chat-bench-")   # state and config of the runs


def clean_env(**extra):
    """No keys, proxies, user config or kept conversations of the user's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OPENAI_") and "proxy" not in k.lower()}
    env.update(XDG_STATE_HOME=os.path.join(SCRATCH, "state"),
               XDG_CONFIG_HOME=os.path.join(SCRATCH, "config"))
    env.update(extra)
    return env


# A child's peak RSS counts the memory of whatever forked it, up to its exec:
# started from this process (which holds the pre-rendered reply) every child
# would seem to use 150 MiB.  So children are forked by this small launcher
# (python -S, a few MiB), which reports their rusage on a pipe of its own.
LAUNCHER = r"""
import os, sys
report, argv = int(sys.argv[1]), sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.close(report)
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
os.write(report, b"%d %r %d" % (status, usage.ru_utime + usage.ru_stime, usage.ru_maxrss))
"""


def run_measured(argv, stdin_data=None, env=None, terminal=False):
    """Run argv with stdout drained from a pipe (or, with terminal, from a
    pseudo-terminal); return (cpu seconds, peak RSS in MiB, bytes written to
    stdout)."""
    report_read, report_write = os.pipe()
    if terminal:
        master, slave = os.openpty()
        stdout = slave
    else:
        stdout = subprocess.PIPE
    proc = subprocess.Popen([PYTHON, "-S", "-c", LAUNCHER, str(report_write)] + argv,
                            stdin=subprocess.PIPE if stdin_data else subprocess.DEVNULL,
                            stdout=stdout, stderr=subprocess.PIPE, env=env or clean_env(),
                            pass_fds=(report_write,))
    os.close(report_write)
    drained = {}

    def drain(name, read):
        size = 0
        while True:
            try:
                block = read(65536)
            except OSError:   # EIO: the terminal's last writer has gone
                break
            if not block:
                break
            size += len(block)
        drained[name] = size

    out_reader = (lambda n: os.read(master, n)) if terminal else proc.stdout.read1
    threads = [threading.Thread(target=drain, args=(n, r)) for n, r in
               (("out", out_reader), ("err", proc.stderr.read1))]
    for t in threads:
        t.start()
    if terminal:
        os.close(slave)
    if stdin_data:
        proc.stdin.write(stdin_data)
        proc.stdin.close()
    proc.wait()
    for t in threads:
        t.join()
    if terminal:
        os.close(master)
    with os.fdopen(report_read, "rb") as report:
        status, cpu, maxrss = report.read().split()
    if int(status) != 0 or proc.returncode != 0:
        raise SystemExit("bench: %s failed with status %s" % (argv, status.decode()))
    return float(cpu), int(maxrss) / 1024.0, drained["out"]


def long_conversation(path, messages=16000):
    """A saved conversation of that many messages, about 100 tokens each."""
    turns = [{"role": "user" if i % 2 == 0 else "assistant",
              "content": "message %d: %s" % (i, "lorem ipsum dolor sit amet " * 15)}
             for i in range(messages)]
    with open(path, "w") as f:
        json.dump({"model": "m", "messages": turns}, f)


def wall(argv, runs=21):
    """Median wall time of a command, in seconds."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL, env=clean_env(), check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class SlowHandshakeTLSServer:
    """A loopback TLS server that, like a remote API, makes each new
    connection cost time: 50 ms before its handshake.  It answers each
    request with a short streamed reply and keeps the connection open unless
    the client asked to close it; connections counts them."""

    DELAY = 0.05

    def __init__(self, certfile, keyfile):
        import ssl
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile, keyfile)
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = "https://127.0.0.1:%d/v1" % self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        time.sleep(self.DELAY)
        body = render(["Sure", "."])
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                data = b""
                while True:
                    while b"\r\n\r\n" not in data:
                        more = tls.recv(65536)
                        if not more:
                            return
                        data += more
                    head_in, _, data = data.partition(b"\r\n\r\n")
                    length = int([l.split(b":")[1] for l in head_in.split(b"\r\n")
                                  if l.lower().startswith(b"content-length")][0])
                    while len(data) < length:
                        data += tls.recv(65536)
                    data = data[length:]
                    tls.sendall(head + body)
                    if b"connection: close" in head_in.lower():
                        return
        except (OSError, ValueError):
            pass

    def close(self):
        self.sock.close()


def five_turns_over_tls(chat_py):
    """(median wall time, connections opened) of a five-turn piped chat
    against SlowHandshakeTLSServer, for the chat.py at chat_py."""
    folder = tempfile.mkdtemp(prefix="chat-bench-tls-")
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = SlowHandshakeTLSServer(cert, key)
    times, connections = [], []
    try:
        for _ in range(RUNS):
            before = server.connections
            started = time.perf_counter()
            subprocess.run([PYTHON, chat_py, "--base-url", server.url, "-i"],
                           input=b"one\ntwo\nthree\nfour\nfive\n", stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=clean_env(SSL_CERT_FILE=cert), check=True)
            times.append(time.perf_counter() - started)
            connections.append(server.connections - before)
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)
    return statistics.median(times), statistics.median(connections)


def until_prompt(runs=11):
    """Median time from starting the console on a terminal to its first prompt."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        pid, fd = pty.fork()
        if pid == 0:
            os.execve(PYTHON, [PYTHON, CHAT_PY, "--base-url", "http://127.0.0.1:9/v1"],
                      clean_env(TERM="dumb"))
        seen = b""
        while not seen.endswith(b"> "):
            if not select.select([fd], [], [], 10)[0]:
                raise SystemExit("bench: no prompt within 10 s")
            seen += os.read(fd, 4096)
        times.append(time.perf_counter() - started)
        os.write(fd, b"\x04")
        os.waitpid(pid, 0)
        os.close(fd)
    return statistics.median(times)


def first_token_latency(runs=11):
    """Median seconds from the server writing the first token to its arrival
    at the reading end of chat.py's stdout pipe."""
    delays = []
    for _ in range(runs):
        go_on = threading.Event()
        server = Server(lambda n: [HEAD + event("FIRST"), go_on,
                                   render([" rest"] * 3)])
        proc = subprocess.Popen([PYTHON, CHAT_PY, "hi"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=clean_env(OPENAI_BASE_URL=server.url))
        seen = b""
        while b"FIRST" not in seen:
            seen += os.read(proc.stdout.fileno(), 4096)
        arrived = time.perf_counter()
        while not server.marks:   # the server thread notes it just after writing
            time.sleep(0.001)
        delays.append(arrived - server.marks[0])
        go_on.set()
        proc.communicate(timeout=30)
        server.close()
    return statistics.median(delays)


# ---------------------------------------------------------------------------
# Growth: each parser of server text at two sizes, in this process.
# ---------------------------------------------------------------------------

def load_chat():
    """The chat.py under test, imported as a module."""
    spec = importlib.util.spec_from_file_location("chat_under_bench", CHAT_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sse_input(n, run):
    """n events of two data lines and a comment, then one event whose data
    line is n * 64 bytes, all cut into 1,000-byte reads at odd places."""
    body = b"".join(b": keep-alive\ndata: {\"n\": %d,\ndata: \"x\": \"%s\"}\n\n"
                    % (i, b"y" * (i % 50)) for i in range(n))
    body += b"data: " + b"z" * (n * 64) + b"\r\n\r\n"
    return [body[i:i + 1000] for i in range(0, len(body), 1000)]


def sse_decode(chat, reads):
    lines, events = chat.LineDecoder(), chat.SSEDecoder()
    for data in reads:
        for line in lines.feed(data):
            events.decode(line)


def merge_input(n, run):
    """n chunks: content, reasoning, a tool call's arguments in fragments
    without an index (found by the last call), a vendor's field."""
    out = []
    for i in range(n):
        delta = [{"content": "w%d " % i}, {"reasoning_content": "r "},
                 {"tool_calls": [{"function": {"arguments": '"k%d": 1, ' % i}}]},
                 {"vendor_x": "v"}][i % 4]
        if i == 0:
            delta["tool_calls"] = [{"index": 0, "id": "c1", "type": "function",
                                    "function": {"name": "f", "arguments": "{"}}]
        out.append({"id": "c", "choices": [{"index": 0, "delta": delta}]})
    return out


def merge(chat, chunks):
    accumulator = chat.ChatAccumulator()
    for chunk in chunks:
        accumulator.add(chunk)
    accumulator.result()


def markdown_input(n, run):
    """n pieces of markdown whose markers never close: emphasis, code spans,
    links, fences, headings, each piece a few characters."""
    pieces = ["_", "*", "**", "`", "[", "](", "\n", "# ", "``", "```", "~", " x", "\\"]
    return [pieces[(i * 7) % len(pieces)] for i in range(n)]


def markdown(chat, pieces):
    highlighter = chat.MarkdownHighlighter()
    for piece in pieces:
        highlighter.feed(piece)
    highlighter.end()


def code_input(n, run):
    """n fence lines of backticks of varying length, few of them closed,
    between lines of code."""
    return "".join("`" * (3 + i % 7) + "py\nx = %d\n" % i for i in range(n))


def argument_input(n, run):
    """A tool call's arguments: an object of n keys, the last one repeated
    (and a text not checked before: the result of a check is kept)."""
    return '{"run": %d, %s}' % (run, ", ".join('"key%d": %d' % (i, i)
                                               for i in list(range(n)) + [n - 1]))


def check_arguments(chat, text):
    try:
        chat.canonical_arguments(text)
    except ValueError:   # the repeated key: the whole text was looked at
        pass


def sanitizer_input(n, run):
    """n pieces of text with escape sequences, controls and bidi overrides."""
    return "".join("ok \x1b[31mred\x1b[0m \u202e%d\x07\x9b " % i for i in range(n))


GROWTH = [   # (what, input(n, run), parse(chat, input), n)
    ("SSE decoding (events, a long line)", sse_input, sse_decode, 20000),
    ("chunk merge (content, reasoning, tool call fragments)", merge_input, merge, 20000),
    ("markdown (markers that never close)", markdown_input, markdown, 40000),
    ("code extraction, chat.code_blocks (unclosed fences)", code_input,
     lambda chat, text: chat.code_blocks(text), 160000),
    ("tool arguments' check (keys, one repeated)", argument_input, check_arguments, 20000),
    ("sanitizer (escapes, controls, bidi)", sanitizer_input,
     lambda chat, text: chat.sanitize(text), 40000),
]


def growth(chat, runs=RUNS):
    """Rows of (what, CPU at n, CPU at 4n, their ratio) for each parser."""
    rows = []
    for what, make, parse, n in GROWTH:
        times = []
        for size in (n, 4 * n):
            samples = []
            for run in range(runs):
                data = make(size, run)
                started = time.process_time()
                parse(chat, data)
                samples.append(time.process_time() - started)
            times.append(statistics.median(samples))
        rows.append(("%s, n=%s and 4n, CPU" % (what, format(n, ",")), "%.3f s" % times[0],
                     "%.3f s (4n)" % times[1], times[1] / times[0], "about 4x"))
    return rows


def print_table(rows):
    print("| measure | chat.py | floor | ratio | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, ours, floor, ratio, target in rows:
        print("| %s | %s | %s | %s | %s |" % (name, ours, floor,
                                             "" if ratio is None else "%.2fx" % ratio, target))


# ---------------------------------------------------------------------------
# The benchmark.
# ---------------------------------------------------------------------------

def main():
    words = [" w%d" % (i % 1000) for i in range(CHUNKS)]
    body = HEAD + render(words)
    expected = len("".join(words).encode()) + 1   # chat.py ends the reply with a newline
    server = Server(lambda n: [body])
    chat_argv = [PYTHON, CHAT_PY, "--base-url", server.url, "hi"]
    floor_argv = [PYTHON, "-c", FLOOR, "127.0.0.1", str(server.port)]

    chat_runs, floor_runs = [], []
    for _ in range(RUNS):   # interleaved, so drift hits both alike
        cpu, rss, size = run_measured(chat_argv)
        assert size == expected, (size, expected)
        chat_runs.append((cpu, rss))
        cpu, rss, size = run_measured(floor_argv)
        assert size == expected - 1, (size, expected)
        floor_runs.append((cpu, rss))
    term_runs, term_floor_runs = [], []
    for _ in range(RUNS):   # the same reply onto a terminal, markdown highlighted
        term_runs.append(run_measured(chat_argv, env=clean_env(TERM="xterm"), terminal=True)[0])
        term_floor_runs.append(run_measured(floor_argv, env=clean_env(TERM="xterm"),
                                            terminal=True)[0])
    chat_cpu = statistics.median(c for c, _ in chat_runs)
    floor_cpu = statistics.median(c for c, _ in floor_runs)
    term_cpu, term_floor_cpu = statistics.median(term_runs), statistics.median(term_floor_runs)
    chat_rss = statistics.median(r for _, r in chat_runs)
    floor_rss = statistics.median(r for _, r in floor_runs)
    server.close()

    short = HEAD + render(["Sure", "."])
    server = Server(lambda n: [short])
    tiny_chat = statistics.median(run_measured([PYTHON, CHAT_PY, "--base-url", server.url,
                                                "hi"])[1] for _ in range(RUNS))
    tiny_floor = statistics.median(run_measured([PYTHON, "-c", FLOOR, "127.0.0.1",
                                                 str(server.port)])[1] for _ in range(RUNS))
    turns = b"".join(b"message number %d\n" % i for i in range(TURNS))
    talk = [run_measured([PYTHON, CHAT_PY, "--base-url", server.url, "-i"], stdin_data=turns)
            for _ in range(max(1, RUNS // 2))]
    talk_rss = statistics.median(r for _, r, _ in talk)
    saved = "/tmp/chat-bench-long.json"
    long_conversation(saved)
    plain_argv = [PYTHON, CHAT_PY, "--base-url", server.url, "--load", saved, "hi"]
    trimmed, untrimmed = [], []
    for _ in range(RUNS):
        untrimmed.append(run_measured(plain_argv)[0])
        trimmed.append(run_measured(plain_argv[:-1] + ["--max-context", "50000", "hi"])[0])
    trimmed_cpu, untrimmed_cpu = statistics.median(trimmed), statistics.median(untrimmed)
    os.unlink(saved)
    server.close()

    markers = HEAD + render(["_"] * 30000)   # the markdown highlighter's worst case
    server = Server(lambda n: [markers])
    marker_argv = [PYTHON, CHAT_PY, "--base-url", server.url, "hi"]
    marked, unmarked = [], []
    for _ in range(RUNS):
        marked.append(run_measured(marker_argv, env=clean_env(TERM="xterm"), terminal=True)[0])
        unmarked.append(run_measured(marker_argv[:-1] + ["--no-markdown", "hi"],
                                     env=clean_env(TERM="xterm"), terminal=True)[0])
    marked_cpu, unmarked_cpu = statistics.median(marked), statistics.median(unmarked)
    server.close()

    tls_wall, tls_connections = five_turns_over_tls(CHAT_PY)
    before = os.environ.get("BENCH_BEFORE")   # a chat.py to compare with, e.g. main's
    tls_before = five_turns_over_tls(before) if before else None

    help_wall = wall([PYTHON, CHAT_PY, "--help"])
    pass_wall = wall([PYTHON, "-c", "pass"])
    prompt = until_prompt()
    latency = first_token_latency()

    rows = [
        ("stream CPU, %s chunks to a pipe" % format(CHUNKS, ","), "%.2f s" % chat_cpu,
         "%.2f s" % floor_cpu, chat_cpu / floor_cpu, "<= 1.3x"),
        ("stream CPU, %s chunks onto a terminal, markdown on" % format(CHUNKS, ","),
         "%.2f s" % term_cpu, "%.2f s" % term_floor_cpu, term_cpu / term_floor_cpu, "<= 2x"),
        ("30,000 one-character _ pieces onto a terminal, markdown on, CPU",
         "%.2f s" % marked_cpu, "%.2f s (--no-markdown)" % unmarked_cpu,
         marked_cpu / unmarked_cpu, "<= 2x"),
        ("16,000-message conversation trimmed to 50,000 tokens, CPU", "%.2f s" % trimmed_cpu,
         "%.2f s (untrimmed)" % untrimmed_cpu, trimmed_cpu / untrimmed_cpu, "<= 1.5x"),
        ("five turns over TLS, 50 ms a new connection, wall (connections)",
         "%.0f ms (%d)" % (tls_wall * 1e3, tls_connections),
         "%.0f ms (%d) BENCH_BEFORE" % (tls_before[0] * 1e3, tls_before[1]) if tls_before else "",
         tls_wall / tls_before[0] if tls_before else None, "1 connection"),
        ("--help, wall", "%.1f ms" % (help_wall * 1e3), "%.1f ms" % (pass_wall * 1e3),
         help_wall / pass_wall, "<= 2x"),
        ("first prompt on a terminal, wall", "%.1f ms" % (prompt * 1e3),
         "%.1f ms" % (pass_wall * 1e3), prompt / pass_wall, ""),
        ("first token, server write to pipe", "%.2f ms" % (latency * 1e3), "", None, "<= 5 ms"),
        ("peak RSS, 2-chunk reply (fixed cost)", "%.1f MiB" % tiny_chat,
         "%.1f MiB" % tiny_floor, tiny_chat / tiny_floor, ""),
        ("peak RSS, %s-chunk reply" % format(CHUNKS, ","), "%.1f MiB" % chat_rss,
         "%.1f MiB" % floor_rss, chat_rss / floor_rss, "<= 1.2x"),
        ("  of which the reply (above fixed cost)", "%.1f MiB" % (chat_rss - tiny_chat),
         "%.1f MiB" % (floor_rss - tiny_floor), None,
         "text: %.1f MiB" % ((expected - 1) / 2**20)),
        ("peak RSS, %s-message conversation" % format(2 * TURNS, ","), "%.1f MiB" % talk_rss,
         "%.1f MiB" % floor_rss, talk_rss / floor_rss, ""),
    ]
    rows += growth(load_chat())
    print("chat.py benchmark: Python %s, %d cores, median of %d runs"
          % (sys.version.split()[0], os.cpu_count(), RUNS))
    print()
    print_table(rows)


if __name__ == "__main__":
    try:
        if sys.argv[1:] == ["growth"]:
            print_table(growth(load_chat()))
        else:
            main()
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
