#!/usr/bin/env python3
# Same-run CPU A/B of execd binaries over N `true` commands: threads run time
# (/proc/<pid>/task/*/schedstat) per command, binaries alternating.
# Usage: .ci/spawn-ab.py N ROUNDS {off-sh|auto-sh|off-argv|auto-argv} BIN...
import http.client, json, os, subprocess, sys, time, tempfile, shutil
def cpu(pid):
    # precise: sum of the threads' run time in ns (schedstat), live threads
    t = 0
    for tid in os.listdir(f'/proc/{pid}/task'):
        try: t += int(open(f'/proc/{pid}/task/{tid}/schedstat').read().split()[0])
        except OSError: pass
    return t / 1e9
def run(binary, args, n, body):
    data = tempfile.mkdtemp(prefix='eng-ab-'); os.rmdir(data)
    p = subprocess.Popen([binary, '--port', '0', '--bind', '127.0.0.1', '--log-level', '2', '--data-dir', data] + args,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    line = p.stdout.readline().decode()
    host, port = line.strip().rsplit(' ',1)[1].rsplit(':',1)
    c = http.client.HTTPConnection(host, int(port))
    b = json.dumps(body)
    def one():
        c.request('POST', '/command', b, {'Content-Type': 'application/json'})
        r = c.getresponse(); out = r.read()
        assert r.status == 200, (r.status, out)
        assert b'execution_complete' in out, out
    for _ in range(50): one()  # warm up (pool, stacks)
    c0 = cpu(p.pid); t0 = time.time()
    for _ in range(n): one()
    c1 = cpu(p.pid); t1 = time.time()
    p.terminate(); p.wait(); shutil.rmtree(data, ignore_errors=True)
    return (c1 - c0) / n * 1e6, (t1 - t0) / n * 1e6
n = int(sys.argv[1]); rounds = int(sys.argv[2]); mode = sys.argv[3]; bins = sys.argv[4:]
body = {'command': 'true'} if mode.endswith('sh') else {'argv': ['/bin/true']}
args = ['--cgroups', 'off' if mode.startswith('off') else 'auto']
res = {b: [] for b in bins}
for r in range(rounds):
    for b in (bins if r % 2 == 0 else bins[::-1]):
        res[b].append(run(b, args, n, body))
for b in bins:
    cpus = sorted(x[0] for x in res[b]); rts = sorted(x[1] for x in res[b])
    print(f'{mode:8} {os.path.basename(b):10} cpu/cmd us: {" ".join(f"{x:.0f}" for x in cpus)}  rt us: {" ".join(f"{x:.0f}" for x in rts)}')
