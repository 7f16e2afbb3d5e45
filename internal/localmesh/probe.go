package localmesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"runtime"
	"strconv"
	"time"

	"github.com/vishvananda/netns"
)

// probeLoop runs the container's readiness probe with Kubernetes timing
// (initial delay, period, timeout, success and failure thresholds) until ctx
// is done. A container's readiness starts false on every (re)start.
func (c *container) probeLoop(ctx context.Context) {
	p := c.spec.Readiness
	if p == nil {
		return
	}
	var successes, failures int
	var lastPID int
	tick := time.NewTicker(p.Period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c.mu.Lock()
		pid, since := c.pid, time.Since(c.startedAt)
		c.mu.Unlock()
		if pid == 0 || since < p.InitialDelay {
			continue
		}
		if pid != lastPID { // a new run: start counting afresh
			lastPID, successes, failures = pid, 0, 0
		}
		err := c.probeOnce(ctx)
		if err == nil {
			successes, failures = successes+1, 0
		} else {
			successes, failures = 0, failures+1
		}
		c.mu.Lock()
		before := c.readyLocked()
		switch {
		case c.pid != pid:
			// restarted while probing; the result belongs to the old run
		case err == nil && successes >= p.SuccessThreshold:
			c.probeOK = true
		case err != nil && failures >= p.FailureThreshold:
			c.probeOK = false
		}
		after := c.readyLocked()
		c.mu.Unlock()
		if before != after {
			c.changed()
		}
	}
}

// probeOnce runs one probe attempt with the probe's timeout.
func (c *container) probeOnce(ctx context.Context) error {
	p := c.spec.Readiness
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	host, dial := c.podIP, (&net.Dialer{}).DialContext
	if c.probeInPod {
		// The pod has a sidecar capturing inbound traffic: probe the app
		// on the pod's own loopback, as Istio's rewritten probes reach it,
		// so neither STRICT mTLS nor the sidecar's accept decides.
		host, dial = "127.0.0.1", func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialInNetns(ctx, c.netns, network, addr)
		}
	}
	switch {
	case p.HTTPGet != nil:
		url := "http://" + net.JoinHostPort(host, strconv.Itoa(int(p.HTTPGet.Port))) + p.HTTPGet.Path
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "trellis-probe/1")
		client := &http.Client{
			Transport:     &http.Transport{DisableKeepAlives: true, Proxy: nil, DialContext: dial},
			CheckRedirect: probeClient.CheckRedirect,
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP status %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		conn, err := dial(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(int(p.TCPSocket.Port))))
		if err != nil {
			return err
		}
		return conn.Close()
	default:
		c.mu.Lock()
		s, ok := c.execSandboxLocked()
		c.mu.Unlock()
		if !ok {
			return errors.New("the container is not running")
		}
		args, err := sandboxArgs(c.cfg.Executable, s, p.Exec)
		if err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, c.cfg.Executable, args[1:]...)
		cmd.Env = c.env
		return cmd.Run()
	}
}

// probeClient opens a fresh connection per probe and does not follow
// redirects (a 3xx counts as success), as kubelet's prober does.
var probeClient = &http.Client{
	Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// dialInNetns connects from inside the named network namespace: a thread
// switched into it makes the socket, which stays in that namespace; the
// thread is discarded afterwards.
func dialInNetns(ctx context.Context, netnsName, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with us
		ns, err := netns.GetFromName(netnsName)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			ch <- result{nil, err}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
