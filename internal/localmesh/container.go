package localmesh

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// Container states, as kubectl shows them.
const (
	stateWaiting    = "Waiting"
	stateRunning    = "Running"
	stateTerminated = "Terminated"
)

// container supervises one container process of a pod: it starts the process
// inside the pod, restarts it by the pod's restart policy with exponential
// backoff, and runs its readiness probe. The owning pod waits for run and
// probeLoop to return.
type container struct {
	spec    catalog.Container
	podName string  // "namespace/name", for logs
	netns   string  // "": a host process
	sandbox Sandbox // how a pod's container is confined (View set)
	podIP   string
	env     []string
	logPath string
	// probeInPod makes httpGet and tcpSocket probes reach the app on the
	// pod's loopback (pods with a sidecar).
	probeInPod bool
	policy     catalog.RestartPolicy
	grace      time.Duration
	// backoff is the first restart delay, doubling up to maxBackoff.
	backoff, maxBackoff time.Duration
	cfg                 *Config
	changed             func() // called (without locks held) when readiness changes
	// prestart, when set, runs before each start of the process; an
	// error counts as a failed start.
	prestart func(context.Context) error

	mu        sync.Mutex
	state     string // guarded by mu; one of the state constants
	reason    string // guarded by mu; why Waiting or Terminated
	restarts  int    // guarded by mu
	pid       int    // guarded by mu; 0 when not running
	exitCode  int    // guarded by mu; of the last exit
	probeOK   bool   // guarded by mu; readiness probe verdict for this run
	startedAt time.Time
}

// ContainerStatus is a container's observed state.
type ContainerStatus struct {
	Name     string `json:"name"`
	State    string `json:"state"`
	Reason   string `json:"reason,omitempty"`
	Ready    bool   `json:"ready"`
	Restarts int    `json:"restarts"`
	// PID is the container's supervisor (`trellis __nsexec`, which
	// confines it) or a host process; a container's program is the
	// supervisor's only child.
	PID      int      `json:"pid,omitempty"`
	ExitCode int      `json:"exitCode,omitempty"`
	Log      string   `json:"log"`
	Env      []string `json:"env"`
	// Exec is how a command joins the running container (`trellis
	// exec`, exec probes); nil when it is not running or not in a pod.
	Exec *Sandbox `json:"exec,omitempty"`
}

func (c *container) status() ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := ContainerStatus{
		Name: c.spec.Name, State: c.state, Reason: c.reason, Ready: c.readyLocked(),
		Restarts: c.restarts, PID: c.pid, ExitCode: c.exitCode, Log: c.logPath, Env: c.env,
	}
	if s, ok := c.execSandboxLocked(); ok {
		st.Exec = &s
	}
	return st
}

// execSandboxLocked returns the sandbox a command joins the running
// container with: its namespaces, ids and capabilities.
func (c *container) execSandboxLocked() (Sandbox, bool) {
	if c.netns == "" || c.pid == 0 {
		return Sandbox{}, false
	}
	s := c.sandbox
	s.View, s.Join = nil, c.pid
	return s, true
}

func (c *container) ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readyLocked()
}

func (c *container) readyLocked() bool {
	if c.state != stateRunning {
		return false
	}
	return c.spec.Readiness == nil || c.probeOK
}

// run starts the process and keeps it going per the restart policy until ctx
// is done; then it stops the process (SIGTERM, then SIGKILL after the grace
// period) and returns.
func (c *container) run(ctx context.Context) {
	backoff := c.backoff
	for {
		started := time.Now()
		code, err := c.runOnce(ctx)
		if ctx.Err() != nil {
			c.setState(stateTerminated, "Killed", code)
			return
		}
		if err != nil {
			slog.Warn("container failed to start", "pod", c.podName, "container", c.spec.Name, "err", err)
		}
		if !c.shouldRestart(code, err) {
			reason := "Completed"
			if code != 0 || err != nil {
				reason = "Error"
			}
			c.setState(stateTerminated, reason, code)
			return
		}
		if time.Since(started) > 10*c.maxBackoff {
			backoff = c.backoff // it ran well for a long while
		}
		c.setState(stateWaiting, "CrashLoopBackOff", code)
		slog.Info("container exited; restarting", "pod", c.podName, "container", c.spec.Name, "exitCode", code, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			c.setState(stateTerminated, "Killed", code)
			return
		case <-t.C:
		}
		backoff = min(2*backoff, c.maxBackoff)
		c.mu.Lock()
		c.restarts++
		c.mu.Unlock()
	}
}

