package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The two namespaces of an arm and their addresses. The service VIP is
// routed out of the client namespace; only Trellis's capture rules give it
// a meaning.
const (
	clientNS = "tbench-c"
	serverNS = "tbench-s"
	clientIP = "10.77.0.1"
	serverIP = "10.77.0.2"
	vip      = "10.78.0.10"
)

// topo is one arm's namespaces, temporary directory and processes.
type topo struct {
	dir     string
	workers int
	procs   []*proc
}

// proc is a process started in a namespace.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
}

// newTopo makes a fresh namespace pair (removing any a killed run left).
func newTopo(workers int) (*topo, error) {
	removeNamespaces()
	dir, err := os.MkdirTemp("", "proxybench-")
	if err != nil {
		return nil, err
	}
	t := &topo{dir: dir, workers: workers}
	steps := [][]string{
		{"netns", "add", clientNS},
		{"netns", "add", serverNS},
		{"link", "add", "tbc0", "netns", clientNS, "type", "veth", "peer", "name", "tbs0", "netns", serverNS},
		{"-n", clientNS, "addr", "add", clientIP + "/24", "dev", "tbc0"},
		{"-n", serverNS, "addr", "add", serverIP + "/24", "dev", "tbs0"},
		{"-n", clientNS, "link", "set", "lo", "up"},
		{"-n", serverNS, "link", "set", "lo", "up"},
		{"-n", clientNS, "link", "set", "tbc0", "up"},
		{"-n", serverNS, "link", "set", "tbs0", "up"},
		{"-n", clientNS, "route", "add", "default", "dev", "tbc0"},
	}
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			t.close()
			return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	return t, nil
}

// close stops every process and removes the namespaces (and with them the
// veth pair and any capture rules) and the directory.
func (t *topo) close() {
	for _, p := range t.procs {
		p.stop()
	}
	removeNamespaces()
	os.RemoveAll(t.dir)
}

func removeNamespaces() {
	for _, ns := range []string{clientNS, serverNS} {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
}

// cpus returns the CPU list for proxies or for the load side: split over
// the two CPUs with one worker, shared with two.
func (t *topo) cpus(proxy bool) string {
	switch {
	case t.workers > 1:
		return "0,1"
	case proxy:
		return "1"
	}
	return "0"
}

// start runs argv in ns, pinned to cpus, logging to a file in t.dir.
func (t *topo) start(name, ns, cpus string, env []string, argv ...string) (*proc, error) {
	log, err := os.Create(filepath.Join(t.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "taskset", "-c", cpus}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: log}
	t.procs = append(t.procs, p)
	return p, nil
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	p.log.Close()
}

// logTail is the end of the process's log, for error messages.
func (p *proc) logTail() string {
	data, _ := os.ReadFile(p.log.Name())
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(0, len(lines)-10):], "\n")
}

// run runs argv in ns pinned to cpus and returns its standard output.
func run(ctx context.Context, ns, cpus string, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, "taskset", "-c", cpus}, argv...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// get fetches url from inside ns with the helper.
func get(ctx context.Context, ns, url string) ([]byte, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return run(ctx, ns, "0,1", self, "get", url)
}

// waitReady polls url from ns until it answers 200, for up to 15 s.
func waitReady(ctx context.Context, ns, url string, p *proc) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := get(ctx, ns, url)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			tail := ""
			if p != nil {
				tail = "\n" + p.name + " log:\n" + p.logTail()
			}
			return fmt.Errorf("%s not ready after 15 s: %v%s", url, err, tail)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// usage is a process tree's cumulative CPU, current memory and context
// switches per thread.
type usage struct {
	cpu      time.Duration
	rss      int64            // KiB
	anon     int64            // KiB of rss that is the process's own (RssAnon), not the program's file pages
	switches map[int][2]int64 // thread id: voluntary, involuntary
}

// treeUsage sums CPU and RSS over pid and its descendants (nginx's
// workers, the processes `ip netns exec` and taskset became).
func treeUsage(pid int) usage {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(n); err == nil {
			children[st.ppid] = append(children[st.ppid], n)
		}
	}
	u := usage{switches: map[int][2]int64{}}
	for queue := []int{pid}; len(queue) > 0; queue = queue[1:] {
		p := queue[0]
		if st, err := readStat(p); err == nil {
			u.cpu += st.cpu
			rss, anon := rssKiB(p)
			u.rss += rss
			u.anon += anon
			threadSwitches(p, u.switches)
		}
		queue = append(queue, children[p]...)
	}
	return u
}

type stat struct {
	ppid int
	cpu  time.Duration
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's times on Linux.
const clockTick = 10 * time.Millisecond

func readStat(pid int) (stat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return stat{}, err
	}
	// The command name may hold spaces; fields resume after its ')'.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return stat{}, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ppid, _ := strconv.Atoi(f[1])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return stat{ppid: ppid, cpu: time.Duration(utime+stime) * clockTick}, nil
}

// threadSwitches adds the context switches of each of pid's threads to
// into.
func threadSwitches(pid int, into map[int][2]int64) {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
		if err != nil {
			continue
		}
		var n [2]int64
		for _, line := range strings.Split(string(data), "\n") {
			for i, key := range []string{"voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"} {
				if v, ok := strings.CutPrefix(line, key); ok {
					n[i], _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				}
			}
		}
		into[tid] = n
	}
}

// rssKiB is pid's resident memory (VmRSS) and the part of it that is
// anonymous (RssAnon: heap, stacks), not pages of the program's files,
// which every process running the same binary shares.
func rssKiB(pid int) (rss, anon int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	kib := func(v string) int64 {
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		return n
	}
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			rss = kib(v)
		} else if v, ok := strings.CutPrefix(sc.Text(), "RssAnon:"); ok {
			anon = kib(v)
		}
	}
	return rss, anon
}