func (c *container) shouldRestart(code int, err error) bool {
	switch c.policy {
	case catalog.RestartNever:
		return false
	case catalog.RestartOnFailure:
		return code != 0 || err != nil
	}
	return true
}

func (c *container) setState(state, reason string, code int) {
	c.mu.Lock()
	wasReady := c.readyLocked()
	c.state, c.reason, c.exitCode, c.pid, c.probeOK = state, reason, code, 0, false
	c.mu.Unlock()
	if wasReady {
		c.changed()
	}
}

// runOnce runs the process to its end, or until ctx is done. It returns the
// exit code (-1 when killed by a signal or never started).
func (c *container) runOnce(ctx context.Context) (int, error) {
	logf, err := openRotatingLog(c.logPath, cmp.Or(c.cfg.LogMaxBytes, DefaultLogMaxBytes))
	if err != nil {
		return -1, fmt.Errorf("open log: %w", err)
	}
	defer logf.Close()
	if c.prestart != nil {
		if err := c.prestart(ctx); err != nil {
			fmt.Fprintf(logf, "trellis: prepare %s: %v\n", c.spec.Name, err)
			return -1, err
		}
	}
	cmd, err := c.command()
	if err != nil {
		fmt.Fprintf(logf, "trellis: start %q: %v\n", c.spec.Command, err)
		return -1, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := startOnSpawnerThread(cmd); err != nil {
		fmt.Fprintf(logf, "trellis: start %q: %v\n", c.spec.Command, err)
		return -1, err
	}
	c.mu.Lock()
	c.state, c.reason, c.pid, c.probeOK, c.startedAt = stateRunning, "", cmd.Process.Pid, false, time.Now()
	c.mu.Unlock()
	if c.spec.Readiness == nil {
		c.changed()
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err = <-waited:
	case <-ctx.Done():
		err = stopProcess(cmd.Process.Pid, c.grace, waited)
	}
	code := -1
	var ee *exec.ExitError
	if err == nil {
		code = 0
	} else if errors.As(err, &ee) {
		code = ee.ExitCode()
	}
	return code, nil
}

// command is the process to start: a pod's container through
// `trellis __nsexec`, which confines it; a host process (the node agent,
// the control plane) as it is.
func (c *container) command() (*exec.Cmd, error) {
	// Own process group, so stopping reaches the children it spawns;
	// Pdeathsig, so the process dies with the mesh even on SIGKILL.
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if c.netns != "" {
		args, err := sandboxArgs(c.cfg.Executable, c.sandbox, c.spec.Command)
		if err != nil {
			return nil, err
		}
		return &exec.Cmd{Path: c.cfg.Executable, Args: args, Env: c.env, Dir: "/", SysProcAttr: attr}, nil
	}
	path, err := exec.LookPath(c.spec.Command[0])
	if err != nil {
		return nil, err
	}
	dir := c.spec.WorkingDir
	if dir == "" {
		dir = c.cfg.WorkDir
	}
	return &exec.Cmd{Path: path, Args: c.spec.Command, Env: c.env, Dir: dir, SysProcAttr: attr}, nil
}

// stopProcess sends SIGTERM to the process group, then SIGKILL after grace,
// and waits for the process to be reaped.
func stopProcess(pid int, grace time.Duration, waited <-chan error) error {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case err := <-waited:
		_ = syscall.Kill(-pid, syscall.SIGKILL) // children that ignored SIGTERM
		return err
	case <-t.C:
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		return <-waited
	}
}

// The kernel sends a child its Pdeathsig when the *thread* that forked it
// exits, not the process. Go ends a thread whenever a goroutine that
// locked it returns without unlocking, which the namespace switches here
// (probes, pod networks) do on purpose; a container started from such a
// thread earlier would be SIGKILLed at that moment, with no trace in its
// log. So every container starts from one locked thread that lives as
// long as the runtime (golang/go#27505).
var (
	spawnOnce sync.Once
	spawnCh   chan spawnJob
)

type spawnJob struct {
	cmd  *exec.Cmd
	done chan error
}

func startOnSpawnerThread(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnCh = make(chan spawnJob)
		go func() {
			runtime.LockOSThread() // never unlocked, and this goroutine never returns
			for j := range spawnCh {
				j.done <- j.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnCh <- spawnJob{cmd: cmd, done: done}
	return <-done
}
